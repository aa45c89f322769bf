"""Find which source variables a fused ONNX recurrent node was built from (numpy only).

tf2onnx's rewriters fuse TF1 cells (BasicLSTMCell, LSTMCell, GRUCell, BasicRNNCell) and Keras LSTMs into
ONNX LSTM/GRU/RNN nodes but do not say which variables went where.  We recompute each candidate
layout from the source variables and compare it with the node's W and R: a match both names the layer
and proves the gate mapping; for TF1 LSTMs the bias difference on the f rows is the folded forget_bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from converters.keras_recurrent import (
    GRU_GATE_MAP,
    KERAS_GRU_ORDER,
    KERAS_LSTM_ORDER,
    LSTM_GATE_MAP,
    SIMPLE_RNN_GATE_MAP,
    SIMPLE_RNN_ORDER,
    blocks,
    gru_weights,
    lstm_weights,
    simple_rnn_weights,
)
from converters.tf_cell_ops import (
    TF1_GRU_GATE_MAP,
    TF1_GRU_ORDER,
    TF1_LSTM_GATE_MAP,
    TF1_LSTM_ORDER,
    layer_of,
)

_TF1_LSTM_TO_ONNX = (0, 3, 2, 1)  # ONNX i, o, f, c taken from TF's i, j, f, o column blocks
_ATOL = 1e-6


@dataclass
class CellMatch:
    layer: str
    variables: dict[str, str]
    source_gate_order: tuple[str, ...]
    gate_map: dict[str, str]
    folded: dict[str, float] = field(default_factory=dict)
    notes: str = ""


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, atol=_ATOL, rtol=0))


def _tf1_split(kernel: np.ndarray, input_size: int) -> tuple[np.ndarray, np.ndarray]:
    return kernel[:input_size], kernel[input_size:]


def _match_tf1_lstm(w: np.ndarray, r: np.ndarray, b: np.ndarray, candidates: dict[str, np.ndarray],
                    hidden: int) -> CellMatch | None:
    size = w.shape[1]
    for name, kernel in candidates.items():
        if kernel.shape != (size + hidden, 4 * hidden):
            continue
        kx, kh = _tf1_split(kernel, size)
        if not (_same(blocks(kx, 4, _TF1_LSTM_TO_ONNX).T, w) and _same(blocks(kh, 4, _TF1_LSTM_TO_ONNX).T, r)):
            continue
        total = b[: 4 * hidden] + b[4 * hidden:]
        for bias_name, bias in candidates.items():
            if bias.shape != (4 * hidden,):
                continue
            diff = total - blocks(bias, 4, _TF1_LSTM_TO_ONNX)
            f_rows = diff[2 * hidden: 3 * hidden]
            others = np.concatenate([diff[: 2 * hidden], diff[3 * hidden:]])
            if np.abs(others).max() <= _ATOL and np.ptp(f_rows) <= _ATOL:
                forget = round(float(f_rows.mean()), 6)
                return CellMatch(layer_of(name, bias_name), {"kernel": name, "bias": bias_name}, TF1_LSTM_ORDER,
                                 dict(TF1_LSTM_GATE_MAP), {"forget_bias": forget},
                                 "TF1 LSTM cell: W/R split from kernel rows [:I] and [I:]; "
                                 "forget_bias folded into the f rows of Wb")
        return CellMatch(layer_of(name), {"kernel": name}, TF1_LSTM_ORDER, dict(TF1_LSTM_GATE_MAP), {},
                         "TF1 LSTM cell: kernel matched, bias variable not identified")
    return None


def _match_tf1_gru(w: np.ndarray, r: np.ndarray, b: np.ndarray, candidates: dict[str, np.ndarray],
                   hidden: int) -> CellMatch | None:
    size = w.shape[1]
    gates = {n: k for n, k in candidates.items() if k.shape == (size + hidden, 2 * hidden)}
    cands = {n: k for n, k in candidates.items() if k.shape == (size + hidden, hidden)}
    for gname, gkernel in gates.items():
        for cname, ckernel in cands.items():
            # GRUCell: r, u = split(gates, 2); ONNX wants z (= u), r, h (= candidate).
            full = np.concatenate([gkernel[:, hidden:], gkernel[:, :hidden], ckernel], axis=1)
            kx, kh = _tf1_split(full, size)
            if _same(kx.T, w) and _same(kh.T, r):
                variables = {"gates/kernel": gname, "candidate/kernel": cname}
                total = b[: 3 * hidden] + b[3 * hidden:]
                for bname, gbias in candidates.items():
                    if gbias.shape == (2 * hidden,) and _same(np.concatenate([gbias[hidden:], gbias[:hidden]]),
                                                              total[: 2 * hidden]):
                        variables["gates/bias"] = bname
                for bname, cbias in candidates.items():
                    if cbias.shape == (hidden,) and _same(cbias, total[2 * hidden:]) and bname.endswith("bias"):
                        variables["candidate/bias"] = bname
                return CellMatch(layer_of(gname, cname), variables, TF1_GRU_ORDER, dict(TF1_GRU_GATE_MAP), {},
                                 "TF1 GRUCell: gates/kernel holds r then u; linear_before_reset=0")
    return None


def _keras_bias(op: str, bias: np.ndarray, hidden: int) -> np.ndarray:
    """A Keras bias in ONNX B form ([Wb, Rb]); bias.size == 0 never matches a real B."""
    if op == "LSTM":
        return np.concatenate([blocks(bias, 4, (0, 3, 1, 2)), np.zeros(4 * hidden, np.float32)])
    if op == "GRU":
        zeros = np.zeros((hidden, 3 * hidden), np.float32)
        return gru_weights(zeros, zeros, bias, reset_after=bias.ndim == 2)[2]
    return np.concatenate([bias, np.zeros(hidden, np.float32)])


def _match_keras(op: str, w: np.ndarray, r: np.ndarray, b: np.ndarray, candidates: dict[str, np.ndarray],
                 hidden: int) -> CellMatch | None:
    size, count = w.shape[1], {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    kernels = {n: k for n, k in candidates.items() if k.shape == (size, count * hidden)}
    recurrents = {n: k for n, k in candidates.items() if k.shape == (hidden, count * hidden)}
    order: tuple[str, ...]
    for kname, kernel in kernels.items():
        for rname, recurrent in recurrents.items():
            if op == "LSTM":
                ew, er, _ = lstm_weights(kernel, recurrent, None)
                order, gate_map = KERAS_LSTM_ORDER, LSTM_GATE_MAP
            elif op == "GRU":
                ew, er, _ = gru_weights(kernel, recurrent, None, reset_after=True)
                order, gate_map = KERAS_GRU_ORDER, GRU_GATE_MAP
            else:
                ew, er, _ = simple_rnn_weights(kernel, recurrent, None)
                order, gate_map = SIMPLE_RNN_ORDER, SIMPLE_RNN_GATE_MAP
            if _same(ew, w) and _same(er, r) and kname != rname:
                variables = {"kernel": kname, "recurrent_kernel": rname}
                for bname, bias in candidates.items():
                    sized = (bias.ndim == 1 and bias.size == b.size // 2) or (op == "GRU" and bias.shape == (2, b.size // 2))
                    if sized and _same(_keras_bias(op, bias, hidden), b):
                        variables["bias"] = bname
                        break
                return CellMatch(layer_of(kname, rname), variables, order, dict(gate_map), {},
                                 "Keras layer fused by tf2onnx")
    return None


def _match_tf1_rnn(w: np.ndarray, r: np.ndarray, candidates: dict[str, np.ndarray],
                   hidden: int) -> CellMatch | None:
    size = w.shape[1]
    for name, kernel in candidates.items():
        if kernel.shape == (size + hidden, hidden):
            kx, kh = _tf1_split(kernel, size)
            if _same(kx.T, w) and _same(kh.T, r):
                return CellMatch(layer_of(name), {"kernel": name}, SIMPLE_RNN_ORDER, dict(SIMPLE_RNN_GATE_MAP),
                                 {}, "TF1 BasicRNNCell")
    return None


def match_direction(op: str, w: np.ndarray, r: np.ndarray, b: np.ndarray | None,
                    candidates: dict[str, np.ndarray]) -> CellMatch | None:
    """The source cell behind one direction of a fused node (W [nH, I], R [nH, H], B [2nH])."""
    hidden = r.shape[1]
    count = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    bias = np.zeros(2 * count * hidden, np.float32) if b is None else b
    if op == "LSTM":
        return _match_tf1_lstm(w, r, bias, candidates, hidden) or _match_keras(op, w, r, bias, candidates, hidden)
    if op == "GRU":
        return _match_tf1_gru(w, r, bias, candidates, hidden) or _match_keras(op, w, r, bias, candidates, hidden)
    return _match_tf1_rnn(w, r, candidates, hidden) or _match_keras(op, w, r, bias, candidates, hidden)
