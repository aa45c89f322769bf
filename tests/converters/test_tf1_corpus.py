"""The TF1 recurrent corpus (tf1_corpus_models.CORPUS): every model fused, proven and annotated.

Each model is built (one subprocess for all: TF1 cells need TF_USE_LEGACY_KERAS=1 before TensorFlow is
imported) with TF's outputs on batches of 1, 3, 5 and 2 sequences of different lengths (one of length 0),
then converted here from its checkpoint, SavedModel or frozen GraphDef.  Each must give: fused ops only (no Loop or
Scan anywhere, subgraphs included), one fused node per cell, every output equal to TensorFlow's at
1e-4 on every batch, and per-gate blocks (converters.gates) equal to the cell's own variables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from converters import UnsupportedSourceError, gates, parity
from converters.keras_layers import UnsupportedLayerError
from converters.specs import InputSpec
from tests.converters.tf1_corpus_models import CASES, CORPUS, FEATURES, REFUSED, options

pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]
RECURRENT = {"LSTM", "GRU", "RNN"}
ONNX_OP = {"basic": "LSTM", "lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tf1_corpus")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    for extra in ([], ["--eager"]):
        done = subprocess.run([sys.executable, "-m", "tests.converters.tf1_corpus_models", str(out), *extra], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=400, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
    return out


def _source(built: Path, name: str) -> Path:
    return built / json.loads((built / name / "meta.json").read_text())["source"]


@pytest.fixture(scope="module")
def converted(built: Path) -> dict[str, Any]:
    from converters import tensorflow as tf_converter

    results: dict[str, Any] = {}
    for name in CORPUS:
        try:
            results[name] = tf_converter.convert(_source(built, name), opset=17)
        except Exception as exc:  # noqa: BLE001 - reported per model by the tests
            results[name] = exc
    return results


def _all_ops(graph: onnx.GraphProto) -> list[str]:
    ops = []
    for node in graph.node:
        ops.append(node.op_type)
        for attr in node.attribute:
            for body in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                ops += _all_ops(body)
    return ops


def _result(converted: dict[str, Any], name: str) -> Any:
    result = converted[name]
    if isinstance(result, Exception):
        message = f"{name} did not convert: {type(result).__name__}: {result}"
        raise AssertionError(message)  # noqa: TRY004 - a failed test, not a type error
    return result


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_fused_only_one_node_per_cell(converted: dict[str, Any], name: str) -> None:
    result, spec = _result(converted, name), CORPUS[name]
    ops = _all_ops(result.model.graph)
    assert not {"Loop", "Scan", "If"} & set(ops)
    # A single bidirectional cell pair is one direction="bidirectional" node; stacked pairs are a node per cell.
    paired = spec.bidirectional and len(spec.cells) > 1 and "layers" not in spec.extra
    cells = list(spec.cells) * (2 if paired else 1) + [spec.extra[key] for key in ("decoder",) if key in spec.extra]
    want = sorted(ONNX_OP[cell.split(":")[0]] for cell in cells)
    assert sorted(op for op in ops if op in RECURRENT) == sorted(want)
    layers = [entry["source"]["layer"] for entry in result.annotations]
    assert len(layers) == len(want) == len(set(layers))
    directions = {entry["direction"] for entry in result.annotations}
    assert directions == ({"bidirectional"} if spec.bidirectional and not paired else {"forward"})


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_parity_on_every_output_and_batch(converted: dict[str, Any], built: Path, name: str) -> None:
    model = _result(converted, name).model
    cases = np.load(built / name / "cases.npz")
    inputs = {value.name for value in model.graph.input}
    outputs = {value.name for value in model.graph.output}
    for seed, batch in CASES:
        feeds = {key.split("/", 2)[2]: cases[key] for key in cases.files if key.startswith(f"{seed}/in/")}
        expected = {key.split("/", 2)[2]: cases[key] for key in cases.files if key.startswith(f"{seed}/out/")}
        assert set(feeds) == inputs and set(expected) == outputs
        assert feeds["x"].shape[1 if CORPUS[name].time_major else 0] == batch
        got = parity.run_onnx(model, feeds)
        for key, want in expected.items():
            np.testing.assert_allclose(got[key], want, atol=1e-4, rtol=0, err_msg=f"{name} {key} batch {batch}")


def _cell_spec(name: str, layer: str) -> str:
    if layer.startswith("decoder/"):
        return str(CORPUS[name].extra["decoder"])
    kinds = [text for k, text in enumerate(CORPUS[name].cells) if f"cell{k}_{text.split(':')[0]}" in layer]
    assert len(kinds) == 1, layer
    return kinds[0]


def _expected_gates(kind: str, variables: dict[str, np.ndarray], names: dict[str, str], hidden: int,
                    forget_bias: float) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """ONNX gate -> (kernel columns [I+H, H], bias) straight from the TF variables (docs: GATES.md)."""
    def cols(matrix: np.ndarray, k: int) -> np.ndarray:
        return matrix[..., k * hidden:(k + 1) * hidden]

    if kind in ("basic", "lstm"):
        kernel, bias = variables[names["kernel"]], variables[names["bias"]]
        blocks = {"i": 0, "c": 1, "f": 2, "o": 3}  # TF: i, j, f, o
        return {g: (cols(kernel, k), cols(bias, k) + (forget_bias if g == "f" else 0.0)) for g, k in blocks.items()}
    if kind == "gru":
        gk, gb = variables[names["gates/kernel"]], variables[names["gates/bias"]]
        return {"r": (cols(gk, 0), cols(gb, 0)), "z": (cols(gk, 1), cols(gb, 1)),
                "h": (variables[names["candidate/kernel"]], variables[names["candidate/bias"]])}
    return {"i": (variables[names["kernel"]], variables[names["bias"]])}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_gates_equal_source_variables(converted: dict[str, Any], built: Path, name: str) -> None:
    result = _result(converted, name)
    variables = dict(np.load(built / name / "variables.npz"))
    for node in gates.split_gates_arrays(result.model)["nodes"]:
        source = node["source"]
        assert all(value in variables for value in source["variables"].values()), source["variables"]
        for direction, layer in zip(node["directions"], source["layer"].split(" + "), strict=True):
            prefix = f"{direction['direction']}." if len(node["directions"]) == 2 else ""
            names = {key.removeprefix(prefix): value for key, value in source["variables"].items()
                     if key.startswith(prefix)}
            _check_direction(name, node, direction, layer, names, variables)


def _check_direction(name: str, node: dict[str, Any], direction: dict[str, Any], layer: str, names: dict[str, str],
                     variables: dict[str, np.ndarray]) -> None:
    kind = _cell_spec(name, layer)
    opts = options(kind)
    forget = float(opts.get("fb", 1.0))
    assert node["source"]["folded"] == ({"forget_bias": pytest.approx(forget)} if node["op"] == "LSTM" else {})
    expected = _expected_gates(kind.split(":")[0], variables, names, node["hidden_size"], forget)
    size = node["input_size"]
    for gate, (kernel, bias) in expected.items():
        got = direction["gates"][gate]
        np.testing.assert_array_equal(got["W"], kernel[:size].T)
        np.testing.assert_array_equal(got["R"], kernel[size:].T)
        np.testing.assert_allclose(got["Wb"] + got["Rb"], bias, atol=1e-6)
    if "peep" in opts:
        for gate in ("i", "f", "o"):
            np.testing.assert_array_equal(direction["peepholes"][gate], variables[names[f"w_{gate}_diag"]])
    else:
        assert "peepholes" not in direction


def test_sequence_lengths_and_states_are_wired(converted: dict[str, Any]) -> None:
    model = _result(converted, "lstm_fb0_initial_tm_v2_ckpt").model
    (node,) = [n for n in model.graph.node if n.op_type == "LSTM"]
    producers = {out: n for n in model.graph.node for out in n.output}

    def source(name: str) -> str:  # through the Identity/Cast/Unsqueeze glue
        while name in producers and producers[name].op_type in ("Identity", "Cast", "Unsqueeze"):
            name = producers[name].input[0]
        return name

    assert producers[node.input[4]].op_type == "Cast" and source(node.input[4]) == "lengths"
    assert [source(node.input[k]) for k in (5, 6)] == ["state_1", "state_0"]  # LSTMStateTuple is (c, h)
    assert [n.op_type for n in model.graph.node if n.op_type in RECURRENT] == ["LSTM"]


@pytest.mark.parametrize(("name", "message"), [
    ("lstm_cell_clip_v1_ckpt", r"'rnn/cell0_lstm' \(cell_clip: TF clips the cell state"),
    ("lstm_num_proj_v2_ckpt", r"'rnn/cell0_lstm' \(num_proj: the projected output feeds the recurrence"),
    ("static_gru_v2_frozen", r"'rnn/encoder_cell0_gru' is computed step by step in the graph \(static_rnn")])
def test_what_onnx_cannot_express_is_refused_by_name(built: Path, name: str, message: str) -> None:
    from converters import tensorflow as tf_converter

    assert name in REFUSED
    with pytest.raises(UnsupportedLayerError, match=message):
        tf_converter.convert(_source(built, name), opset=17)


def test_every_model_plain_tf2onnx_converts_converts_here(built: Path, converted: dict[str, Any]) -> None:
    """tf2onnx alone (from the same frozen graph) converting a model means modelbridge must convert it too."""
    import tensorflow as tf
    import tf2onnx

    from converters import tf_sources

    plain = {}
    for name in sorted(CORPUS):
        loaded = tf_sources.load(_source(built, name), inputs=None, outputs=None)
        try:
            with tf.Graph().as_default():
                tf2onnx.convert.from_graph_def(loaded.graph_def, input_names=loaded.input_names,
                                               output_names=loaded.output_names, opset=17)
            plain[name] = True
        except Exception:  # noqa: BLE001 - tf2onnx's failures are many kinds; all mean "does not convert"
            plain[name] = False
    assert any(plain.values())
    refused = [name for name, ok in plain.items() if ok and isinstance(converted[name], Exception)]
    assert not refused


def test_wrong_input_specs_name_what_the_graph_expects(built: Path) -> None:
    from converters import tensorflow as tf_converter

    source = _source(built, "basic_lstm_v1_ckpt")
    wrong = {"nope": InputSpec("nope", (None, 6, FEATURES)), "shape": InputSpec("x", (None, 6)),
             "steps": InputSpec("x", (None, 7, FEATURES)), "dtype": InputSpec("lengths", (None,), "float32")}
    messages = {name: str(pytest.raises(UnsupportedSourceError, tf_converter.convert, source, inputs=[spec]).value)
                for name, spec in wrong.items()}
    assert "['nope'] are not inputs" in messages["nope"] and "x:-1,6,3:float32" in messages["nope"]
    assert "input 'x' has shape -1,6,3 in the graph" in messages["shape"] and "-1,6 does not fit" in messages["shape"]
    assert "-1,7,3 does not fit" in messages["steps"]
    assert "input 'lengths' is int32 in the graph, not float32" in messages["dtype"]


def test_checkpoint_without_meta_says_what_to_supply(built: Path, tmp_path: Path) -> None:
    for part in (built / "basic_lstm_v1_ckpt").glob("model.*"):
        if part.suffix != ".meta":
            (tmp_path / part.name).write_bytes(part.read_bytes())
    done = subprocess.run([sys.executable, "-m", "converters.cli", "convert", str(tmp_path / "model.index"),
                           "-o", str(tmp_path / "m.onnx")], cwd=ROOT, capture_output=True, text=True, timeout=240,
                          check=False)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "has no .meta graph" in done.stderr and "tf.compat.v1.train.Saver().save()" in done.stderr
    assert "SavedModel or a frozen GraphDef" in done.stderr


def test_text_graph_def_converts(built: Path, converted: dict[str, Any], tmp_path: Path) -> None:
    import tensorflow as tf
    from google.protobuf import text_format

    from converters import tensorflow as tf_converter

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(_source(built, "multi_lstm_v1_frozen").read_bytes())
    (tmp_path / "model.pbtxt").write_text(text_format.MessageToString(graph_def))
    result = tf_converter.convert(tmp_path / "model.pbtxt", opset=17)
    assert [e["source"]["layer"] for e in result.annotations] == \
        [e["source"]["layer"] for e in _result(converted, "multi_lstm_v1_frozen").annotations]


def test_cell_activations_become_the_node_activations(converted: dict[str, Any]) -> None:
    from converters.reference import intermediates, run_reference

    result = _result(converted, "activations_v1_frozen")
    found = {entry["op"]: entry["activations"] for entry in result.annotations}
    assert found == {"LSTM": ["Sigmoid", "Softsign", "Softsign"], "RNN": ["Relu"], "GRU": ["Sigmoid", "Elu"]}
    feeds = {"x": np.random.default_rng(3).standard_normal((2, 6, FEATURES)).astype(np.float32),
             "lengths": np.array([6, 3], np.int32)}
    reference = run_reference(result.model, feeds)  # the numpy reference the gates view and JS runner follow
    actual = intermediates(result.model, feeds, sorted(reference))
    for tensor, value in reference.items():
        np.testing.assert_allclose(actual[tensor], value, atol=1e-5, err_msg=tensor)
