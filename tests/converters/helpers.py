"""Small ONNX models built by hand around one fused recurrent node (no framework needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from converters.recurrent import make_recurrent_node

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(
    op: str,
    *,
    hidden: int = 4,
    input_size: int = 3,
    direction: str = "forward",
    seed: int = 0,
    peepholes: bool = False,
    with_sequence_lens: bool = False,
    with_initial_state: bool = False,
    attributes: dict[str, Any] | None = None,
) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    directions = 2 if direction == "bidirectional" else 1
    count = GATES[op]
    weights = (
        rng.normal(size=(directions, count * hidden, input_size)).astype(np.float32) * 0.5,
        rng.normal(size=(directions, count * hidden, hidden)).astype(np.float32) * 0.5,
        rng.normal(size=(directions, 2 * count * hidden)).astype(np.float32) * 0.5,
    )
    inputs = [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["seq", "batch", input_size])]
    initial_h = initial_c = ""
    if with_initial_state:
        initial_h = "h0"
        inputs.append(onnx.helper.make_tensor_value_info("h0", onnx.TensorProto.FLOAT, [directions, "batch", hidden]))
        if op == "LSTM":
            initial_c = "c0"
            inputs.append(onnx.helper.make_tensor_value_info("c0", onnx.TensorProto.FLOAT, [directions, "batch", hidden]))
    node, initializers = make_recurrent_node(
        op=op, name=f"{op.lower()}0", x="x", weights=weights, outputs=["y", "y_h"] + (["y_c"] if op == "LSTM" else []),
        direction=direction, initial_h=initial_h, initial_c=initial_c,
        peepholes=rng.normal(size=(directions, 3 * hidden)).astype(np.float32) if peepholes else None,
        attributes=attributes,
    )
    if with_sequence_lens:
        inputs.append(onnx.helper.make_tensor_value_info("lens", onnx.TensorProto.INT32, ["batch"]))
        while len(node.input) < 5:
            node.input.append("")
        node.input[4] = "lens"
    outputs = [onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, ["d0", "d1", "d2", "d3"][: 4 if name == "y" else 3]) for name in node.output]
    graph = onnx.helper.make_graph([node], "g", inputs, outputs, initializer=initializers)
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    return model
