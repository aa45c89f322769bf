"""Keras recurrent weights in ONNX form (numpy only; no framework import).

Keras stores LSTM gates as i, f, c, o and GRU gates as z, r, h in column blocks of ``kernel`` [I, nH]
and ``recurrent_kernel`` [H, nH]; ONNX wants row blocks in i, o, f, c (LSTM) or z, r, h (GRU) order
(../shared/docs/GATES.md).  Each function returns one direction's W [nH, I], R [nH, H], B [2nH].
"""

from __future__ import annotations

import numpy as np

KERAS_LSTM_ORDER = ("i", "f", "c", "o")
KERAS_GRU_ORDER = ("z", "r", "h")
SIMPLE_RNN_ORDER = ("h",)
LSTM_GATE_MAP = {"i": "i", "f": "f", "c": "c", "o": "o"}
GRU_GATE_MAP = {"z": "z", "r": "r", "h": "h"}
# SimpleRNN has no gates: its single block (the new hidden state) is ONNX RNN's only block "i".
SIMPLE_RNN_GATE_MAP = {"h": "i"}

# Position of each ONNX LSTM block (i, o, f, c) in Keras's i, f, c, o column order.
_LSTM_TO_ONNX = (0, 3, 1, 2)


def blocks(matrix: np.ndarray, count: int, order: tuple[int, ...]) -> np.ndarray:
    """Reorder the ``count`` equal column blocks of ``matrix`` (last axis) into ``order``."""
    parts = np.split(matrix, count, axis=-1)
    return np.concatenate([parts[k] for k in order], axis=-1)


def lstm_weights(
    kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hidden = recurrent.shape[0]
    w = blocks(kernel, 4, _LSTM_TO_ONNX).T
    r = blocks(recurrent, 4, _LSTM_TO_ONNX).T
    wb = np.zeros(4 * hidden, np.float32) if bias is None else blocks(bias, 4, _LSTM_TO_ONNX)
    return w, r, np.concatenate([wb, np.zeros(4 * hidden, np.float32)])


def gru_weights(
    kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray | None, *, reset_after: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keras z, r, h is already ONNX's order; reset_after=True has a [2, 3H] bias (input, recurrent)."""
    hidden = recurrent.shape[0]
    if bias is None:
        b = np.zeros(6 * hidden, np.float32)
    elif reset_after:
        b = np.concatenate([bias[0], bias[1]])
    else:
        b = np.concatenate([bias, np.zeros(3 * hidden, np.float32)])
    return kernel.T, recurrent.T, b


def simple_rnn_weights(
    kernel: np.ndarray, recurrent: np.ndarray, bias: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    hidden = recurrent.shape[0]
    wb = np.zeros(hidden, np.float32) if bias is None else bias
    return kernel.T, recurrent.T, np.concatenate([wb, np.zeros(hidden, np.float32)])
