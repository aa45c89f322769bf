"""TensorFlow to ONNX: SavedModel directories, tf.functions, frozen GraphDef .pb, TF1 checkpoints (.meta).

Graphs (frozen .pb, checkpoints, SavedModels written by TF1's builder) are frozen, then every while loop
that computes a stack of TF1 cells is cut out (tf_fuse: cells are recognised by their ops and weights,
in control flow v1 frames and v2 While bodies alike); tf2onnx's ``process_tf_graph`` converts the rest
and one fused ONNX LSTM/GRU/RNN per cell goes where each loop was, wired to its input, sequence
lengths, initial and final states.  Grappler runs only when v2 control flow is left (it turns a TF1
cell's BiasAdd into AddV2).  tf.functions and TF2 SavedModels are frozen by tf2onnx's
``from_function``; the fused nodes tf2onnx makes there are matched to their variables by value
(tf_cells.py).  A Loop or Scan left holding a recurrent cell is refused, naming the cell.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from converters import DEFAULT_OPSET, UnsupportedSourceError, tf_fuse, tf_recurrence
from converters import parity as parity_check
from converters.keras_layers import UnsupportedLayerError
from converters.parity import DEFAULT_ATOL
from converters.result import ConversionResult
from converters.specs import InputSpec
from converters.tf_graph import Loaded, annotate_fused, refuse_loops, rename_io


def _feeds(loaded: Loaded, lengths: set[str]) -> dict[str, np.ndarray]:
    feeds = parity_check.random_feeds(loaded.specs, seed=0, dynamic=3)
    # Sequence lengths must lie in [1, time steps]. A 3-D float input with one static leading dimension has
    # that as its time axis (the batch is the dynamic one); otherwise the shorter leading dimension is safe.
    bounds = []
    for spec in loaded.specs:
        if len(spec.shape) == 3 and feeds[spec.name].dtype.kind == "f":
            static = [dim for dim in spec.shape[:2] if dim is not None]
            bounds.append(static[0] if len(static) == 1 else min(feeds[spec.name].shape[:2]))
    bound = min(bounds, default=1)
    rng = np.random.default_rng(1)
    for name in lengths:
        if name in feeds:
            values = rng.integers(1, bound + 1, size=feeds[name].shape)
            values.flat[0] = bound  # one full-length sequence, the others as they fall
            feeds[name] = values.astype(feeds[name].dtype)
    return feeds


def _graph_to_onnx(loaded: Loaded, *, opset: int) -> tuple[onnx.ModelProto, list[dict[str, Any]], set[str]]:
    """tf2onnx over the graph with its recurrent loops cut out, fused nodes spliced back (tf_fuse)."""
    import tensorflow as tf
    from tensorflow.python.util import deprecation
    from tf2onnx import optimizer, tf_loader, tfonnx

    with deprecation.silence():  # extract_sub_graph's notice is about TF1 APIs we use on purpose
        found = tf_fuse.cut(loaded.graph_def, loaded.output_names)
    stepped = tf_recurrence.unrolled(found.graph_def)
    if stepped:
        raise UnsupportedLayerError(
            f"TensorFlow recurrent layer {', '.join(map(repr, stepped))} is computed step by step in the graph "
            "(static_rnn, or a Python loop over the cell), which would convert to an unrolled model with no fused "
            "LSTM/GRU/RNN. Build it with tf.compat.v1.nn.dynamic_rnn (or bidirectional_dynamic_rnn) instead.")
    graph_def = found.graph_def
    ops = {node.op for node in graph_def.node}
    if ops & {"While", "StatelessWhile", "PartitionedCall", "StatefulPartitionedCall"} \
            or any(op.startswith("TensorList") for op in ops):
        # TF2 graphs (control flow v2, TensorList loops, function calls) need grappler before tf2onnx's
        # rewriters; TF1 graphs must skip it (it turns the cells' BiasAdd into AddV2, hiding them).
        with tf.Graph().as_default():  # grappler's meta-graph export needs graph mode
            graph_def = tf_loader.tf_optimize(loaded.input_names + found.placeholders,
                                              loaded.output_names + found.boundary, graph_def)
    # Only shapes the user declared override TF's own (tf2onnx wants -1 for a dynamic dimension).
    overrides = {f"{spec.name}:0": [-1 if dim is None else dim for dim in spec.shape]
                 for spec in loaded.specs if spec.name in loaded.declared} or None
    inputs = loaded.input_names + found.placeholders
    extra = [name for name in found.boundary if name not in inputs and name not in loaded.output_names]
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        onnx_graph = tfonnx.process_tf_graph(graph, input_names=inputs, output_names=loaded.output_names + extra,
                                             opset=opset, shape_override=overrides)
        onnx_graph = optimizer.optimize_graph(onnx_graph)
        model = onnx_graph.make_model(f"converted from {loaded.origin}")
    made = tf_fuse.splice(model, found)
    tf_fuse.drop_boundary(model, found, loaded.output_names)
    made = tf_fuse.fold_bidirectional(model, made)
    model.ir_version = max(model.ir_version, 10)
    annotations = tf_fuse.annotate(model, made)
    for entry in annotations:
        loaded.matched.update(entry["source"]["variables"].values())
    return model, annotations, found.length_inputs


def _run_graph(loaded: Loaded, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(loaded.graph_def, name="")
        with tf.compat.v1.Session(graph=graph) as session:
            values = session.run(loaded.output_names, {f"{name}:0": value for name, value in feeds.items()})
    return [np.asarray(value) for value in values]


def convert(
    source: Any,
    *,
    inputs: list[InputSpec] | None = None,
    outputs: list[str] | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    progress: Callable[[str], None] | None = None,
) -> ConversionResult:
    """Convert a TensorFlow source, proven by a parity check against TensorFlow on the same inputs.

    ``outputs`` names the output tensors of a graph source (.pb, .meta) when its terminal nodes are
    ambiguous (a training graph); a tf.function needs an input_signature or ``inputs``.
    """
    from converters import tf_sources

    say = progress or (lambda _stage: None)
    keras_model = tf_sources.saved_keras_model(source)
    if keras_model is not None:
        # tf2onnx leaves a SavedModel's Keras GRU/SimpleRNN as Loop; the Keras converter fuses every one.
        say("loading: SavedModel written by tf-keras, converting it as a Keras model")
        from converters import keras as keras_converter

        return keras_converter.convert(keras_model, inputs=inputs, opset=opset, atol=atol, progress=progress)
    say("loading")
    loaded = tf_sources.load(source, inputs=inputs, outputs=outputs)
    say("converting")
    annotations: list[dict[str, Any]] = []
    lengths: set[str] = set()
    # tf2onnx's GRU rewriter print()s weight shapes; keep stdout for the caller's own output.
    with contextlib.redirect_stdout(io.StringIO()):
        if loaded.function is not None:
            proto = tf_sources.function_to_onnx(loaded, opset=opset)
        else:
            proto, annotations, lengths = _graph_to_onnx(loaded, opset=opset)
    rename_io(proto)
    proto.ir_version = max(proto.ir_version, 10)  # node-level metadata_props (the annotations) need IR 10
    annotations = annotate_fused(proto, loaded)  # also the nodes tf2onnx fused itself (tf.functions)
    refuse_loops(proto, loaded)
    say("verifying")
    feeds = _feeds(loaded, lengths)
    if loaded.function is not None:
        expected = tf_sources.run_function(loaded, feeds)
    else:
        expected = _run_graph(loaded, feeds)
    report = parity_check.check(proto, feeds, expected, atol=atol, origin="random")
    import tensorflow as tf
    import tf2onnx

    how = "from_function" if loaded.function is not None else "process_tf_graph; recurrent loops fused by modelbridge"
    parity_check.set_metadata(proto.metadata_props, "modelbridge.source", json.dumps({
        "framework": "tensorflow", "version": tf.__version__, "source": loaded.origin,
        "exporter": f"tf2onnx {tf2onnx.__version__} ({how})"}))
    return ConversionResult(proto, report, annotations)


__all__ = ["UnsupportedLayerError", "UnsupportedSourceError", "convert"]
