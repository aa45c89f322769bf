"""Build the framework-free example models with onnx.helper: add_sub, identity_types, lstm_tiny.

Run: .venv/bin/python examples/basic/build.py   (writes server/examples/repository/<name>/1/model.onnx)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[2] / "server" / "examples" / "repository"
OPSET = [helper.make_opsetid("", 17)]


def save(model: onnx.ModelProto, name: str, config: str | None = None) -> None:
    # onnx 1.23 writes IR 14 by default; onnxruntime-web 1.30 loads up to 13. Opset 17 needs only IR 8+.
    model.ir_version = 10
    onnx.checker.check_model(model, full_check=True)
    out = REPO / name / "1" / "model.onnx"
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, out)
    if config is not None:
        (REPO / name / "config.pbtxt").write_text(config)


def add_sub() -> onnx.ModelProto:
    """Triton's classic `simple` model: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1."""
    io = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16]) for n in ("INPUT0", "INPUT1")]
    outs = [helper.make_tensor_value_info(n, TensorProto.INT32, ["batch", 16]) for n in ("OUTPUT0", "OUTPUT1")]
    graph = helper.make_graph(
        [helper.make_node("Add", ["INPUT0", "INPUT1"], ["OUTPUT0"]),
         helper.make_node("Sub", ["INPUT0", "INPUT1"], ["OUTPUT1"])],
        "add_sub", io, outs,
    )
    return helper.make_model(graph, opset_imports=OPSET, producer_name="modelbridge-examples")


TYPES = {
    "BOOL": TensorProto.BOOL, "UINT8": TensorProto.UINT8, "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32, "UINT64": TensorProto.UINT64, "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16, "INT32": TensorProto.INT32, "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16, "FP32": TensorProto.FLOAT, "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def identity_types() -> onnx.ModelProto:
    """One Identity per V2 datatype: IN_<T> -> OUT_<T>, shape [batch, -1]."""
    inputs, outputs, nodes = [], [], []
    for name, elem in TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"IN_{name}", elem, ["batch", "n"]))
        outputs.append(helper.make_tensor_value_info(f"OUT_{name}", elem, ["batch", "n"]))
        nodes.append(helper.make_node("Identity", [f"IN_{name}"], [f"OUT_{name}"]))
    graph = helper.make_graph(nodes, "identity_types", inputs, outputs)
    return helper.make_model(graph, opset_imports=OPSET, producer_name="modelbridge-examples")


def lstm_tiny(hidden: int = 4, inp: int = 2) -> onnx.ModelProto:
    """x [batch, T, 2] -> one ONNX LSTM (layout 0) -> y [batch, T, 4]; fixed-seed random weights."""
    rng = np.random.default_rng(7)
    w = rng.uniform(-0.5, 0.5, (1, 4 * hidden, inp)).astype(np.float32)
    r = rng.uniform(-0.5, 0.5, (1, 4 * hidden, hidden)).astype(np.float32)
    b = rng.uniform(-0.1, 0.1, (1, 8 * hidden)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_tbi"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["x_tbi", "W", "R", "B"], ["y_tdbh"], hidden_size=hidden, name="lstm"),
        helper.make_node("Squeeze", ["y_tdbh", "axis1"], ["y_tbh"]),
        helper.make_node("Transpose", ["y_tbh"], ["y"], perm=[1, 0, 2]),
    ]
    graph = helper.make_graph(
        nodes, "lstm_tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "T", inp])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "T", hidden])],
        initializer=[numpy_helper.from_array(w, "W"), numpy_helper.from_array(r, "R"),
                     numpy_helper.from_array(b, "B"), numpy_helper.from_array(np.array([1], np.int64), "axis1")],
    )
    return helper.make_model(graph, opset_imports=OPSET, producer_name="modelbridge-examples")


def lstm_stream(hidden: int = 4, inp: int = 2) -> onnx.ModelProto:
    """lstm_tiny's weights in step form: state inputs h0/c0 and outputs hn/cn, batch first, declared in
    metadata `modelbridge.state` so the server keeps them between the steps of a sequence."""
    base = lstm_tiny(hidden, inp)
    inits = list(base.graph.initializer)
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_tbi"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["h0"], ["h0_t"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["c0"], ["c0_t"], perm=[1, 0, 2]),
        helper.make_node("LSTM", ["x_tbi", "W", "R", "B", "", "h0_t", "c0_t"], ["y_tdbh", "hn_t", "cn_t"],
                         hidden_size=hidden, name="lstm"),
        helper.make_node("Squeeze", ["y_tdbh", "axis1"], ["y_tbh"]),
        helper.make_node("Transpose", ["y_tbh"], ["y"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["hn_t"], ["hn"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["cn_t"], ["cn"], perm=[1, 0, 2]),
    ]
    state = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 1, hidden]) for n in ("h0", "c0")]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", 1, hidden]) for n in ("hn", "cn")]
    graph = helper.make_graph(
        nodes, "lstm_stream",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "T", inp]), *state],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "T", hidden]), *outs],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=OPSET, producer_name="modelbridge-examples")
    helper.set_model_props(model, {"modelbridge.state": json.dumps(
        [{"input": "h0", "output": "hn"}, {"input": "c0", "output": "cn"}])})
    return model


def main() -> None:
    save(add_sub(), "add_sub", 'max_batch_size: 8\n')
    save(identity_types(), "identity_types")
    save(lstm_tiny(), "lstm_tiny")
    save(lstm_stream(), "lstm_stream",
         "max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 2000 }\n")


if __name__ == "__main__":
    main()
