"""TF1 cells (BasicLSTMCell, LSTMCell, GRUCell, MultiRNNCell, bidirectional) saved as checkpoint + .meta.

The models are built in a subprocess (this file run as a script) because the TF1 cell classes need
TF_USE_LEGACY_KERAS=1 before TensorFlow is first imported; converting the saved files does not.
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

from converters import gates, parity
from converters.keras_layers import UnsupportedLayerError
from converters.reference import intermediates, run_reference

# The module fixture builds and converts 15 TF graphs; on a loaded 2-core box that nears pytest's 300 s default.
pytestmark = pytest.mark.timeout(600)
ROOT = Path(__file__).resolve().parents[2]
RECURRENT = ("LSTM", "GRU", "RNN")
STEPS, FEATURES = 5, 3


def _cells(name: str) -> Any:
    import tensorflow as tf

    rnn = tf.compat.v1.nn.rnn_cell
    return {
        "basic": lambda: rnn.BasicLSTMCell(4),
        "basic-forget-0.3": lambda: rnn.BasicLSTMCell(4, forget_bias=0.3),
        "lstm-cell": lambda: rnn.LSTMCell(4),
        "gru": lambda: rnn.GRUCell(4),
        "multi": lambda: rnn.MultiRNNCell([rnn.BasicLSTMCell(4), rnn.BasicLSTMCell(3)]),
        "multi-mixed": lambda: rnn.MultiRNNCell([rnn.BasicLSTMCell(4), rnn.GRUCell(3)]),
        "gru-stack": lambda: rnn.MultiRNNCell([rnn.GRUCell(4), rnn.GRUCell(3)]),
        "basic-rnn": lambda: rnn.BasicRNNCell(4),
        "peepholes": lambda: rnn.LSTMCell(4, use_peepholes=True, forget_bias=0.5),
        "multi-peepholes": lambda: rnn.MultiRNNCell([rnn.LSTMCell(4, use_peepholes=True), rnn.LSTMCell(3, use_peepholes=True)]),
        "peepholes-clip": lambda: rnn.LSTMCell(4, use_peepholes=True, cell_clip=2.0),
        "projection": lambda: rnn.LSTMCell(4, num_proj=2),
    }[name]()


VARIANTS = ("basic", "basic-forget-0.3", "lstm-cell", "gru", "multi", "multi-mixed", "gru-stack", "basic-rnn",
            "bidirectional", "peepholes", "multi-peepholes", "peepholes-clip", "projection", "static", "last-state")


def build(out: Path) -> None:
    """Save every variant TF1-style: a Saver checkpoint with its .meta graph (plus one frozen .pb)."""
    import tensorflow as tf

    tf.compat.v1.disable_v2_behavior()
    for name in VARIANTS:
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.set_random_seed(0)
            x = tf.compat.v1.placeholder(tf.float32, [None, STEPS, FEATURES], name="x")
            if name == "bidirectional":
                cells = [tf.compat.v1.nn.rnn_cell.LSTMCell(3, name=f"{d}_cell") for d in ("fw", "bw")]
                (fw, bw), _ = tf.compat.v1.nn.bidirectional_dynamic_rnn(cells[0], cells[1], x, dtype=tf.float32)
                y = tf.concat([fw, bw], axis=-1)
            elif name == "static":  # static_rnn unrolls the cell in the TF graph itself
                steps, _ = tf.compat.v1.nn.static_rnn(tf.compat.v1.nn.rnn_cell.BasicLSTMCell(4), tf.unstack(x, axis=1),
                                                      dtype=tf.float32)
                y = tf.stack(steps, axis=1)
            elif name == "last-state":  # only the final h is the output; dynamic_rnn's sequence output is unused
                _, state = tf.compat.v1.nn.dynamic_rnn(tf.compat.v1.nn.rnn_cell.BasicLSTMCell(4), x, dtype=tf.float32)
                y = state.h
            else:
                y, _ = tf.compat.v1.nn.dynamic_rnn(_cells(name), x, dtype=tf.float32)
            tf.identity(y, name="y")
            with tf.compat.v1.Session(graph=graph) as session:
                session.run(tf.compat.v1.global_variables_initializer())
                rng = np.random.default_rng(1)
                for variable in tf.compat.v1.global_variables():  # random biases make bias checks meaningful
                    if variable.name.endswith(("bias:0", "_diag:0")):
                        variable.load(rng.normal(size=variable.shape).astype(np.float32), session)
                target = out / name
                target.mkdir(parents=True, exist_ok=True)
                tf.compat.v1.train.Saver().save(session, str(target / "model"))
                if name == "basic":
                    frozen = tf.compat.v1.graph_util.convert_variables_to_constants(
                        session, graph.as_graph_def(), ["y"])
                    (out / "basic_frozen.pb").write_bytes(frozen.SerializeToString())


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tf1")
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, "-m", "tests.converters.test_tensorflow_tf1", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=450, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def converted(saved: Path) -> dict[str, Any]:
    from converters import tensorflow as tf_converter

    results: dict[str, Any] = {}
    for name in VARIANTS:
        try:
            results[name] = tf_converter.convert(saved / name / "model.meta", opset=17, atol=1e-5)
        except UnsupportedLayerError as exc:
            results[name] = exc
    return results


def _variables(saved: Path, name: str) -> dict[str, np.ndarray]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(saved / name / "model"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()}


FUSED = {"basic": ["LSTM"], "basic-forget-0.3": ["LSTM"], "lstm-cell": ["LSTM"], "gru": ["GRU"],
         "multi": ["LSTM", "LSTM"], "bidirectional": ["LSTM"], "peepholes": ["LSTM"],
         "multi-peepholes": ["LSTM", "LSTM"], "multi-mixed": ["LSTM", "GRU"], "gru-stack": ["GRU", "GRU"],
         "basic-rnn": ["RNN"], "last-state": ["LSTM"]}


@pytest.mark.parametrize("name", sorted(FUSED))
def test_tf1_cells_fuse_with_parity(converted: dict[str, Any], name: str) -> None:
    result = converted[name]
    assert not isinstance(result, Exception), result
    ops = result.op_types()
    assert [op for op in ops if op in RECURRENT] == FUSED[name]
    assert not {"Loop", "Scan"} & set(ops)
    stored = parity.read(result.model)
    assert result.parity.passed and stored is not None and stored.passed
    assert [value.name for value in result.model.graph.input] == ["x"]


def _lstm_expectation(kernel: np.ndarray, bias: np.ndarray, forget_bias: float) -> dict[str, dict[str, Any]]:
    """GATES.md: i, j, f, o = split(concat([x, h]) @ kernel + bias, 4); forget_bias added to f at run time."""
    hidden = kernel.shape[1] // 4
    size = kernel.shape[0] - hidden  # FEATURES for the first layer, the layer below's H above it
    kx, kh = kernel[:size], kernel[size:]
    out = {}
    for k, (tf_gate, onnx_gate) in enumerate((("i", "i"), ("j", "c"), ("f", "f"), ("o", "o"))):
        block = slice(k * hidden, (k + 1) * hidden)
        extra = forget_bias if tf_gate == "f" else 0.0
        out[onnx_gate] = {"W": kx[:, block].T, "R": kh[:, block].T, "B": bias[block] + extra, "source": tf_gate}
    return out


def _check_lstm(node: dict[str, Any], direction: dict[str, Any], kernel: np.ndarray, bias: np.ndarray,
                forget_bias: float) -> None:
    for gate, want in _lstm_expectation(kernel, bias, forget_bias).items():
        got = direction["gates"][gate]
        np.testing.assert_allclose(got["W"], want["W"], atol=1e-7)
        np.testing.assert_allclose(got["R"], want["R"], atol=1e-7)
        np.testing.assert_allclose(got["Wb"] + got["Rb"], want["B"], atol=1e-6)
        assert got["source_gate"] == want["source"]


@pytest.mark.parametrize(("name", "forget_bias"), [("basic", 1.0), ("basic-forget-0.3", 0.3), ("lstm-cell", 1.0),
                                                  ("peepholes", 0.5)])
def test_tf1_lstm_gates_match_kernel_slices_and_fold_forget_bias(
    converted: dict[str, Any], saved: Path, name: str, forget_bias: float
) -> None:
    variables = _variables(saved, name)
    (node,) = gates.split_gates_arrays(converted[name].model)["nodes"]
    source = node["source"]
    cell = "rnn/basic_lstm_cell" if name.startswith("basic") else "rnn/lstm_cell"
    assert source["layer"] == cell
    assert {key: source["variables"][key] for key in ("kernel", "bias")} == {"kernel": f"{cell}/kernel",
                                                                             "bias": f"{cell}/bias"}
    assert source["gate_order"] == ["i", "j", "f", "o"] and source["gate_map"]["j"] == "c"
    assert source["folded"] == {"forget_bias": pytest.approx(forget_bias)}
    _check_lstm(node, node["directions"][0], variables[f"{cell}/kernel"], variables[f"{cell}/bias"], forget_bias)


@pytest.mark.parametrize(("name", "cells"), [("peepholes", ["rnn/lstm_cell"]), (
    "multi-peepholes", ["rnn/multi_rnn_cell/cell_0/lstm_cell", "rnn/multi_rnn_cell/cell_1/lstm_cell"])])
def test_peephole_cells_are_rebuilt_with_p(converted: dict[str, Any], saved: Path, name: str, cells: list[str]) -> None:
    variables = _variables(saved, name)
    nodes = gates.split_gates_arrays(converted[name].model)["nodes"]
    assert [node["source"]["layer"] for node in nodes] == cells
    for node, cell in zip(nodes, cells, strict=True):
        assert node["source"]["variables"]["w_f_diag"] == f"{cell}/w_f_diag"
        peepholes = node["directions"][0]["peepholes"]
        for gate in ("i", "o", "f"):
            np.testing.assert_array_equal(peepholes[gate], variables[f"{cell}/w_{gate}_diag"])
        forget = node["source"]["folded"]["forget_bias"]
        _check_lstm(node, node["directions"][0], variables[f"{cell}/kernel"], variables[f"{cell}/bias"], forget)


def test_tf1_gru_gates_match_gates_and_candidate_kernels(converted: dict[str, Any], saved: Path) -> None:
    variables = _variables(saved, "gru")
    (node,) = gates.split_gates_arrays(converted["gru"].model)["nodes"]
    assert node["linear_before_reset"] == 0
    assert node["source"]["gate_map"] == {"r": "r", "u": "z", "c": "h"}
    gk, gb = variables["rnn/gru_cell/gates/kernel"], variables["rnn/gru_cell/gates/bias"]
    ck, cb = variables["rnn/gru_cell/candidate/kernel"], variables["rnn/gru_cell/candidate/bias"]
    hidden = ck.shape[1]
    expected = {"r": (gk[:, :hidden], gb[:hidden]), "z": (gk[:, hidden:], gb[hidden:]), "h": (ck, cb)}
    for gate, (kernel, bias) in expected.items():
        got = node["directions"][0]["gates"][gate]
        np.testing.assert_allclose(got["W"], kernel[:FEATURES].T, atol=1e-7)
        np.testing.assert_allclose(got["R"], kernel[FEATURES:].T, atol=1e-7)
        np.testing.assert_allclose(got["Wb"] + got["Rb"], bias, atol=1e-6)


def test_multi_rnn_cell_annotates_each_layer(converted: dict[str, Any]) -> None:
    layers = [entry["source"]["layer"] for entry in converted["multi"].annotations]
    assert layers == ["rnn/multi_rnn_cell/cell_0/basic_lstm_cell", "rnn/multi_rnn_cell/cell_1/basic_lstm_cell"]
    assert [entry["hidden_size"] for entry in converted["multi"].annotations] == [4, 3]


def test_stacks_tf2onnx_leaves_as_scan_are_rebuilt_per_cell(converted: dict[str, Any], saved: Path) -> None:
    mixed = [(e["op"], e["source"]["layer"]) for e in converted["multi-mixed"].annotations]
    assert mixed == [("LSTM", "rnn/multi_rnn_cell/cell_0/basic_lstm_cell"), ("GRU", "rnn/multi_rnn_cell/cell_1/gru_cell")]
    assert converted["multi-mixed"].annotations[0]["source"]["folded"] == {"forget_bias": 1.0}
    variables = _variables(saved, "basic-rnn")
    (node,) = gates.split_gates_arrays(converted["basic-rnn"].model)["nodes"]
    kernel = variables["rnn/basic_rnn_cell/kernel"]
    np.testing.assert_allclose(node["directions"][0]["gates"]["i"]["W"], kernel[:FEATURES].T, atol=1e-7)
    np.testing.assert_allclose(node["directions"][0]["gates"]["i"]["R"], kernel[FEATURES:].T, atol=1e-7)


def test_named_output_is_preferred_over_by_products(converted: dict[str, Any]) -> None:
    assert [value.name for value in converted["last-state"].model.graph.output] == ["y"]


def test_bidirectional_rnn_maps_both_directions(converted: dict[str, Any], saved: Path) -> None:
    variables = _variables(saved, "bidirectional")
    (node,) = gates.split_gates_arrays(converted["bidirectional"].model)["nodes"]
    assert [d["direction"] for d in node["directions"]] == ["forward", "reverse"]
    for direction, scope in zip(node["directions"], ("fw", "bw"), strict=True):
        cell = f"bidirectional_rnn/{scope}/{scope}_cell"
        assert node["source"]["variables"][f"{direction['direction']}.kernel"] == f"{cell}/kernel"
        _check_lstm(node, direction, variables[f"{cell}/kernel"], variables[f"{cell}/bias"], 1.0)


@pytest.mark.parametrize("name", sorted(FUSED))
def test_numpy_reference_equals_onnxruntime(converted: dict[str, Any], name: str) -> None:
    model = converted[name].model
    feeds = parity.random_feeds(model, seed=5, dynamic=3)
    reference = run_reference(model, feeds)
    actual = intermediates(model, feeds, sorted(reference))
    for tensor, value in reference.items():
        np.testing.assert_allclose(actual[tensor], value, atol=1e-5, err_msg=tensor)


@pytest.mark.parametrize(("name", "named"), [("peepholes-clip", r"'rnn/lstm_cell' \(use_peepholes, cell_clip: TF clips"),
                                             ("projection", r"'rnn/lstm_cell' \(num_proj"),
                                             ("static", r"'rnn/basic_lstm_cell' is computed step by step")])
def test_unfusable_lstm_cells_are_refused_by_name(converted: dict[str, Any], name: str, named: str) -> None:
    error = converted[name]
    assert isinstance(error, UnsupportedLayerError)
    assert pytest.raises(UnsupportedLayerError, _raise, error).match(named)


def _raise(error: Exception) -> None:
    raise error


def test_frozen_graph_def_converts(saved: Path, converted: dict[str, Any]) -> None:
    from converters import convert

    result = convert(saved / "basic_frozen.pb")
    assert [op for op in result.op_types() if op in RECURRENT] == ["LSTM"]
    assert result.annotations[0]["source"]["variables"]["kernel"] == "rnn/basic_lstm_cell/kernel"
    split = gates.split_gates(result.model)["nodes"][0]["directions"][0]["gates"]
    assert split == gates.split_gates(converted["basic"].model)["nodes"][0]["directions"][0]["gates"]


def test_cli_converts_a_checkpoint_meta(saved: Path, tmp_path: Path) -> None:
    target = tmp_path / "basic.onnx"
    done = subprocess.run([sys.executable, "-m", "converters.cli", "convert", str(saved / "gru" / "model.meta"),
                           "-o", str(target)], cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    model = onnx.load(target)
    (entry,) = json.loads(next(p.value for p in model.metadata_props if p.key == "modelbridge.recurrent"))
    assert entry["op"] == "GRU" and entry["source"]["layer"] == "rnn/gru_cell"


def test_cli_refusal_names_the_layer(saved: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "converters.cli", "convert",
                           str(saved / "projection" / "model.meta"), "-o", str(tmp_path / "p.onnx")],
                          cwd=ROOT, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode != 0
    assert "rnn/lstm_cell" in done.stderr and "num_proj" in done.stderr
    assert not (tmp_path / "p.onnx").exists()


if __name__ == "__main__":
    build(Path(sys.argv[1]))
