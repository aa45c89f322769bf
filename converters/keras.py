"""Keras 3 and tf-keras 2.x models to ONNX, recurrent layers as single fused LSTM/GRU/RNN nodes.

Why we build the graph ourselves instead of calling tf2onnx: ``tf2onnx.convert.from_keras`` fails on
Keras 3, and ``from_function`` leaves GRU, SimpleRNN and hard_sigmoid LSTMs as ONNX Loop (seen with
Keras 3.15, TF 2.21, tf2onnx 1.17).  Emitting each layer from its weights (keras_layers.py) makes every
recurrent layer one fused node whose W/R/B rows we place ourselves, so the annotations are exact by
construction; the parity check then proves the whole model against Keras on the same inputs.  Models
without recurrent layers that use a layer we do not emit fall back to tf2onnx ``from_function``.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from converters import DEFAULT_OPSET, UnsupportedSourceError
from converters import parity as parity_check
from converters.annotations import annotate_recurrent_node
from converters.keras_layers import RECURRENT_LAYERS, GraphBuilder, UnsupportedLayerError, emit
from converters.parity import DEFAULT_ATOL
from converters.prelu_rewrite import rewrite_prelu
from converters.result import ConversionResult
from converters.specs import InputSpec

SOURCE_KEY = "modelbridge.source"
IR_VERSION = 10  # node-level metadata_props need IR 10; onnxruntime-web 1.30 reads it


def _flavour_of(model: Any) -> str | None:
    roots = {klass.__module__.split(".")[0] for klass in type(model).__mro__}
    if "tf_keras" in roots:
        return "tf-keras"
    if "keras" in roots:
        return "keras"
    return None


def load(source: Any) -> tuple[Any, str]:
    """An in-memory Keras 3 / tf-keras model, or a ``.keras`` / ``.h5`` file; returns (model, flavour)."""
    if not isinstance(source, (str, Path)):
        flavour = _flavour_of(source)
        if flavour is None:
            raise UnsupportedSourceError(f"a {type(source).__qualname__} is not a Keras model")
        return source, flavour
    path = Path(source)
    if not path.is_file():
        raise UnsupportedSourceError(f"Keras model file {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix not in (".keras", ".h5", ".hdf5"):
        raise UnsupportedSourceError(f"{path.name!r} is not a Keras model file (.keras, .h5)")
    # A .keras zip may come from Keras 3 or tf-keras; HDF5 is tf-keras's format first.
    order = ["keras", "tf_keras"] if suffix == ".keras" else ["tf_keras", "keras"]
    failures = []
    for package in order:
        try:
            module = importlib.import_module(package)
            model = module.models.load_model(str(path), compile=False)
        except Exception as exc:  # noqa: BLE001 - each loader's failure is reported below
            failures.append(f"{package}: {type(exc).__name__}: {str(exc)[:200]}")
            continue
        return model, "tf-keras" if package == "tf_keras" else "keras"
    raise UnsupportedSourceError(f"cannot load Keras model {path.name!r}: " + "; ".join(failures))


def _shape(tensor: Any) -> tuple[int | None, ...]:
    shape = tensor.shape
    dims = shape.as_list() if hasattr(shape, "as_list") else list(shape)
    return tuple(None if dim is None else int(dim) for dim in dims)


def input_spec(model: Any, inputs: list[InputSpec] | None) -> InputSpec:
    if len(model.inputs) != 1:
        raise UnsupportedSourceError(f"Keras model {model.name!r} has {len(model.inputs)} inputs; only "
                                     "single-input models are supported")
    declared = _shape(model.inputs[0])
    if inputs:
        if len(inputs) != 1:
            raise UnsupportedSourceError(f"Keras model {model.name!r} has 1 input, {len(inputs)} specs given")
        spec = inputs[0]
        if len(spec.shape) != len(declared):
            raise UnsupportedSourceError(f"input spec {spec} has rank {len(spec.shape)}, the model expects "
                                         f"rank {len(declared)} {list(declared)}")
        return spec
    name = str(getattr(model.inputs[0], "name", "input")).split(":")[0]
    if not name or re.fullmatch(r"keras_tensor(_\d+)?", name):  # Keras 3's counter name for an unnamed Input
        name = "input"
    dtype = model.inputs[0].dtype
    return InputSpec(name, declared, str(getattr(dtype, "name", dtype)))


def layer_chain(model: Any) -> list[Any]:
    """The layers of a Sequential model, or of a functional model that is one straight chain."""
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if type(model).__name__ == "Sequential":
        return layers
    if len(model.outputs) != 1:
        raise UnsupportedLayerError(f"Keras model {model.name!r} has {len(model.outputs)} outputs; "
                                    "only single-output models are supported")
    previous = model.inputs[0]
    for layer in layers:
        try:
            incoming = layer.input
        except Exception as exc:
            raise UnsupportedLayerError(f"layer {layer.name!r} is used more than once") from exc
        if incoming is not previous:
            raise UnsupportedLayerError(f"layer {layer.name!r}: the functional model is not a single chain "
                                        "of layers (branches and merges are not supported)")
        previous = layer.output
    if previous is not model.outputs[0]:
        raise UnsupportedLayerError(f"Keras model {model.name!r} is not a single chain of layers")
    return layers


def _all_layers(model: Any) -> list[Any]:
    found = []
    for layer in model.layers:
        found.append(layer)
        if hasattr(layer, "layers") and type(layer).__name__ not in RECURRENT_LAYERS:
            found.extend(_all_layers(layer))
    return found


def _value_info(name: str, shape: tuple[int | None, ...], dtype: str) -> onnx.ValueInfoProto:
    dims: list[int | str] = [("batch" if k == 0 else f"{name}_dim{k}") if dim is None else dim
                             for k, dim in enumerate(shape)]
    return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims)


def _to_tensor(flavour: str) -> Callable[[np.ndarray], Any]:
    if flavour == "tf-keras":
        import tensorflow as tf

        return tf.constant
    return lambda array: array


def build(model: Any, spec: InputSpec, *, opset: int, flavour: str) -> tuple[onnx.ModelProto, GraphBuilder]:
    layers = layer_chain(model)
    builder = GraphBuilder(to_tensor=_to_tensor(flavour))
    builder.fresh(spec.name)
    current = spec.name
    for layer in layers:
        current = emit(builder, layer, current)
    output = builder.fresh(layers[-1].name if layers else "output")
    builder.nodes.append(helper.make_node("Identity", [current], [output], name=builder.fresh(f"{output}/out")))
    graph = helper.make_graph(builder.nodes, str(model.name), [_value_info(spec.name, spec.shape, spec.dtype)],
                              [_value_info(output, _shape(model.outputs[0]), "float32")],
                              initializer=builder.initializers)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION,
                              producer_name="modelbridge.converters.keras")
    onnx.checker.check_model(proto)
    return proto, builder


def _via_tf2onnx(model: Any, spec: InputSpec, *, opset: int) -> onnx.ModelProto:
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype), name=spec.name)]
    function = tf.function(lambda x: model(x, training=False), input_signature=signature)
    proto, _ = tf2onnx.convert.from_function(function, input_signature=signature, opset=opset)
    rewrite_prelu(proto)  # Keras 3's PReLU arrives as Relu/Neg/Mul/Add
    left = sorted({node.op_type for node in proto.graph.node} & {"Loop", "Scan"})
    if left:
        raise UnsupportedLayerError(f"Keras model {model.name!r} converted with {', '.join(left)} nodes left")
    return proto


def run_keras(model: Any, x: np.ndarray) -> np.ndarray:
    out = model(x, training=False)
    return np.asarray(out.numpy() if hasattr(out, "numpy") else out)


def convert(
    source: Any,
    *,
    inputs: list[InputSpec] | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    progress: Callable[[str], None] | None = None,
) -> ConversionResult:
    """Convert a Keras model (in memory or a .keras/.h5 file), proven by a parity check against Keras."""
    say = progress or (lambda _stage: None)
    say("loading")
    model, flavour = load(source)
    spec = input_spec(model, inputs)
    say("converting")
    try:
        proto, builder = build(model, spec, opset=opset, flavour=flavour)
    except UnsupportedLayerError:
        recurrent = [layer.name for layer in _all_layers(model) if type(layer).__name__ in RECURRENT_LAYERS]
        if recurrent:
            raise  # tf2onnx would leave these as Loop: refuse, naming the layer
        say("converting (tf2onnx from_function)")
        proto, builder = _via_tf2onnx(model, spec, opset=opset), GraphBuilder()
    nodes = {node.name: node for node in proto.graph.node}
    annotations = [
        annotate_recurrent_node(proto, nodes[record.node_name], framework=flavour, layer=record.layer,
                                variables=record.variables, source_gate_order=record.source_gate_order,
                                gate_map=record.gate_map, notes=record.notes)
        for record in builder.recurrent
    ]
    say("verifying")
    feeds = parity_check.random_feeds([spec], seed=0, dynamic=3)
    expected = run_keras(model, feeds[spec.name])
    report = parity_check.check(proto, feeds, [expected], atol=atol, origin="random")
    module = importlib.import_module("tf_keras" if flavour == "tf-keras" else "keras")
    parity_check.set_metadata(proto.metadata_props, SOURCE_KEY, json.dumps({
        "framework": flavour, "version": module.__version__,
        "exporter": "modelbridge keras layer builder" if builder.nodes else "tf2onnx from_function"}))
    return ConversionResult(proto, report, annotations)
