"""TensorFlow to ONNX: SavedModel directories, tf.functions, frozen GraphDef .pb, TF1 checkpoints (.meta).

Graphs (frozen .pb, checkpoints) go through tf2onnx's ``process_tf_graph`` + ``optimize_graph``
WITHOUT grappler: grappler turns the TF1 cells' BiasAdd into AddV2 and tf2onnx's LSTM rewriter then
no longer recognises the cell, leaving a Scan (seen with TF 2.21 + tf2onnx 1.17).  Functions and
SavedModels are frozen by tf2onnx's ``tf_loader.from_function``.  Every fused node is then matched to
the source variables it came from (tf_cells.py) and annotated; a Loop or Scan left holding a
recurrent cell is refused, naming the cell, because ONNX consumers need the fused op.
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx

from converters import DEFAULT_OPSET, UnsupportedSourceError
from converters import parity as parity_check
from converters.keras_layers import UnsupportedLayerError
from converters.parity import DEFAULT_ATOL
from converters.result import ConversionResult
from converters.specs import InputSpec
from converters.tf_graph import Loaded, annotate_fused, recurrent_loops, refuse_loops, rename_io
from converters.tf_rebuild import rebuild_scans, scan_obstacle


def _feeds(loaded: Loaded) -> dict[str, np.ndarray]:
    return parity_check.random_feeds(loaded.specs, seed=0, dynamic=3)


def _graph_to_onnx(loaded: Loaded, *, opset: int) -> onnx.ModelProto:
    import tensorflow as tf
    from tf2onnx import optimizer, tf_loader, tfonnx

    graph_def = loaded.graph_def
    ops = {node.op for node in graph_def.node}
    if ops & {"While", "StatelessWhile", "PartitionedCall", "StatefulPartitionedCall"} \
            or any(op.startswith("TensorList") for op in ops):
        # TF2 graphs (control flow v2, TensorList loops, function calls) need grappler before tf2onnx's
        # rewriters; TF1 graphs must skip it (it turns the cells' BiasAdd into AddV2, hiding them).
        with tf.Graph().as_default():  # grappler's meta-graph export needs graph mode
            graph_def = tf_loader.tf_optimize(loaded.input_names, loaded.output_names, graph_def)
    # Only shapes the user declared override TF's own (tf2onnx wants -1 for a dynamic dimension).
    overrides = {f"{spec.name}:0": [-1 if dim is None else dim for dim in spec.shape]
                 for spec in loaded.specs if spec.name in loaded.declared} or None
    with tf.Graph().as_default() as graph:
        tf.import_graph_def(graph_def, name="")
        onnx_graph = tfonnx.process_tf_graph(graph, input_names=loaded.input_names,
                                             output_names=loaded.output_names, opset=opset,
                                             shape_override=overrides)
        onnx_graph = optimizer.optimize_graph(onnx_graph)
        return onnx_graph.make_model(f"converted from {loaded.origin}")


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
    # tf2onnx's GRU rewriter print()s weight shapes; keep stdout for the caller's own output.
    with contextlib.redirect_stdout(io.StringIO()):
        if loaded.function is not None:
            proto = tf_sources.function_to_onnx(loaded, opset=opset)
        else:
            proto = _graph_to_onnx(loaded, opset=opset)
    rename_io(proto)
    proto.ir_version = max(proto.ir_version, 10)  # node-level metadata_props (the annotations) need IR 10
    annotations = annotate_fused(proto, loaded)
    rebuilt = rebuild_scans(proto, loaded) if loaded.function is None else []
    if rebuilt:
        say(f"converting: rebuilt {', '.join(rebuilt)} from their variables as fused nodes")
        annotations = annotate_fused(proto, loaded)
    loops = recurrent_loops(proto)
    obstacle = scan_obstacle(proto, loops[0]) if len(loops) == 1 and loops[0].op_type == "Scan" else None
    refuse_loops(proto, loaded, obstacle=obstacle)
    say("verifying")
    feeds = _feeds(loaded)
    if loaded.function is not None:
        expected = tf_sources.run_function(loaded, feeds)
    else:
        expected = _run_graph(loaded, feeds)
    report = parity_check.check(proto, feeds, expected, atol=atol, origin="random")
    import tensorflow as tf
    import tf2onnx

    parity_check.set_metadata(proto.metadata_props, "modelbridge.source", json.dumps({
        "framework": "tensorflow", "version": tf.__version__, "source": loaded.origin,
        "exporter": f"tf2onnx {tf2onnx.__version__} (" + ("from_function" if loaded.function is not None
                                                          else "process_tf_graph, no grappler") + ")"}))
    return ConversionResult(proto, report, annotations)


__all__ = ["UnsupportedLayerError", "UnsupportedSourceError", "convert"]
