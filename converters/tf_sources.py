"""Read TensorFlow sources into a Loaded (tf_graph.py): functions, SavedModels, frozen .pb, checkpoints.

TF1 checkpoints are restored from their ``.meta`` graph and frozen with
``convert_variables_to_constants``, which keeps each variable's name on its Const node
(``rnn/basic_lstm_cell/kernel``): the annotations quote those names.  Loading a checkpoint needs no
TF1 cell classes, so TF_USE_LEGACY_KERAS matters only to whoever builds such a model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import tensorflow as tf

from converters import UnsupportedSourceError
from converters.specs import InputSpec
from converters.tf_graph import Loaded
from converters.tf_outputs import guess_outputs, plain


def _spec_of(name: str, shape: Any, dtype: Any) -> InputSpec:
    dims = tuple(None if d is None else int(d) for d in tf.TensorShape(shape).as_list())
    return InputSpec(plain(name), dims, tf.as_dtype(dtype).name)


def _describe(spec: InputSpec) -> str:
    dims = ",".join("-1" if dim is None else str(dim) for dim in spec.shape)
    return f"{spec.name}:{dims}:{spec.dtype}"


def _override(specs: list[InputSpec], given: list[InputSpec] | None) -> list[InputSpec]:
    """The graph's inputs with the user's specs applied; a spec that contradicts the graph names what it expects."""
    if not given:
        return specs
    by_name = {plain(spec.name): spec for spec in given}
    expected = ", ".join(_describe(spec) for spec in specs)
    unknown = sorted(set(by_name) - {spec.name for spec in specs})
    if unknown:
        raise UnsupportedSourceError(f"input spec names {unknown} are not inputs of the model "
                                     f"(inputs: {[spec.name for spec in specs]}; it expects {expected})")
    for spec in specs:
        mine = by_name.get(spec.name)
        if mine is None:
            continue
        if np.dtype(mine.dtype) != np.dtype(spec.dtype):
            raise UnsupportedSourceError(f"input {spec.name!r} is {spec.dtype} in the graph, not {mine.dtype} "
                                         f"(--input {_describe(spec)}; the model expects {expected})")
        if spec.shape and (len(mine.shape) != len(spec.shape) or any(
                a is not None and b is not None and a != b for a, b in zip(mine.shape, spec.shape, strict=False))):
            raise UnsupportedSourceError(f"input {spec.name!r} has shape {_describe(spec).split(':')[1]} in the graph "
                                         f"(-1 = any); {_describe(mine).split(':')[1]} does not fit it "
                                         f"(the model expects {expected})")
    return [by_name.get(spec.name, spec) for spec in specs]


def _from_graph_def(graph_def: Any, origin: str, inputs: list[InputSpec] | None,
                    outputs: list[str] | None) -> Loaded:
    nodes = {node.name for node in graph_def.node}
    output_nodes = [plain(name) for name in (outputs or guess_outputs(graph_def))]
    missing = [name for name in output_nodes if name not in nodes]
    if missing:
        raise UnsupportedSourceError(f"{origin}: no node named {missing} in the graph")
    pruned = tf.compat.v1.graph_util.extract_sub_graph(graph_def, output_nodes)
    placeholders = [node for node in pruned.node if node.op == "Placeholder"]
    specs = [_spec_of(node.name, tf.TensorShape(node.attr["shape"].shape), node.attr["dtype"].type)
             for node in placeholders]
    specs = _override(specs, inputs)
    declared = {plain(spec.name) for spec in inputs or []}
    variables = {}
    for node in pruned.node:
        if node.op == "Const" and node.attr["dtype"].type == tf.float32.as_datatype_enum:
            value = tf.make_ndarray(node.attr["value"].tensor)
            if 1 <= value.ndim <= 2:
                variables[node.name] = value
    return Loaded(origin, specs, [f"{spec.name}:0" for spec in specs], [f"{name}:0" for name in output_nodes],
                  graph_def=pruned, variables=variables, op_names=[node.name for node in pruned.node],
                  declared=declared, loop_scopes=_loop_scopes(pruned))


def _loop_scopes(graph_def: Any) -> list[str]:
    """Scopes of the graph's while loops: v1 frames (``rnn/while/while_context``) and v2 While nodes."""
    frames = {node.attr["frame_name"].s.decode() for node in graph_def.node if node.op == "Enter"}
    frames |= {node.name for node in graph_def.node if node.op in ("While", "StatelessWhile")}
    return sorted({re.sub(r"/while(/while_context)?$", "", frame) for frame in frames})


def _checkpoint_prefix(path: Path) -> str:
    if path.is_dir():
        latest = tf.train.latest_checkpoint(str(path))
        if latest is None:
            raise UnsupportedSourceError(f"directory {str(path)!r} holds no TF checkpoint")
        return latest
    if re.search(r"\.data-\d+-of-\d+$", path.name):
        return str(path.with_suffix(""))
    return str(path.with_suffix("")) if path.suffix in (".meta", ".index") else str(path)


def _from_checkpoint(path: Path, inputs: list[InputSpec] | None, outputs: list[str] | None) -> Loaded:
    prefix = _checkpoint_prefix(path)
    meta = Path(prefix + ".meta")
    if not meta.is_file():
        raise UnsupportedSourceError(
            f"checkpoint {prefix!r} has no .meta graph next to it ({meta.name}): a checkpoint holds only variable "
            "values, not the graph that uses them. Supply the .meta file tf.compat.v1.train.Saver().save() writes "
            "beside it (keep write_meta_graph=True), or export the model as a SavedModel or a frozen GraphDef (.pb)")
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        saver = tf.compat.v1.train.import_meta_graph(str(meta), clear_devices=True)
        if saver is None:
            raise UnsupportedSourceError(f"{meta.name} holds no variables to restore")
        saver.restore(session, prefix)
        graph_def = graph.as_graph_def()
        output_nodes = [plain(name) for name in (outputs or guess_outputs(graph_def))]
        frozen = tf.compat.v1.graph_util.convert_variables_to_constants(session, graph_def, output_nodes)
    return _from_graph_def(frozen, f"checkpoint {Path(prefix).name}", inputs, output_nodes)


def _from_function(function: Any, origin: str, inputs: list[InputSpec] | None) -> Loaded:
    signature = getattr(function, "input_signature", None)
    if signature:
        specs = [_spec_of(spec.name or f"input_{k}", spec.shape, spec.dtype) for k, spec in enumerate(signature)]
        specs = _override(specs, inputs)
    elif inputs:
        specs = list(inputs)
    else:
        raise UnsupportedSourceError("a tf.function needs an input_signature or input specs (--input NAME:SHAPE)")
    tensor_specs = [tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype), name=spec.name) for spec in specs]
    wrapped = tf.function(lambda *args: function(*args), input_signature=tensor_specs)
    concrete = wrapped.get_concrete_function()
    variables = {plain(v.name): np.asarray(v.numpy()) for v in concrete.variables}
    return Loaded(origin, specs, [f"{spec.name}:0" for spec in specs], [], function=wrapped,
                  variables={k: v for k, v in variables.items() if 1 <= v.ndim <= 2})


def _tf1_meta_graph(path: Path) -> Any | None:
    """The MetaGraphDef of a SavedModel written by TF1's builder (it has no object graph), else None."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
    except Exception as exc:
        raise UnsupportedSourceError(f"{path.name!r}: saved_model.pb does not parse: {exc}") from exc
    graphs = list(proto.meta_graphs)
    if not graphs or any(len(graph.object_graph_def.nodes) for graph in graphs):
        return None
    return next((graph for graph in graphs if "serve" in graph.meta_info_def.tags), graphs[0])


def _from_tf1_saved_model(path: Path, meta_graph: Any, inputs: list[InputSpec] | None,
                          outputs: list[str] | None) -> Loaded:
    """Restore into a session and freeze, like a checkpoint: the graph path fuses its loops (tf_fuse)."""
    signatures = meta_graph.signature_def
    key = "serving_default" if "serving_default" in signatures else min(signatures, default=None)
    graph = tf.Graph()
    with graph.as_default(), tf.compat.v1.Session(graph=graph) as session:
        tf.compat.v1.saved_model.loader.load(session, list(meta_graph.meta_info_def.tags), str(path))
        graph_def = graph.as_graph_def()
        if outputs is None and key is not None:
            outputs = [info.name for _, info in sorted(signatures[key].outputs.items())]
        output_nodes = [plain(name) for name in (outputs or guess_outputs(graph_def))]
        frozen = tf.compat.v1.graph_util.convert_variables_to_constants(session, graph_def, output_nodes)
    where = f" [{key}]" if key is not None else ""
    return _from_graph_def(frozen, f"SavedModel {path.name}{where}", inputs, output_nodes)


def _from_saved_model(path: Path, inputs: list[InputSpec] | None, outputs: list[str] | None = None) -> Loaded:
    meta_graph = _tf1_meta_graph(path)
    if meta_graph is not None:
        return _from_tf1_saved_model(path, meta_graph, inputs, outputs)
    loaded = tf.saved_model.load(str(path))
    signatures = dict(loaded.signatures)
    if not signatures:
        raise UnsupportedSourceError(f"SavedModel {path.name!r} has no signatures to convert")
    key = "serving_default" if "serving_default" in signatures else min(signatures)
    signature = signatures[key]
    _, kwargs = signature.structured_input_signature
    names = sorted(kwargs)
    specs = _override([_spec_of(name, kwargs[name].shape, kwargs[name].dtype) for name in names], inputs)
    tensor_specs = [tf.TensorSpec(spec.shape, tf.as_dtype(spec.dtype), name=spec.name) for spec in specs]

    def call(*args: Any) -> Any:
        return signature(**dict(zip(names, args, strict=True)))

    function = tf.function(call, input_signature=tensor_specs)
    result = _from_function(function, f"SavedModel {path.name} [{key}]", inputs)
    result.variables.update({plain(v.name): np.asarray(v.numpy()) for v in signature.variables
                             if 1 <= len(v.shape) <= 2})
    result.keepalive = loaded  # its functions die with it
    return result


def saved_keras_model(source: Any) -> Any | None:
    """The tf-keras model behind a SavedModel directory that tf-keras wrote (it leaves keras_metadata.pb)."""
    if not isinstance(source, (str, Path)):
        return None
    path = Path(source)
    directory = path.parent if path.name == "saved_model.pb" else path
    if not (directory / "keras_metadata.pb").is_file():
        return None
    import tf_keras

    return tf_keras.models.load_model(str(directory), compile=False)


def load(source: Any, *, inputs: list[InputSpec] | None, outputs: list[str] | None) -> Loaded:
    """Read a TensorFlow source; the TF1 APIs this uses (and means to) do not print deprecation notices."""
    from tensorflow.python.util import deprecation

    with deprecation.silence():
        return _load(source, inputs=inputs, outputs=outputs)


def _load(source: Any, *, inputs: list[InputSpec] | None, outputs: list[str] | None) -> Loaded:
    if not isinstance(source, (str, Path)):
        if hasattr(source, "get_concrete_function"):
            return _from_function(source, getattr(source, "__name__", "tf.function"), inputs)
        raise UnsupportedSourceError(f"a {type(source).__qualname__} is not a TensorFlow source "
                                     "(tf.function, SavedModel, .pb, .meta)")
    path = Path(source)
    if not path.exists():
        if Path(f"{path}.index").is_file():  # a checkpoint prefix ("model" for model.index, model.data-*)
            return _from_checkpoint(path, inputs, outputs)
        raise UnsupportedSourceError(f"TensorFlow source {str(path)!r} does not exist")
    if path.is_dir() and (path / "saved_model.pb").exists():
        return _from_saved_model(path, inputs, outputs)
    if path.name == "saved_model.pb":
        return _from_saved_model(path.parent, inputs, outputs)
    if path.name == "checkpoint" and path.is_file():  # the index file a Saver keeps beside its checkpoints
        return _from_checkpoint(path.parent, inputs, outputs)
    if path.is_dir() or path.suffix in (".meta", ".index") or re.search(r"\.data-\d+-of-\d+$", path.name):
        return _from_checkpoint(path, inputs, outputs)
    if path.suffix in (".pb", ".pbtxt"):
        graph_def = tf.compat.v1.GraphDef()
        try:
            if path.suffix == ".pbtxt":
                from google.protobuf import text_format

                text_format.Parse(path.read_text(), graph_def)
            else:
                graph_def.ParseFromString(path.read_bytes())
        except Exception as exc:
            kind = "text" if path.suffix == ".pbtxt" else "binary"
            raise UnsupportedSourceError(f"{path.name!r} is not a {kind} GraphDef: {exc}") from exc
        return _from_graph_def(graph_def, f"frozen graph {path.name}", inputs, outputs)
    raise UnsupportedSourceError(f"{path.name!r}: not a SavedModel directory, frozen .pb or TF1 checkpoint (.meta)")


def function_to_onnx(loaded: Loaded, *, opset: int) -> onnx.ModelProto:
    import tf2onnx

    signature = loaded.function.input_signature
    proto, _ = tf2onnx.convert.from_function(loaded.function, input_signature=signature, opset=opset)
    return proto


def run_function(loaded: Loaded, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    out = loaded.function(*[tf.constant(feeds[spec.name]) for spec in loaded.specs])
    return [np.asarray(value) for value in tf.nest.flatten(out)]
