"""Stateful sequences: the server keeps a recurrent model's state between requests.

A stateful model (the converters' `--stateful` export) declares in its ONNX metadata, key
`modelbridge.state`, a JSON list of {"input": "<state in>", "output": "<state out>"} pairs. Each state
tensor has the batch as its first axis and starts at zeros. Clients send only the ordinary inputs plus
the V2 sequence parameters (`sequence_id`, `sequence_start`, `sequence_end`); the server feeds the state
back on every step, keyed by (model, version, sequence_id), drops it at `sequence_end` or after an idle
timeout, and caps how many sequences live at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from server.core import datatypes
from server.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from server.core.model_config import GraphIO

STATE_KEY = "modelbridge.state"
SequenceKey = tuple[str, int, int | str]


@dataclass(frozen=True)
class StatePair:
    input: str
    output: str
    datatype: str
    dims: tuple[int, ...]  # without the batch axis

    def zeros(self, batch: int) -> np.ndarray:
        return np.zeros((batch, *self.dims), dtype=datatypes.BY_V2[self.datatype].numpy)


def state_pairs(metadata: dict[str, str], inputs: list[GraphIO], outputs: list[GraphIO]) -> list[StatePair]:
    text = metadata.get(STATE_KEY)
    if not text:
        return []
    try:
        entries = json.loads(text)
        pairs = [(str(e["input"]), str(e["output"])) for e in entries]
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidArgument(f"metadata {STATE_KEY} is not a list of {{input, output}} pairs: {exc}") from None
    ins = {io.name: io for io in inputs}
    outs = {io.name: io for io in outputs}
    result = []
    for i, o in pairs:
        if i not in ins or o not in outs:
            raise InvalidArgument(f"state pair {i} -> {o} names a tensor the graph does not have")
        src = ins[i]
        if any(d < 0 for d in src.shape[1:]):
            raise InvalidArgument(f"state input '{i}' needs fixed dims after the batch axis, has {src.shape}")
        if src.datatype != outs[o].datatype:
            raise InvalidArgument(f"state input '{i}' and output '{o}' differ in datatype")
        result.append(StatePair(i, o, src.datatype, tuple(src.shape[1:])))
    return result


def sequence_config(pairs: list[StatePair], idle_us: int) -> dict[str, Any]:
    """Triton's implicit-state form of sequence_batching, so clients see a sequence model."""
    states = []
    for p in pairs:
        dt = datatypes.BY_V2[p.datatype].config
        states.append({
            "input_name": p.input, "output_name": p.output, "data_type": dt, "dims": list(p.dims),
            "initial_state": [{"data_type": dt, "dims": list(p.dims), "zero_data": True, "name": "zeros"}],
        })
    return {"max_sequence_idle_microseconds": idle_us, "state": states}


@dataclass(frozen=True)
class SequenceParams:
    sequence_id: int | str
    start: bool
    end: bool


def sequence_params(parameters: dict[str, Any], model: str) -> SequenceParams:
    sid = parameters.get("sequence_id")
    if sid is None or sid == 0 or sid == "":
        raise InvalidArgument(
            f"model '{model}' is stateful: each request needs a non-zero 'sequence_id' parameter "
            "(and 'sequence_start': true on its first step)"
        )
    if isinstance(sid, bool) or not isinstance(sid, (int, str)):
        raise InvalidArgument("sequence_id must be an unsigned integer or a string")
    if isinstance(sid, int) and not 0 < sid < 2**64:
        raise InvalidArgument("sequence_id must be an unsigned 64-bit integer")
    if isinstance(sid, str) and len(sid) > 256:
        raise InvalidArgument("sequence_id strings are limited to 256 characters")
    start, end = parameters.get("sequence_start", False), parameters.get("sequence_end", False)
    if not isinstance(start, bool) or not isinstance(end, bool):
        raise InvalidArgument("sequence_start and sequence_end must be booleans")
    return SequenceParams(sid, start, end)


@dataclass
class _Sequence:
    state: dict[str, np.ndarray]
    batch: int
    last_used: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class SequenceStore:
    """Live sequences of every stateful model, bounded in count and idle time."""

    def __init__(self, *, idle_timeout: float = 60.0, max_sequences: int = 1024) -> None:
        self.idle_timeout = idle_timeout
        self.max_sequences = max_sequences
        self._live: dict[SequenceKey, _Sequence] = {}
        self._last_sweep = 0.0

    def __len__(self) -> int:
        return len(self._live)

    def count(self, model: str, version: int) -> int:
        return sum(1 for k in self._live if k[0] == model and k[1] == version)

    def sweep(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        expired = [k for k, s in self._live.items() if now - s.last_used > self.idle_timeout and not s.lock.locked()]
        for k in expired:
            del self._live[k]
        self._last_sweep = now
        return len(expired)

    def begin(self, key: SequenceKey, pairs: list[StatePair], batch: int) -> _Sequence:
        now = time.monotonic()
        if now - self._last_sweep > 1.0:
            self.sweep(now)
        seq = self._live.get(key)
        if seq is None:
            if len(self._live) >= self.max_sequences:
                self.sweep(now)
                if len(self._live) >= self.max_sequences:
                    raise ResourceExhausted(
                        f"too many live sequences ({self.max_sequences}); end some with sequence_end or wait "
                        f"{self.idle_timeout:g}s for idle ones to expire", retry_after=1,
                    )
            seq = self._live[key] = _Sequence({p.input: p.zeros(batch) for p in pairs}, batch, now)
        return seq

    @staticmethod
    def reset(seq: _Sequence, pairs: list[StatePair], batch: int) -> None:
        """Zero state for a (re)started sequence; called under the sequence's lock."""
        seq.state = {p.input: p.zeros(batch) for p in pairs}
        seq.batch, seq.last_used = batch, time.monotonic()

    def resume(self, key: SequenceKey) -> _Sequence:
        seq = self._live.get(key)
        now = time.monotonic()
        if seq is not None and now - seq.last_used > self.idle_timeout and not seq.lock.locked():
            del self._live[key]
            seq = None
        if seq is None:
            raise FailedPrecondition(
                f"sequence {key[2]!r} of model '{key[0]}' is not live (never started, ended, expired after "
                f"{self.idle_timeout:g}s idle, or lost in a server restart); send sequence_start: true to begin it"
            )
        seq.last_used = now
        return seq

    def lookup(self, key: SequenceKey) -> _Sequence | None:
        return self._live.get(key)

    def end(self, key: SequenceKey) -> None:
        self._live.pop(key, None)

    def drop_version(self, model: str, version: int) -> None:
        for k in [k for k in self._live if k[0] == model and k[1] == version]:
            del self._live[k]
