"""Build the TF1 recurrent corpus (run as a script in a subprocess: TF1 cells need TF_USE_LEGACY_KERAS=1).

``python -m tests.converters.tf1_corpus_models OUT [NAME...]`` writes, per model, its source (checkpoint +
.meta, SavedModel or frozen GraphDef) under OUT/NAME, its variables (``variables.npz``), and TF's outputs
on several batches (``cases.npz``: batch sizes and sequence lengths vary) so the test compares without
re-running TF.  One spec per model; every cell kind, rnn kind, time layout, state wiring, control-flow
version and source kind of the README table is in at least one.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

STEPS, FEATURES = 6, 3


@dataclass(frozen=True)
class Spec:
    cells: tuple[str, ...]  # one per stacked layer: "basic:U", "lstm:U[:peep][:fb=F][:clip=C][:proj=P]", "gru:U", "rnn:U"
    source: str = "checkpoint"  # checkpoint | saved_model | frozen
    control_flow: int = 1  # 1 or 2
    bidirectional: bool = False
    time_major: bool = False
    lengths: bool = True  # a sequence_length placeholder
    initial: bool = False  # initial states as placeholders
    final: bool = True  # final states as outputs
    dynamic_time: bool = False  # the time dimension of x is None
    extra: dict[str, Any] = field(default_factory=dict)


CORPUS: dict[str, Spec] = {
    "basic_lstm_v1_ckpt": Spec(("basic:5",)),
    "peephole_lstm_fb1_v1_ckpt": Spec(("lstm:4:peep:fb=1.0",), extra={"readout": 2}),  # + a dense layer per step
    "basic_lstm_v2_frozen": Spec(("basic:4",), source="frozen", control_flow=2),
    "lstm_fb0_initial_tm_v2_ckpt": Spec(("lstm:4:fb=0.0",), control_flow=2, time_major=True, initial=True),
    "gru_initial_v1_saved": Spec(("gru:4",), source="saved_model", initial=True, dynamic_time=True),
    "basic_rnn_tm_v2_saved": Spec(("rnn:3",), source="saved_model", control_flow=2, time_major=True),
    "multi_lstm_v1_frozen": Spec(("basic:4", "basic:3"), source="frozen", initial=True),
    "multi_mixed_v2_ckpt": Spec(("lstm:4:peep:fb=0.3", "gru:3", "rnn:2"), control_flow=2),
    "bidi_lstm_v1_ckpt": Spec(("lstm:3:peep",), bidirectional=True),
    "bidi_gru_tm_v2_frozen": Spec(("gru:3",), source="frozen", control_flow=2, bidirectional=True, time_major=True,
                                  initial=True),
    # A tf.function calling dynamic_rnn, frozen by convert_variables_to_constants_v2 (its While comes out
    # lowered to v1 frames, its variables named after the loop inputs); built eagerly in its own process.
    "tf2_function_frozen": Spec(("lstm:4:peep:fb=0.5", "gru:3"), source="function"),
    "bidi_layers_v1_ckpt": Spec(("lstm:3:peep", "gru:2"), bidirectional=True, extra={"layers": 2}),
    "bidi_multi_v2_saved": Spec(("basic:3", "gru:2"), source="saved_model", control_flow=2, bidirectional=True,
                                dynamic_time=True),
    "gru_nolengths_v1_frozen": Spec(("gru:4",), source="frozen", lengths=False, final=False),
    "bidi_rnn_nolengths_v2_ckpt": Spec(("rnn:3",), control_flow=2, bidirectional=True, lengths=False),
    # Cell activations other than tanh become the fused node's activations attribute.
    "activations_v1_frozen": Spec(("basic:4:act=softsign", "rnn:3:act=relu", "gru:2:act=elu"), source="frozen"),
    # A training graph (Adam, gradients through the loop) saved mid-training, outputs guessed by the converter.
    "trained_lstm_v2_ckpt": Spec(("lstm:4:peep",), control_flow=2, final=False, extra={"train": True}),
    "trained_gru_v1_ckpt": Spec(("gru:3",), final=False, extra={"train": True}),
    # Encoder-decoder: the encoder's final LSTM state is the decoder's initial state; two inputs.
    "seq2seq_v1_frozen": Spec(("lstm:4",), source="frozen", extra={"decoder": "basic:4"}),
    "seq2seq_v2_saved": Spec(("lstm:3:peep:fb=0.0",), source="saved_model", control_flow=2, extra={"decoder": "lstm:3"}),
}
# What ONNX cannot express: refused by name (the converter's message is checked by the test).
REFUSED: dict[str, Spec] = {
    "lstm_cell_clip_v1_ckpt": Spec(("lstm:4:clip=1.5",)),
    "lstm_num_proj_v2_ckpt": Spec(("lstm:4:proj=2",), control_flow=2),
    # static_rnn: the cell is repeated in the graph, found by what it computes (its name says nothing).
    "static_gru_v2_frozen": Spec(("gru:3",), source="frozen", control_flow=2, lengths=False, extra={"static": True}),
}


def options(text: str) -> dict[str, str]:
    """``lstm:4:peep:fb=0.3`` -> {"peep": "1", "fb": "0.3"}."""
    found = {}
    for option in text.split(":")[2:]:
        key, _, value = option.partition("=")
        found[key] = value or "1"
    return found


def _cell(text: str, name: str) -> Any:
    import tensorflow as tf

    rnn = tf.compat.v1.nn.rnn_cell
    kind, units = text.split(":")[:2]
    opts = options(text)
    activation = {"softsign": tf.nn.softsign, "relu": tf.nn.relu, "elu": tf.nn.elu}.get(opts.get("act", ""))
    if kind == "basic":
        return rnn.BasicLSTMCell(int(units), activation=activation, name=name)
    if kind == "lstm":
        return rnn.LSTMCell(int(units), use_peepholes="peep" in opts, forget_bias=float(opts.get("fb", 1.0)),
                            cell_clip=float(opts["clip"]) if "clip" in opts else None,
                            num_proj=int(opts["proj"]) if "proj" in opts else None, name=name)
    if kind == "gru":
        return rnn.GRUCell(int(units), activation=activation, name=name)
    return rnn.BasicRNNCell(int(units), activation=activation, name=name)


def _stack(spec: Spec, prefix: str) -> Any:
    import tensorflow as tf

    cells = [_cell(text, f"{prefix}cell{k}_{text.split(':')[0]}") for k, text in enumerate(spec.cells)]
    return cells[0] if len(cells) == 1 else tf.compat.v1.nn.rnn_cell.MultiRNNCell(cells)


def _state_placeholders(cell: Any, batch_axis_name: str) -> Any:
    import tensorflow as tf

    flat = tf.nest.flatten(cell.state_size)
    holders = [tf.compat.v1.placeholder(tf.float32, [None, size], name=f"{batch_axis_name}_{k}")
               for k, size in enumerate(flat)]
    return tf.nest.pack_sequence_as(cell.state_size, holders)


def _graph(spec: Spec) -> tuple[Any, dict[str, Any], list[str]]:
    """The model graph; returns it with its placeholders by role and the output tensor names."""
    import tensorflow as tf

    time = None if spec.dynamic_time else STEPS
    shape = [time, None, FEATURES] if spec.time_major else [None, time, FEATURES]
    x = tf.compat.v1.placeholder(tf.float32, shape, name="x")
    holders: dict[str, Any] = {"x": x}
    lengths = None
    if spec.lengths:
        lengths = holders["lengths"] = tf.compat.v1.placeholder(tf.int32, [None], name="lengths")
    outputs = []
    if spec.extra.get("layers"):  # bidirectional layers stacked: each reads both directions of the one below
        layer_input, states = x, []
        for k, text in enumerate(spec.cells):
            kind = text.split(":")[0]
            with tf.compat.v1.variable_scope(f"layer{k}"):
                (out_fw, out_bw), found = tf.compat.v1.nn.bidirectional_dynamic_rnn(
                    _cell(text, f"fw_cell{k}_{kind}"), _cell(text, f"bw_cell{k}_{kind}"), layer_input,
                    sequence_length=lengths, time_major=spec.time_major, dtype=tf.float32)
            layer_input = tf.concat([out_fw, out_bw], -1)
            states.append(found)
        outputs.append(tf.identity(layer_input, name="y"))
    elif spec.bidirectional:
        fw, bw = _stack(spec, "fw_"), _stack(spec, "bw_")
        kwargs: dict[str, Any] = {"dtype": tf.float32}
        if spec.initial:
            kwargs["initial_state_fw"] = _state_placeholders(fw, "state_fw")
            kwargs["initial_state_bw"] = _state_placeholders(bw, "state_bw")
        (out_fw, out_bw), states = tf.compat.v1.nn.bidirectional_dynamic_rnn(
            fw, bw, x, sequence_length=lengths, time_major=spec.time_major, **kwargs)
        outputs.append(tf.identity(tf.concat([out_fw, out_bw], -1), name="y"))
    elif spec.extra.get("static"):
        steps, states = tf.compat.v1.nn.static_rnn(_stack(spec, "encoder_"), tf.unstack(x, axis=1), dtype=tf.float32)
        outputs.append(tf.identity(tf.stack(steps, axis=1), name="y"))
    else:
        cell = _stack(spec, "")
        kwargs = {"dtype": tf.float32}
        if spec.initial:
            kwargs["initial_state"] = _state_placeholders(cell, "state")
        y, states = tf.compat.v1.nn.dynamic_rnn(cell, x, sequence_length=lengths, time_major=spec.time_major, **kwargs)
        if "decoder" in spec.extra:
            x2 = holders["x2"] = tf.compat.v1.placeholder(tf.float32, [None, None, FEATURES - 1], name="x2")
            with tf.compat.v1.variable_scope("decoder"):
                y, states = tf.compat.v1.nn.dynamic_rnn(_cell(spec.extra["decoder"], "decoder_cell0_"
                                                              + spec.extra["decoder"].split(":")[0]),
                                                        x2, initial_state=states, dtype=tf.float32)
        if "readout" in spec.extra:
            with tf.compat.v1.variable_scope("readout"):
                kernel = tf.compat.v1.get_variable("kernel", [y.shape[-1], spec.extra["readout"]])
                y = tf.tensordot(y, kernel, axes=1) + tf.compat.v1.get_variable("bias", [spec.extra["readout"]])
        outputs.append(tf.identity(y, name="y"))
    if spec.extra.get("train"):
        target = tf.compat.v1.placeholder(tf.float32, outputs[0].shape, name="target")
        loss = tf.reduce_mean(tf.square(outputs[0] - target))
        holders["train"] = tf.compat.v1.train.AdamOptimizer(0.01).minimize(loss)
    if spec.final:
        for k, state in enumerate(tf.nest.flatten(states)):
            outputs.append(tf.identity(state, name=f"final_{k}"))
    return x.graph, holders, [out.name for out in outputs]


def _feeds(spec: Spec, graph: Any, seed: int, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    steps = STEPS if not spec.dynamic_time else 4 + seed % 3
    x = rng.standard_normal((steps, batch, FEATURES) if spec.time_major else (batch, steps, FEATURES))
    feeds: dict[str, np.ndarray] = {"x:0": x.astype(np.float32)}
    if spec.lengths:
        lengths = rng.integers(1, steps + 1, size=batch).astype(np.int32)
        lengths[0] = steps  # one full-length row, the others shorter
        if seed == 3:
            lengths[-1] = 0  # an empty sequence: zero outputs, final state = initial state
        feeds["lengths:0"] = lengths
    if "decoder" in spec.extra:
        feeds["x2:0"] = rng.standard_normal((batch, 1 + seed, FEATURES - 1)).astype(np.float32)
    for op in graph.get_operations() if graph is not None else []:
        if op.type == "Placeholder" and op.name.startswith("state"):
            size = op.outputs[0].shape[1]
            feeds[f"{op.name}:0"] = rng.standard_normal((batch, size)).astype(np.float32)
    return feeds


CASES = ((0, 1), (1, 3), (2, 5), (3, 2))  # (seed, batch size)


def build_one(name: str, spec: Spec, out: Path) -> None:
    import tensorflow as tf

    if spec.control_flow == 2:
        tf.compat.v1.enable_control_flow_v2()
    else:
        tf.compat.v1.disable_control_flow_v2()
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.set_random_seed(len(name))
        _, holders, output_names = _graph(spec)
        rng = np.random.default_rng(len(name))
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            for variable in tf.compat.v1.global_variables():  # random biases make bias checks meaningful
                if variable.name.endswith(("bias:0", "_diag:0")):
                    variable.load(rng.normal(size=variable.shape).astype(np.float32), session)
            train = holders.pop("train", None)
            for seed in range(2 if train is not None else 0):
                feeds = _feeds(spec, graph, seed, 4)
                feeds["target:0"] = 0.5 * session.run(output_names[0], feeds)
                session.run(train, feeds)
            values = {v.name[:-2]: session.run(v) for v in tf.compat.v1.global_variables()}
            np.savez(target / "variables.npz", **values)
            cases: dict[str, Any] = {}
            for seed, batch in CASES:
                feeds = _feeds(spec, graph, seed, batch)
                results = session.run(output_names, feeds)
                cases.update({f"{seed}/in/{key[:-2]}": value for key, value in feeds.items()})
                cases.update({f"{seed}/out/{key[:-2]}": value for key, value in zip(output_names, results, strict=True)})
            np.savez(target / "cases.npz", **cases)
            plain_outputs = [name_[:-2] for name_ in output_names]
            if spec.source == "checkpoint":
                tf.compat.v1.train.Saver().save(session, str(target / "model"))
                source = target / "model.meta"
            elif spec.source == "frozen":
                frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                    session, graph.as_graph_def(), plain_outputs)
                source = target / "model.pb"
                source.write_bytes(frozen.SerializeToString())
            else:
                source = target / "saved"
                builder = tf.compat.v1.saved_model.Builder(str(source))
                signature = tf.compat.v1.saved_model.predict_signature_def(
                    dict(holders) | {
                        op.name: op.outputs[0] for op in graph.get_operations()
                        if op.type == "Placeholder" and op.name.startswith("state")},
                    {key: graph.get_tensor_by_name(f"{key}:0") for key in plain_outputs})
                builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map={
                    "serving_default": signature})
                builder.save()
    (target / "meta.json").write_text(json.dumps({"source": str(source.relative_to(out)), "outputs": plain_outputs}))


def build_function(name: str, spec: Spec, out: Path) -> None:
    """Eager TF2: a tf.function over dynamic_rnn, frozen to a GraphDef; variables.npz holds its constants."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    tf.random.set_seed(len(name))
    cell = _stack(spec, "")
    signature = [tf.TensorSpec([None, STEPS, FEATURES], tf.float32, name="x"),
                 tf.TensorSpec([None], tf.int32, name="lengths")]
    function = tf.function(lambda x, lengths: tf.compat.v1.nn.dynamic_rnn(
        cell, x, sequence_length=lengths, dtype=tf.float32), input_signature=signature)
    function(tf.zeros([1, STEPS, FEATURES]), tf.constant([STEPS]))  # creates the variables
    rng = np.random.default_rng(len(name))
    for variable in cell.variables:
        if variable.name.endswith(("bias:0", "_diag:0")):
            variable.assign(rng.normal(size=variable.shape).astype(np.float32))
    frozen = convert_variables_to_constants_v2(function.get_concrete_function()).graph.as_graph_def()
    (target / "model.pb").write_bytes(frozen.SerializeToString())
    np.savez(target / "variables.npz", **{node.name: tf.make_ndarray(node.attr["value"].tensor) for node in frozen.node
                                          if node.op == "Const" and node.attr["dtype"].type == tf.float32.as_datatype_enum})
    outputs = [node.name for node in frozen.node if node.op == "Identity" and node.name.startswith("Identity")]
    cases: dict[str, Any] = {}
    for seed, batch in CASES:
        feeds = {key[:-2]: value for key, value in _feeds(spec, None, seed, batch).items()}
        values = tf.nest.flatten(function(feeds["x"], feeds["lengths"]))
        cases.update({f"{seed}/in/{key}": value for key, value in feeds.items()})
        cases.update({f"{seed}/out/{key}": np.asarray(value) for key, value in zip(sorted(outputs), values, strict=True)})
    np.savez(target / "cases.npz", **cases)
    (target / "meta.json").write_text(json.dumps({"source": f"{name}/model.pb", "outputs": sorted(outputs)}))


def main(out: Path, names: list[str]) -> None:
    import tensorflow as tf

    every = {**CORPUS, **REFUSED}
    chosen = names or list(every)
    if chosen == ["--eager"]:  # the tf.function models, in a process that keeps eager execution
        for name, spec in every.items():
            if spec.source == "function":
                build_function(name, spec, out)
        return
    tf.compat.v1.disable_eager_execution()
    for name in chosen:
        if every[name].source != "function":
            build_one(name, every[name], out)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
