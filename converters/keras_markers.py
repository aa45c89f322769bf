"""Trace a Keras model with every recurrent layer call replaced by a placeholder op.

While ``placeholders`` is active, each LSTM / GRU / SimpleRNN / RNN(cell of those) / Bidirectional
layer of the model answers ``call`` with one ``tf.numpy_function`` named ``mb_recurrent_<k>``: its
inputs are the layer's sequence, mask and initial states, its outputs have the layer's output shapes.
tf2onnx converts everything around it; ``marker_handler`` turns it into a node of MARKER_DOMAIN that
keras.py replaces with keras_fuse's fused subgraph.  The function is never run.  Keras 3 and tf-keras
both look ``call`` up on the instance at call time, so setting it there (and deleting it after) swaps
the layer for the trace only.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import numpy as np

from converters.keras_fuse import FusedCell, RecurrentSite
from converters.keras_layers import UnsupportedLayerError, recurrent_activations, value, variable_name
from converters.keras_recurrent import (
    GRU_GATE_MAP,
    KERAS_GRU_ORDER,
    KERAS_LSTM_ORDER,
    LSTM_GATE_MAP,
    SIMPLE_RNN_GATE_MAP,
    SIMPLE_RNN_ORDER,
    gru_weights,
    lstm_weights,
    simple_rnn_weights,
)

MARKER_DOMAIN = "modelbridge.keras_recurrent"
MARKER_PREFIX = "mb_recurrent_"
_CELLS = {"LSTMCell": "LSTM", "GRUCell": "GRU", "SimpleRNNCell": "RNN"}
_GATES = {"LSTM": (KERAS_LSTM_ORDER, LSTM_GATE_MAP), "GRU": (KERAS_GRU_ORDER, GRU_GATE_MAP),
          "RNN": (SIMPLE_RNN_ORDER, SIMPLE_RNN_GATE_MAP)}
# Recurrent layers no ONNX op computes: refused by name rather than left to tf2onnx as a Loop.
_UNFUSABLE = {"ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D"}


def _class_names(obj: Any) -> list[str]:
    return [klass.__name__ for klass in type(obj).__mro__]


def is_recurrent(layer: Any) -> bool:
    names = _class_names(layer)
    return "Bidirectional" in names or "RNN" in names or bool(_UNFUSABLE & set(names))


def recurrent_layers(model: Any) -> list[Any]:
    """Every recurrent layer of ``model``, looking inside nested models and TimeDistributed."""
    found: list[Any] = []
    for layer in getattr(model, "layers", []):
        if is_recurrent(layer):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(recurrent_layers(layer))
        elif hasattr(layer, "layer") and is_recurrent(layer.layer):
            found.append(layer.layer)
    return found


def _cells_of(layer: Any) -> list[tuple[str, Any]]:
    """(ONNX op, Keras cell) per fused node the layer becomes: one, or one per cell of StackedRNNCells."""
    if _UNFUSABLE & set(_class_names(layer)):
        raise UnsupportedLayerError(f"layer {layer.name!r} ({type(layer).__name__}): convolutional recurrent "
                                    "layers have no fused ONNX op")
    cell: Any = getattr(layer, "cell", None)
    cells = list(cell.cells) if "StackedRNNCells" in _class_names(cell) else [cell]
    found = []
    for each in cells:
        op = next((_CELLS[name] for name in _class_names(each) if name in _CELLS), None)
        if op is None:
            raise UnsupportedLayerError(f"layer {layer.name!r}: RNN over a {type(each).__name__} cell has no fused "
                                        "ONNX op (only LSTMCell, GRUCell and SimpleRNNCell cells, alone or stacked, "
                                        "can be fused)")
        found.append((op, each))
    return found


def _check_core(layer: Any) -> list[tuple[str, Any]]:
    cells = _cells_of(layer)
    kind = type(layer).__name__
    if getattr(layer, "stateful", False):
        raise UnsupportedLayerError(f"layer {layer.name!r} ({kind}): stateful=True keeps state in variables between "
                                    "calls; convert the stateful=False model (modelbridge's stateful step form "
                                    "carries the state instead)")
    dtype = str(getattr(layer, "compute_dtype", None) or getattr(layer, "dtype", "float32"))
    if dtype not in ("float32", "None"):
        raise UnsupportedLayerError(f"layer {layer.name!r} ({kind}) computes in {dtype}; only float32 recurrent "
                                    "layers are converted")
    if getattr(layer, "time_major", False):
        raise UnsupportedLayerError(f"layer {layer.name!r} ({kind}): time_major=True is not supported")
    return cells


def _direction(cell: Any, op: str, to_tensor: Callable[[np.ndarray], Any], where: str
               ) -> tuple[tuple[np.ndarray, ...], dict[str, str], tuple[list[str], list[float], list[float]]]:
    kernel, recurrent = value(cell.kernel), value(cell.recurrent_kernel)
    bias = value(cell.bias) if cell.use_bias else None
    names = {"kernel": variable_name(cell.kernel), "recurrent_kernel": variable_name(cell.recurrent_kernel)}
    if cell.use_bias:
        names["bias"] = variable_name(cell.bias)
    if op == "LSTM":
        weights = lstm_weights(kernel, recurrent, bias)
    elif op == "GRU":
        weights = gru_weights(kernel, recurrent, bias, reset_after=bool(cell.reset_after))
    else:
        weights = simple_rnn_weights(kernel, recurrent, bias)
    return weights, names, recurrent_activations(cell, op, to_tensor, where)


def _fused_cell(layer: Any, op: str, cells: list[Any], to_tensor: Callable[[np.ndarray], Any], note: str
                ) -> FusedCell:
    """One node's weights from one Keras cell per direction (forward first)."""
    weights, variables, activations, alphas, betas = [], {}, [], [], []
    for prefix, cell in zip(["forward.", "reverse."] if len(cells) == 2 else [""], cells, strict=True):
        direction, names, (acts, alpha, beta) = _direction(cell, op, to_tensor, layer.name)
        weights.append(direction)
        variables.update({prefix + key: name for key, name in names.items()})
        activations += acts
        alphas += alpha
        betas += beta
    attributes: dict[str, Any] = {"activations": activations}
    if alphas:
        attributes["activation_alpha"] = alphas
    if betas:
        attributes["activation_beta"] = betas
    notes = f"Keras {type(layer).__name__} built from its weights{note}"
    if op == "GRU":
        reset_after = bool(cells[0].reset_after)
        attributes["linear_before_reset"] = int(reset_after)
        notes += f" (reset_after={reset_after})"
    order, gate_map = _GATES[op]
    stacked = tuple(np.stack([w[k] for w in weights]) for k in range(3))
    return FusedCell(op=op, weights=(stacked[0], stacked[1], stacked[2]), attributes=attributes,
                     variables=variables, source_gate_order=order, gate_map=dict(gate_map), notes=notes)


def describe(layer: Any, to_tensor: Callable[[np.ndarray], Any]) -> RecurrentSite:
    """Everything about ``layer`` that does not depend on how it is called."""
    bidirectional = "Bidirectional" in _class_names(layer)
    parts = [layer.forward_layer, layer.backward_layer] if bidirectional else [layer]
    per_part = [_check_core(part) for part in parts]
    if bidirectional:
        forward, backward = parts
        if len(per_part[0]) != 1 or len(per_part[1]) != 1:
            raise UnsupportedLayerError(f"layer {layer.name!r} (Bidirectional): stacked cells in a Bidirectional "
                                        "wrapper are not supported (stack Bidirectional layers instead)")
        if per_part[0][0][0] != per_part[1][0][0]:
            raise UnsupportedLayerError(f"layer {layer.name!r} (Bidirectional): its directions are different layer "
                                        f"types ({type(forward).__name__} and {type(backward).__name__}); one ONNX "
                                        "node runs both directions of one op")
        if forward.go_backwards or not backward.go_backwards:
            raise UnsupportedLayerError(f"layer {layer.name!r} (Bidirectional): its forward layer must read forwards "
                                        "and its backward layer backwards")
        if forward.cell.units != backward.cell.units or forward.return_sequences != backward.return_sequences:
            raise UnsupportedLayerError(f"layer {layer.name!r} (Bidirectional): its directions differ in units or "
                                        "return_sequences")
        cells = [_fused_cell(layer, per_part[0][0][0], [forward.cell, backward.cell], to_tensor, "")]
    else:
        count = len(per_part[0])
        cells = [_fused_cell(layer, op, [cell], to_tensor, f", stacked cell {k} of {count}" if count > 1 else "")
                 for k, (op, cell) in enumerate(per_part[0])]
    core = parts[0]
    return RecurrentSite(
        index=-1, layer=layer.name, cells=cells,
        bidirectional=bidirectional, go_backwards=bool(core.go_backwards) and not bidirectional,
        return_sequences=bool(core.return_sequences), return_state=bool(layer.return_state),
        merge_mode=layer.merge_mode if bidirectional else None,
        zero_output_for_mask=bool(getattr(core, "zero_output_for_mask", False)))


def _unpack_call(layer: Any, signature: inspect.Signature, args: tuple[Any, ...], kwargs: dict[str, Any]
                 ) -> tuple[Any, Any, list[Any]]:
    arguments = signature.bind(*args, **kwargs).arguments
    sequence = arguments[next(iter(signature.parameters))]
    initial = arguments.get("initial_state")
    mask = arguments.get("mask")
    if arguments.get("constants") is not None:
        raise UnsupportedLayerError(f"layer {layer.name!r}: RNN constants are not supported")
    if isinstance(sequence, (list, tuple)):  # tf-keras hands [sequence, *initial states] to call
        sequence, extra = sequence[0], list(sequence[1:])
        initial = initial if initial is not None else (extra or None)
    if isinstance(mask, (list, tuple)):
        mask = mask[0]
    if initial is not None and not isinstance(initial, (list, tuple)):
        initial = [initial]
    import tensorflow as tf

    return sequence, mask, list(tf.nest.flatten(initial)) if initial is not None else []


@contextmanager
def placeholders(model: Any, sites: list[RecurrentSite], *, to_tensor: Callable[[np.ndarray], Any],
                 as_list: bool) -> Iterator[None]:
    """Swap every recurrent layer of ``model`` for a placeholder op; each traced call appends to ``sites``."""
    import tensorflow as tf

    layers = recurrent_layers(model)
    templates = {id(layer): describe(layer, to_tensor) for layer in layers}

    def placeholder_for(layer: Any) -> Callable[..., Any]:
        signature = inspect.signature(layer.call)
        template = templates[id(layer)]

        @tf.autograph.experimental.do_not_convert
        def call(*args: Any, **kwargs: Any) -> Any:
            sequence, mask, initial = _unpack_call(layer, signature, args, kwargs)
            expected = len(template.state_sizes())
            if initial and len(initial) != expected:
                raise UnsupportedLayerError(f"layer {layer.name!r}: {len(initial)} initial states given, it has "
                                            f"{expected}")
            # A shared layer is called more than once: each call gets its own cells (and node names).
            site = replace(template, index=len(sites), has_mask=mask is not None, initial_states=len(initial),
                           cells=[replace(cell) for cell in template.cells])
            sites.append(site)
            feeds = [tf.convert_to_tensor(sequence)]
            if mask is not None:
                feeds.append(tf.cast(mask, tf.bool))
            feeds += [tf.cast(state, tf.float32) for state in initial]
            outs = tf.numpy_function(_never_run, feeds, [tf.float32] * site.output_count(), stateful=True,
                                     name=f"{MARKER_PREFIX}{site.index}")
            for out, shape in zip(outs, output_shapes(site, feeds[0].shape[0], feeds[0].shape[1]), strict=True):
                out.set_shape(shape)
            return _structure(site, list(outs), as_list=as_list)

        return call

    swapped = layers + [wrapper for wrapper in time_distributed(model) if wrapper.layer not in layers]
    try:
        for layer in swapped:
            layer.call = placeholder_for(layer) if layer in layers else _per_step(layer)
        yield
    finally:
        for layer in swapped:
            if "call" in vars(layer):
                del layer.call


def time_distributed(model: Any) -> list[Any]:
    found: list[Any] = []
    for layer in getattr(model, "layers", []):
        if "TimeDistributed" in _class_names(layer) and not is_recurrent(layer.layer) \
                and "mask" not in inspect.signature(layer.layer.call).parameters:
            found.append(layer)
        found.extend(time_distributed(layer))
    return found


def _per_step(wrapper: Any) -> Callable[..., Any]:
    """TimeDistributed as one call on batch*time rows: Keras 3 loops over dynamic time with vectorized_map,
    which exports as an ONNX Loop; the wrapped layer treats rows independently, so folding time into the
    batch computes the same."""
    import tensorflow as tf

    inner = wrapper.layer
    takes_training = "training" in inspect.signature(inner.call).parameters

    @tf.autograph.experimental.do_not_convert
    def call(inputs: Any, training: Any = None, mask: Any = None) -> Any:
        shape = tf.shape(inputs)
        rows = tf.reshape(inputs, tf.concat([[-1], shape[2:]], axis=0))
        rows.set_shape([None, *inputs.shape[2:]])
        out = inner.call(rows, training=training) if takes_training else inner.call(rows)
        result = tf.reshape(out, tf.concat([shape[:2], tf.shape(out)[1:]], axis=0))
        result.set_shape([inputs.shape[0], inputs.shape[1], *out.shape[1:]])
        return result

    return call


def _never_run(*_: Any) -> Any:
    raise RuntimeError("the recurrent placeholder of a modelbridge trace was executed")


def output_shapes(site: RecurrentSite, batch: Any, steps: Any) -> list[list[Any]]:
    """Shapes of the layer's outputs, in call order: the output(s), then the states."""
    hidden = site.hidden
    width = 2 * hidden if site.bidirectional and site.merge_mode == "concat" else hidden
    main = 2 if site.bidirectional and site.merge_mode is None else 1
    shapes = [[batch, steps, width] if site.return_sequences else [batch, width] for _ in range(main)]
    return shapes + ([[batch, size] for size in site.state_sizes()] if site.return_state else [])


def _structure(site: RecurrentSite, outs: list[Any], *, as_list: bool) -> Any:
    """What the layer's ``call`` returns: one tensor, or (Keras 3 tuples, tf-keras lists) outputs then states."""
    if len(outs) == 1:
        return outs[0]
    return list(outs) if as_list else tuple(outs)


def marker_handler(ctx: Any, node: Any, name: str, args: list[Any]) -> Any:
    """tf2onnx custom handler for PyFunc: our placeholders become MARKER_DOMAIN nodes (with the output shapes
    the ops after them need, e.g. a Concat's rank), anything else is refused.  ``args`` is [sites] (tf2onnx's old
    handler API takes the first registered argument, "Recurrent", as the new op type)."""
    found = re.search(rf"{MARKER_PREFIX}(\d+)", node.name)
    if found is None:
        raise UnsupportedLayerError(f"op {node.name!r} runs Python code (tf.numpy_function / tf.py_function), "
                                    "which ONNX cannot hold")
    site: RecurrentSite = args[0][int(found.group(1))]
    sequence = ctx.get_shape(node.input[0]) or [-1, -1, -1]
    for output, shape in zip(node.output, output_shapes(site, sequence[0], sequence[1]), strict=True):
        ctx.set_shape(output, [-1 if dim is None else dim for dim in shape])
    for key in list(node.attr):
        del node.attr[key]
    node.type = "Recurrent"
    node.domain = MARKER_DOMAIN
    node.set_attr("site", site.index)
    return node
