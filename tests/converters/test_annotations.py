"""Per-gate annotations: derived from the node, stored on node and model, validated, and the gate split."""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from converters import gates
from converters.annotations import (
    ANNOTATION_KEY,
    AnnotationError,
    annotate_recurrent_node,
    annotation_of,
    node_annotation,
    read_annotations,
    refresh_annotations,
    validate,
    validate_model,
)
from converters.parity import run_onnx
from converters.weights import NotConstantError, resolve
from tests.converters.helpers import recurrent_model

TORCH_LSTM: dict[str, Any] = {"source_gate_order": ("i", "f", "g", "o"), "gate_map": {"i": "i", "f": "f", "g": "c", "o": "o"}}


def _annotated_lstm(**options: Any) -> tuple[onnx.ModelProto, dict]:
    model = recurrent_model("LSTM", direction="bidirectional", peepholes=True, **options)
    entry = annotate_recurrent_node(
        model, model.graph.node[0], framework="pytorch", layer="encoder", variables={"forward.W": "w_ih"},
        folded={"forget_bias": 1.0}, notes="test", **TORCH_LSTM,
    )
    return model, entry


def test_entry_describes_node_and_rows() -> None:
    _, entry = _annotated_lstm()
    assert entry["op"] == "LSTM" and entry["directions"] == ["forward", "reverse"]
    assert (entry["hidden_size"], entry["input_size"], entry["layout"]) == (4, 3, 0)
    assert entry["onnx_gate_order"] == ["i", "o", "f", "c"]
    assert entry["activations"] == ["Sigmoid", "Tanh", "Tanh"] * 2
    forget = entry["gate_rows"]["reverse"]["f"]
    assert forget == {"W": [8, 12], "R": [8, 12], "Wb": [8, 12], "Rb": [24, 28], "source_gate": "f"}
    assert entry["gate_rows"]["forward"]["c"]["source_gate"] == "g"
    assert entry["peephole_rows"]["forward"] == {"i": [0, 4], "o": [4, 8], "f": [8, 12]}
    assert entry["source"]["folded"] == {"forget_bias": 1.0}


def test_entry_is_stored_on_node_and_model_and_survives_serialization() -> None:
    model, entry = _annotated_lstm()
    loaded = onnx.load_from_string(model.SerializeToString())
    assert read_annotations(loaded) == [json.loads(json.dumps(entry))]
    assert node_annotation(loaded.graph.node[0]) == read_annotations(loaded)[0]
    annotate_recurrent_node(loaded, loaded.graph.node[0], framework="keras", layer="lstm", variables={},
                            source_gate_order=("i", "f", "c", "o"), gate_map={"i": "i", "f": "f", "c": "c", "o": "o"})
    assert [item["source"]["framework"] for item in read_annotations(loaded)] == ["keras"]  # replaced, not duplicated


@pytest.mark.parametrize(
    ("path", "value", "fragment"),
    [
        (("gate_map",), {"i": "i", "f": "f", "g": "f", "o": "o"}, "exactly once"),
        (("onnx_gate_order",), ["i", "f", "o", "c"], "onnx_gate_order"),
        (("gate_rows", "forward", "o", "R"), [0, 4], "forward/o.R"),
        (("gate_rows", "reverse", "i", "source_gate"), "g", "source_gate 'g'"),
        (("hidden_size",), "4", "hidden_size"),
        (("source", "framework"), None, "framework"),
    ],
)
def test_validate_names_what_is_wrong(path: tuple[str, ...], value: object, fragment: str) -> None:
    _, entry = _annotated_lstm()
    broken = copy.deepcopy(entry)
    target = broken["source"] if path[0] == "gate_map" else broken
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(AnnotationError, match=fragment):
        validate(broken)


def test_annotating_a_non_recurrent_node_is_refused() -> None:
    model = recurrent_model("GRU")
    relu = onnx.helper.make_node("Relu", ["y_h"], ["r"], name="relu")
    model.graph.node.append(relu)
    with pytest.raises(AnnotationError, match="Relu, not a recurrent op"):
        annotate_recurrent_node(model, model.graph.node[1], framework="x", layer="x", variables={},
                                source_gate_order=(), gate_map={})


def test_split_matches_fused_rows_and_source_gates() -> None:
    model, _ = _annotated_lstm()
    weight = numpy_helper.to_array(model.graph.initializer[0])
    bias = numpy_helper.to_array(model.graph.initializer[2])
    peep = numpy_helper.to_array(model.graph.initializer[3])
    split = gates.split_gates(model)
    (node,) = split["nodes"]
    reverse = node["directions"][1]
    assert reverse["direction"] == "reverse"
    np.testing.assert_array_equal(reverse["gates"]["f"]["W"], weight[1, 8:12].astype(np.float64))
    np.testing.assert_array_equal(reverse["gates"]["c"]["Rb"], bias[1, 28:32].astype(np.float64))
    np.testing.assert_array_equal(reverse["peepholes"]["o"], peep[1, 4:8].astype(np.float64))
    assert reverse["gates"]["c"]["source_gate"] == "g" and node["source"]["layer"] == "encoder"
    json.loads(gates.to_json(model))  # plain JSON


def test_npz_and_text_writers() -> None:
    model, _ = _annotated_lstm()
    archive = np.load(io.BytesIO(gates.write(model, fmt="npz")))
    assert archive["lstm0/forward/i/W"].shape == (4, 3)
    assert archive["lstm0/reverse/peepholes/f"].shape == (4,)
    text = gates.write(model, fmt="text").decode()
    assert ("[reverse] gate c (source gate g): W[1, 12:16] R[1, 12:16] Wb=B[1, 12:16] Rb=B[1, 28:32] "
            "<- 3rd source gate of i, f, g, o") in text
    assert "folded {'forget_bias': 1.0}" in text
    with pytest.raises(ValueError, match="unknown gates format 'csv'"):
        gates.write(model, fmt="csv")


def test_weights_behind_slice_concat_chains_are_resolved() -> None:
    """The torch dynamo exporter feeds LSTM from Slice/Concat of parameters; W must still resolve."""
    model = recurrent_model("GRU", direction="bidirectional")
    weight = model.graph.initializer[0]
    original = numpy_helper.to_array(weight)
    weight.name = "packed"
    ints = [numpy_helper.from_array(np.array([v], np.int64), n) for v, n in ((0, "s0"), (1, "s1"), (2, "s2"), (0, "ax"))]
    model.graph.initializer.extend(ints)
    model.graph.node.insert(0, onnx.helper.make_node("Slice", ["packed", "s1", "s2", "ax"], ["back"]))
    model.graph.node.insert(0, onnx.helper.make_node("Slice", ["packed", "s0", "s1", "ax"], ["front"]))
    model.graph.node.insert(2, onnx.helper.make_node("Concat", ["front", "back"], ["gru0.W"], axis=0))
    np.testing.assert_array_equal(resolve(model, "gru0.W"), original)
    feeds = {"x": np.ones((3, 1, 3), np.float32)}
    run_onnx(model, feeds)  # still a valid model
    split = gates.split_gates(model)
    np.testing.assert_array_equal(split["nodes"][0]["directions"][1]["gates"]["h"]["W"], original[1, 8:12].astype(np.float64))
    with pytest.raises(NotConstantError, match="graph input 'x'"):
        resolve(model, "y")


def test_model_annotation_key_is_documented_name() -> None:
    model, _ = _annotated_lstm()
    assert [prop.key for prop in model.metadata_props] == [ANNOTATION_KEY] == ["modelbridge.recurrent"]


def test_annotating_raises_ir_version_to_carry_node_metadata() -> None:
    model = recurrent_model("RNN")
    model.ir_version = 8
    annotate_recurrent_node(model, model.graph.node[0], framework="pytorch", layer="rnn", variables={},
                            source_gate_order=("h",), gate_map={"h": "i"})
    assert model.ir_version == 10
    onnx.checker.check_model(model)
    assert node_annotation(onnx.load_from_string(model.SerializeToString()).graph.node[0]) is not None


def _masked_gru() -> onnx.ModelProto:
    """A Keras-style masked GRU: tokens -> embedding -> X; lengths = sum(tokens != 0); zero initial state
    sized from the batch; Y_h -> Squeeze -> graph output, Y -> Transpose -> Squeeze -> graph output."""
    h = onnx.helper
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), n) for n, s in (
        ("emb", (10, 3)), ("W", (1, 12, 3)), ("R", (1, 12, 4)), ("B", (1, 24)))]
    inits += [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (
        ("zero", 0), ("axis1", [1]), ("axis0", [0]), ("one", [1]), ("hidden", [4]), ("start", [0]), ("stop", [1]))]
    nodes = [
        h.make_node("Gather", ["emb", "tokens"], ["embedded"]),
        h.make_node("Transpose", ["embedded"], ["x"], perm=[1, 0, 2]),
        h.make_node("Not", ["is_pad"], ["mask"]),
        h.make_node("Equal", ["tokens", "zero"], ["is_pad"]),
        h.make_node("Cast", ["mask"], ["mask_int"], to=onnx.TensorProto.INT32),
        h.make_node("ReduceSum", ["mask_int", "axis1"], ["lens"], keepdims=0),
        h.make_node("Shape", ["tokens"], ["tokens_shape"]),
        h.make_node("Slice", ["tokens_shape", "start", "stop"], ["batch"]),
        h.make_node("Concat", ["one", "batch", "hidden"], ["state_shape"], axis=0),
        h.make_node("ConstantOfShape", ["state_shape"], ["h0"]),
        h.make_node("GRU", ["x", "W", "R", "B", "lens", "h0"], ["y", "y_h"], name="masked_gru", hidden_size=4,
                    linear_before_reset=1),
        h.make_node("Squeeze", ["y_h", "axis0"], ["last_state"]),
        h.make_node("Transpose", ["y"], ["y_bt"], perm=[2, 0, 1, 3]),
        h.make_node("Squeeze", ["y_bt", "axis1"], ["sequence"]),
        h.make_node("Relu", ["last_state"], ["relu_state"], name="head"),
    ]
    nodes = nodes[:2] + [nodes[3], nodes[2]] + nodes[4:]
    graph = h.make_graph(nodes, "masked", [h.make_tensor_value_info("tokens", onnx.TensorProto.INT64, ["b", "t"])],
                         [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None) for n in ("sequence", "last_state",
                                                                                              "relu_state")], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 10
    return model


GRU_SOURCE: dict[str, Any] = {"framework": "keras", "layer": "gru", "variables": {}, "source_gate_order": ("z", "r", "h"),
              "gate_map": {"z": "z", "r": "r", "h": "h"}}


def test_wiring_traces_mask_lengths_zero_state_and_outputs_from_the_graph() -> None:
    model = _masked_gru()
    node = model.graph.node[10]
    entry = annotate_recurrent_node(model, node, **GRU_SOURCE,
                                    source_wiring={"sequence_lens": "mask of input 'tokens' (Embedding mask_zero)"})
    assert entry["schema_version"] == 2
    wiring = entry["wiring"]
    assert wiring["X"]["kind"] == "computed" and wiring["X"]["graph_inputs"] == ["tokens"]
    lens = wiring["sequence_lens"]
    assert (lens["tensor"], lens["kind"], lens["graph_inputs"]) == ("lens", "computed", ["tokens"])
    assert lens["via"] == ["Equal", "Not", "Cast", "ReduceSum"]
    state = wiring["initial_h"]
    assert (state["kind"], state["graph_inputs"], state["shape_from"]) == ("zeros", [], ["tokens"])
    assert wiring["Y"] == {"tensor": "y", "graph_outputs": ["sequence"], "via": ["Transpose", "Squeeze"],
                           "consumers": [], "used": True}
    assert wiring["Y_h"]["graph_outputs"] == ["last_state"] and wiring["Y_h"]["consumers"] == ["head"]
    assert entry["axes"]["X"] == ["seq", "batch", "input_size"]
    assert entry["source"]["wiring"]["sequence_lens"].startswith("mask of input")
    text = gates.to_text(model)
    assert "  sequence_lens [batch]: 'lens', computed from model input 'tokens' via Equal, Not, Cast, ReduceSum  " \
           "(converter: mask of input 'tokens' (Embedding mask_zero))" in text
    assert "  initial_h [num_directions, batch, hidden_size]: zeros ('h0', sized from model input 'tokens')" in text
    assert "  Y [seq, num_directions, batch, hidden_size]: 'y' -> graph output 'sequence' via Transpose, Squeeze" in text
    assert json.loads(gates.to_json(model))["nodes"][0]["wiring"]["sequence_lens"]["graph_inputs"] == ["tokens"]
    archive = np.load(io.BytesIO(gates.write(model, fmt="npz")))
    assert json.loads(str(archive["masked_gru/wiring"]))["initial_h"]["kind"] == "zeros"


def test_source_wiring_must_name_wired_slots() -> None:
    model = recurrent_model("GRU")
    with pytest.raises(AnnotationError, match="describes sequence_lens .* but the node has no sequence_lens"):
        annotate_recurrent_node(model, model.graph.node[0], **GRU_SOURCE,
                                source_wiring={"sequence_lens": "mask"})
    with pytest.raises(AnnotationError, match="names slot 'initial_c'"):
        annotate_recurrent_node(model, model.graph.node[0], **GRU_SOURCE,
                                source_wiring={"initial_c": "encoder c"})


def test_stale_wiring_is_named_and_refreshed() -> None:
    model = recurrent_model("LSTM", with_initial_state=True)
    node = model.graph.node[0]
    annotate_recurrent_node(model, node, framework="pytorch", layer="lstm", variables={}, **TORCH_LSTM)
    assert validate_model(model)[0]["wiring"]["initial_c"]["kind"] == "graph_input"
    node.input[6] = "c_zero"  # a converter rewires after annotating
    model.graph.initializer.append(numpy_helper.from_array(np.zeros((1, 1, 4), np.float32), "c_zero"))
    with pytest.raises(AnnotationError, match="field 'wiring' is stale"):
        validate_model(model)
    (entry,) = refresh_annotations(model)
    assert entry["wiring"]["initial_c"]["kind"] == "zeros" and entry["source"]["layer"] == "lstm"
    assert validate_model(model) == [entry] == read_annotations(model)


def test_schema_1_entries_are_still_read() -> None:
    model, entry = _annotated_lstm()
    old = {key: value for key, value in entry.items() if key not in ("wiring", "axes")}
    old["schema_version"] = 1
    del old["source"]["wiring"]
    validate(old, model=model, node=model.graph.node[0])
    for prop in [*model.metadata_props, *model.graph.node[0].metadata_props]:
        prop.value = json.dumps(old if prop.key == ANNOTATION_KEY and prop.value.startswith("{") else [old])
    assert validate_model(model) == [old]
    assert gates.split_gates(model)["nodes"][0]["wiring"]["X"]["tensor"] == "x"  # gates derive it anyway
    assert refresh_annotations(model)[0]["schema_version"] == 2
    with pytest.raises(AnnotationError, match="schema_version 7"):
        validate({**old, "schema_version": 7})


def test_readme_gates_sample_is_what_the_command_prints() -> None:
    """README's `gates --format text` sample (the bundled TF BasicLSTMCell example) line for line."""
    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text()
    sample = readme.split("modelbridge gates lstm.onnx --format text\n", 1)[1].split("\n# --format json", 1)[0]
    shown = [line.removeprefix("#   ") for line in sample.splitlines() if line != "#   ..."]
    assert len(shown) > 10
    model = onnx.load(root / "server" / "examples" / "repository" / "tf_basic_lstm" / "1" / "model.onnx")
    printed = gates.to_text(model).splitlines()
    missing = [line for line in shown if line not in printed]
    assert not missing, f"README shows lines `gates --format text` does not print: {missing}"


def test_every_repository_model_validates_against_its_graph() -> None:
    """The committed converted examples (schema 1 entries) still validate against their graphs; gates add
    the wiring (lstm_tiny and lstm_stream are hand-built, unannotated: gates still split them)."""
    root = Path(__file__).resolve().parents[2] / "server" / "examples" / "repository"
    checked = 0
    for path in sorted(root.glob("*/1/model.onnx")):
        model = onnx.load(path)
        if not gates.recurrent_nodes(model):
            continue
        for node in gates.recurrent_nodes(model):
            entry = annotation_of(model, node)
            if entry is not None:
                validate(entry, model=model, node=node)
                checked += 1
        for split in gates.split_gates(model)["nodes"]:
            assert split["wiring"]["X"]["graph_inputs"], f"{path}: X of {split['node']} traced to no model input"
    assert checked >= 5


def test_wiring_of_an_encoder_state_feeding_a_decoder() -> None:
    """seq2seq: the decoder's initial_h is the encoder's Y_h; each side names the other and the model inputs."""
    h = onnx.helper
    rng = np.random.default_rng(1)
    inits = []
    for name in ("enc", "dec"):
        inits += [numpy_helper.from_array(rng.normal(size=s).astype(np.float32), f"{name}.{k}")
                  for k, s in (("W", (1, 12, 3)), ("R", (1, 12, 4)), ("B", (1, 24)))]
    nodes = [
        h.make_node("GRU", ["source", "enc.W", "enc.R", "enc.B", "", ""], ["", "enc_h"], name="enc", hidden_size=4),
        h.make_node("Identity", ["enc_h"], ["enc_state"]),
        h.make_node("GRU", ["target", "dec.W", "dec.R", "dec.B", "", "enc_state"], ["dec_y"], name="dec", hidden_size=4),
    ]
    graph = h.make_graph(nodes, "seq2seq", [h.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["t", "b", 3])
                                             for n in ("source", "target")],
                         [h.make_tensor_value_info("dec_y", onnx.TensorProto.FLOAT, None),
                          h.make_tensor_value_info("enc_state", onnx.TensorProto.FLOAT, None)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    for node in model.graph.node[::2]:
        annotate_recurrent_node(model, node, **GRU_SOURCE,
                                source_wiring={"initial_h": "encoder state"} if node.name == "dec" else None)
    encoder, decoder = validate_model(model)
    assert encoder["wiring"]["Y"] is None and encoder["wiring"]["initial_h"] is None
    assert encoder["wiring"]["Y_h"] == {"tensor": "enc_h", "graph_outputs": ["enc_state"], "via": ["Identity"],
                                        "consumers": ["dec"], "used": True}
    state = decoder["wiring"]["initial_h"]
    assert (state["kind"], state["graph_inputs"], state["recurrent_nodes"]) == ("computed", ["source"], ["enc"])
    assert decoder["wiring"]["X"]["kind"] == "graph_input" and decoder["wiring"]["Y_h"] is None
    assert "  initial_h [num_directions, batch, hidden_size]: 'enc_state', computed from model input 'source' via GRU, " \
           "Identity (output of recurrent node 'enc')  (converter: encoder state)" in gates.to_text(model)


def test_wiring_of_constant_lengths_and_state() -> None:
    model = recurrent_model("RNN", with_sequence_lens=True, with_initial_state=True)
    del model.graph.input[1:]  # lens and h0 become constants
    model.graph.initializer.extend([numpy_helper.from_array(np.array([3, 1], np.int32), "lens"),
                                    numpy_helper.from_array(np.full((1, 2, 4), 0.5, np.float32), "h0")])
    wiring = annotate_recurrent_node(model, model.graph.node[0], framework="tensorflow", layer="rnn", variables={},
                                     source_gate_order=("h",), gate_map={"h": "i"},
                                     source_wiring={"sequence_lens": "sequence_length=[3, 1]"})["wiring"]
    assert wiring["sequence_lens"] == {"tensor": "lens", "kind": "constant", "shape": [2], "value": [3, 1],
                                       "graph_inputs": [], "shape_from": [], "via": [], "recurrent_nodes": []}
    assert wiring["initial_h"]["kind"] == "constant" and wiring["initial_h"]["value"] == [[[0.5] * 4] * 2]
    assert "  sequence_lens [batch]: constant 'lens' = [3, 1]  (converter: sequence_length=[3, 1])" in gates.to_text(model)
