"""A corpus of hostile and broken ONNX models, built with onnx.helper (no files from outside)."""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper

from tests.support import scale_model

OPSET = [helper.make_opsetid("", 17)]


def _external(t: TensorProto, location: str) -> TensorProto:
    t.ClearField("float_data")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    t.external_data.add(key="length", value="4")
    return t


def external_initializer(location: str = "../../../../../etc/passwd") -> onnx.ModelProto:
    m = scale_model()
    _external(m.graph.initializer[0], location)
    return m


def external_in_subgraph() -> onnx.ModelProto:
    """An If whose then-branch has its own initializer pointing outside (nested initializers)."""
    inner_k = _external(helper.make_tensor("inner_k", TensorProto.FLOAT, [1], [1.0]), "/etc/shadow")
    then_g = helper.make_graph([helper.make_node("Identity", ["inner_k"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, [1])], initializer=[inner_k])
    else_g = helper.make_graph([helper.make_node("Identity", ["k"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, [1])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)], "branchy",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        initializer=[helper.make_tensor("k", TensorProto.FLOAT, [1], [2.0])],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def external_sparse_initializer() -> onnx.ModelProto:
    values = _external(helper.make_tensor("s_values", TensorProto.FLOAT, [1], [1.0]), "../../secret.bin")
    indices = helper.make_tensor("s_indices", TensorProto.INT64, [1], [0])
    sparse = helper.make_sparse_tensor(values, indices, [3])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "s_values"], ["y"])], "sparse",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
        sparse_initializer=[sparse],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def external_constant_attribute() -> onnx.ModelProto:
    value = _external(helper.make_tensor("c", TensorProto.FLOAT, [1], [1.0]), "/proc/self/environ")
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=value), helper.make_node("Add", ["x", "c"], ["y"])], "const",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def unknown_operator() -> onnx.ModelProto:
    """Passes the ONNX checker (custom domain) but onnxruntime has no kernel for it."""
    graph = helper.make_graph(
        [helper.make_node("Detonate", ["x"], ["y"], domain="evil.example")], "unknown_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return helper.make_model(graph, opset_imports=OPSET + [helper.make_opsetid("evil.example", 1)])


def huge_declared_initializer() -> onnx.ModelProto:
    """Declares a 4 TiB initializer and carries 16 bytes."""
    k = TensorProto(name="k", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 20], raw_data=b"\0" * 16)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "k"], ["y"])], "declared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1 << 20, 1 << 20])], initializer=[k],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def huge_allocation() -> onnx.ModelProto:
    """Loads fine; running it allocates 8 GiB (ConstantOfShape of 2**31 floats)."""
    shape = helper.make_tensor("s", TensorProto.INT64, [1], [1 << 31])
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["s"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
         helper.make_node("ReduceSum", ["big"], ["r"], keepdims=0),
         helper.make_node("Add", ["x", "r"], ["y"])], "bomb",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=[shape],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, encoded by hand."""
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def nested_ifs(depth: int) -> bytes:
    """ModelProto whose graph nests If subgraphs `depth` deep, encoded by hand: protobuf's own builders
    refuse to make it, a hostile client does not have to ask them."""
    graph = _field(2, b"leaf")                                        # GraphProto.name
    for _ in range(depth):
        attr = _field(1, b"then_branch") + b"\xa0\x01\x05" + _field(6, graph)   # name, type=GRAPH, g
        node = _field(4, b"If") + _field(5, attr)                     # NodeProto.op_type, attribute
        graph = _field(1, node)                                       # GraphProto.node
    opset = _field(1, b"") + b"\x10\x11"                                # OperatorSetIdProto: domain "", version 17
    return b"\x08\x08" + _field(7, graph) + _field(8, opset)           # ir_version 8, graph, opset_import


CORPUS = {
    "external data pointing outside": (external_initializer, "external data"),
    "external data by absolute path": (lambda: external_initializer("/etc/passwd"), "external data"),
    "external data in a subgraph initializer": (external_in_subgraph, "external data"),
    "external data in a sparse initializer": (external_sparse_initializer, "external data"),
    "external data in a Constant attribute": (external_constant_attribute, "external data"),
    "operator onnxruntime cannot load": (unknown_operator, "onnxruntime cannot load"),
    "huge declared initializer": (huge_declared_initializer, "too small for the declared shape"),
    "graph that allocates 8 GiB when run": (huge_allocation, "memory"),
}
