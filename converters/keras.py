"""Keras 3 and tf-keras 2.x models to ONNX: tf2onnx converts the graph, we own the recurrent layers.

The model is traced in a ``tf.function`` with every recurrent layer call replaced by a placeholder op
(keras_markers.py); tf2onnx converts the whole graph around them — any layer it supports, branches,
several inputs and outputs.  Each placeholder then becomes one fused ONNX LSTM/GRU/RNN node built from
that layer's own weights (keras_fuse.py, masks through masking.py), annotated per gate.  Why not let
tf2onnx convert the recurrent layers too: it leaves GRU, SimpleRNN, masked and hard_sigmoid layers as
ONNX Loops (Keras 3.15, TF 2.21, tf2onnx 1.17), and the placeholder trace skips converting the loops,
which makes the conversion faster than plain tf2onnx.  The parity check proves the whole model
against Keras on the same inputs.
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

from converters import DEFAULT_OPSET, UnsupportedSourceError
from converters import parity as parity_check
from converters.annotations import annotate_recurrent_node
from converters.keras_fuse import RecurrentSite
from converters.keras_graph import loops_left, name_outputs, replace_placeholders
from converters.keras_layers import UnsupportedLayerError
from converters.keras_markers import (
    MARKER_DOMAIN,
    MARKER_PREFIX,
    marker_handler,
    placeholders,
    recurrent_layers,
)
from converters.parity import DEFAULT_ATOL
from converters.prelu_rewrite import rewrite_prelu
from converters.quiet import quiet_loggers
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


def _tensor_name(tensor: Any, fallback: str) -> str:
    name = str(getattr(tensor, "name", "") or "").split(":")[0]
    if not name or re.fullmatch(r"keras_tensor(_\d+)?", name):  # Keras 3's counter name for an unnamed Input
        return fallback
    return re.sub(r"[^A-Za-z0-9_.\-/]", "_", name)


def _declared_inputs(model: Any) -> list[Any] | None:
    """The model's symbolic inputs; None for a subclassed model, which has none until called symbolically."""
    try:
        declared = model.inputs
    except (AttributeError, ValueError):
        return None
    return list(declared) if declared else None


def _describe(tensor: Any, name: str) -> str:
    dims = ",".join("-1" if dim is None else str(dim) for dim in _shape(tensor))
    return f"{name}:{dims}:{getattr(tensor.dtype, 'name', tensor.dtype)}"


def input_specs(model: Any, inputs: list[InputSpec] | None) -> list[InputSpec]:
    """One spec per model input: the given ones (checked against the model) or the model's own."""
    declared = _declared_inputs(model)
    if declared is None:
        if not inputs:
            raise UnsupportedSourceError(f"Keras model {model.name!r} is subclassed and declares no inputs: give "
                                         "one input spec per call argument (--input NAME:SHAPE:DTYPE, e.g. "
                                         "tokens:-1,20:int32)")
        return list(inputs)
    names = [_tensor_name(tensor, "input" if len(declared) == 1 else f"input_{k}") for k, tensor in enumerate(declared)]
    if not inputs:
        return [InputSpec(name, _shape(tensor), str(getattr(tensor.dtype, "name", tensor.dtype)))
                for name, tensor in zip(names, declared, strict=True)]
    expected = "the model expects " + ", ".join(_describe(tensor, name) for name, tensor in zip(names, declared,
                                                                                                 strict=True))
    if len(inputs) != len(declared):
        raise UnsupportedSourceError(f"Keras model {model.name!r} has {len(declared)} input(s), {len(inputs)} "
                                     f"spec(s) given; {expected}")
    for spec, tensor in zip(inputs, declared, strict=True):
        shape = _shape(tensor)
        fits = len(spec.shape) == len(shape) and all(
            want is None or got is None or got == want for got, want in zip(spec.shape, shape, strict=True))
        if not fits:
            raise UnsupportedSourceError(f"input spec {spec} does not fit the model's input shape {list(shape)}; "
                                         f"{expected}")
        declared_dtype = str(getattr(tensor.dtype, "name", tensor.dtype))
        if np.dtype(spec.dtype).kind != np.dtype(declared_dtype).kind:
            raise UnsupportedSourceError(f"input spec {spec} has dtype {spec.dtype}, the model takes "
                                         f"{declared_dtype}; {expected}")
    return list(inputs)


def output_names(model: Any) -> list[str]:
    """The producing layer's name per output (``name_1``... when one layer gives several)."""
    names: list[str] = []
    try:
        outputs = list(model.outputs or [])
    except (AttributeError, ValueError):  # subclassed: tf2onnx's own output names stay
        return []
    for k, tensor in enumerate(outputs):
        history = getattr(tensor, "_keras_history", None)
        layer = getattr(history, "operation", None) or getattr(history, "layer", None)
        base = re.sub(r"[^A-Za-z0-9_.\-/]", "_", str(getattr(layer, "name", f"output_{k}")))
        name, index = base, 0
        while name in names:
            index += 1
            name = f"{base}_{index}"
        names.append(name)
    return names


def call_arguments(model: Any, values: list[Any]) -> Any:
    """The model's inputs in its own structure: one value, a list, or a dict (whose flat order is sorted keys)."""
    structure = getattr(model, "_inputs_struct", None)  # Keras 3 (a single KerasTensor has no truth value)
    if structure is None:
        structure = getattr(model, "_nested_inputs", None)  # tf-keras
    if isinstance(structure, dict) and len(structure) == len(values):
        return dict(zip(sorted(structure), values, strict=True))
    return values[0] if len(values) == 1 else values


def _to_tensor(flavour: str) -> Callable[[np.ndarray], Any]:
    if flavour == "tf-keras":
        import tensorflow as tf

        return tf.constant
    return lambda array: array


def export(model: Any, specs: list[InputSpec], *, flavour: str, opset: int) -> tuple[onnx.ModelProto,
                                                                                      list[RecurrentSite]]:
    """The ONNX graph of ``model`` with one fused node per recurrent layer call (not yet annotated)."""
    import tensorflow as tf
    import tf2onnx

    signature = [tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype), name=spec.name) for spec in specs]
    sites: list[RecurrentSite] = []

    def run(*tensors: Any) -> list[Any]:
        outputs = model(call_arguments(model, list(tensors)), training=False)
        return list(tf.nest.flatten(outputs))

    # tf2onnx warns that it cannot infer shapes through the placeholders; the fused nodes replace them.
    with placeholders(model, sites, to_tensor=_to_tensor(flavour), as_list=flavour == "tf-keras"), \
            quiet_loggers("tf2onnx.shape_inference", "tf2onnx.graph"):
        function = tf.function(run, input_signature=signature)
        try:
            # Traced once here (from_function reuses the trace): a GraphDef drops the placeholders' static
            # shapes, which the ops after them need (a Concat's rank, a broadcast), so hand them back.
            concrete = function.get_concrete_function()
            graph = concrete.graph
            output_shapes = [out.shape.as_list() if out.shape.rank is not None else [] for out in concrete.outputs]
            shapes = {out.name: out.shape.as_list() for op in graph.get_operations()
                      if op.name.rsplit("/", 1)[-1].startswith(MARKER_PREFIX) for out in op.outputs}
            proto, _ = tf2onnx.convert.from_function(
                function, input_signature=signature, opset=opset, shape_override=shapes,
                custom_op_handlers={op: (marker_handler, ["Recurrent", sites]) for op in ("PyFunc", "EagerPyFunc")},
                extra_opset=[onnx.helper.make_opsetid(MARKER_DOMAIN, 1)])
        except UnsupportedSourceError:
            raise
        except Exception as exc:  # tf2onnx's own failures name the TF op it could not convert
            raise UnsupportedLayerError(f"tf2onnx cannot convert Keras model {model.name!r}: "
                                        f"{type(exc).__name__}: {str(exc)[:500]}") from exc
    replace_placeholders(proto, sites)
    rewrite_prelu(proto)  # Keras 3's PReLU arrives as Relu/Neg/Mul/Add
    left = loops_left(proto)
    if left:
        raise UnsupportedLayerError(f"Keras model {model.name!r} converted with {', '.join(left)} nodes left (a "
                                    "layer computes a loop that is not one of the recurrent layers we fuse)")
    name_outputs(proto, output_names(model), output_shapes)
    proto.ir_version = IR_VERSION
    proto.producer_name = "modelbridge.converters.keras (tf2onnx " + tf2onnx.__version__ + ")"
    onnx.checker.check_model(proto)
    return proto, sites


def parity_feeds(model: Any, specs: list[InputSpec], *, seed: int = 0, dynamic: int = 3) -> dict[str, np.ndarray]:
    """Random feeds: token ids stay below every Embedding's vocabulary (0, the padding id, included), and
    boolean masks keep at least one real step per sequence (with a non-zero initial state, Keras keeps it
    through an empty sequence where ONNX, given sequence_lens 0, returns zeros)."""
    feeds = parity_check.random_feeds(specs, seed=seed, dynamic=dynamic)
    vocabularies = [int(layer.input_dim) for layer in _all_layers(model) if type(layer).__name__ == "Embedding"]
    for name, array in feeds.items():
        if np.issubdtype(array.dtype, np.integer) and vocabularies:
            feeds[name] = (array % min(vocabularies)).astype(array.dtype)
        elif array.dtype == np.bool_ and array.ndim == 2:
            array[:, 0] |= ~array.any(axis=1)
    return feeds


def _all_layers(model: Any) -> list[Any]:
    found = []
    for layer in getattr(model, "layers", []):
        found.append(layer)
        found.extend(_all_layers(layer))
    return found


def run_keras(model: Any, feeds: dict[str, np.ndarray], specs: list[InputSpec]) -> list[np.ndarray]:
    """The model's outputs on ``feeds``, flattened as the traced function flattened them."""
    import tensorflow as tf

    outputs = model(call_arguments(model, [feeds[spec.name] for spec in specs]), training=False)
    return [np.asarray(out.numpy() if hasattr(out, "numpy") else out) for out in tf.nest.flatten(outputs)]


def annotate(proto: onnx.ModelProto, sites: list[RecurrentSite], flavour: str) -> list[dict[str, Any]]:
    nodes = {node.name: node for node in proto.graph.node}
    return [
        annotate_recurrent_node(proto, nodes[cell.node_name], framework=flavour, layer=site.layer,
                                variables=cell.variables, source_gate_order=cell.source_gate_order,
                                gate_map=cell.gate_map, folded=site.folded, notes=cell.notes)
        for site in sites for cell in site.cells
    ]


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
    specs = input_specs(model, inputs)
    layers = recurrent_layers(model)
    say(f"converting (tf2onnx, {len(layers)} recurrent layer(s) fused by modelbridge)")
    proto, sites = export(model, specs, flavour=flavour, opset=opset)
    annotations = annotate(proto, sites, flavour)
    say("verifying")
    feeds = parity_feeds(model, specs)
    report = parity_check.check(proto, feeds, run_keras(model, feeds, specs), atol=atol, origin="random")
    module = importlib.import_module("tf_keras" if flavour == "tf-keras" else "keras")
    parity_check.set_metadata(proto.metadata_props, SOURCE_KEY, json.dumps({
        "framework": flavour, "version": module.__version__,
        "exporter": "tf2onnx from_function, recurrent layers fused by modelbridge"}))
    return ConversionResult(proto, report, annotations)
