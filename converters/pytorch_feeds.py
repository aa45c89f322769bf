"""Inputs a PyTorch model accepts, for tracing and for the parity proof.

Plain random normals break real models: token ids must stay below the smallest ``nn.Embedding``
vocabulary, and the lengths of a packed sequence (a 1-D integer input) must lie in [1, T] and be
sorted when ``pack_padded_sequence(enforce_sorted=True)`` asks for it.  Batch and time get different
sizes (a dynamic axis 0 is one size, every other dynamic axis another) so that an exporter which
confused them, or baked one in, fails the proof.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from converters.specs import InputSpec

DEFAULT_INT_HIGH = 10
# (size of a dynamic axis 0, size of the other dynamic axes, whether the longest length equals T)
PROOF_PLANS = ((2, 5, True), (5, 3, False), (1, 4, True))
TRACE_PLAN = (3, 4, True)
MAX_LAYOUTS = 16


@dataclass(frozen=True)
class FeedPlan:
    first: int
    rest: int
    full_length: bool

    def describe(self) -> str:
        return f"dynamic axis 0 = {self.first}, other dynamic axes = {self.rest}"


def is_lengths(spec: InputSpec) -> bool:
    """A 1-D integer input: the per-sequence lengths of a padded batch."""
    return len(spec.shape) == 1 and np.issubdtype(np.dtype(spec.dtype), np.integer)


def _lengths(rng: np.random.Generator, batch: int, time: int, full: bool, descending: bool) -> np.ndarray:
    if full or time == 1:
        values = rng.integers(1, time + 1, size=batch)
        values[rng.integers(0, batch)] = time  # the padded length is the longest sequence's
    else:
        values = rng.integers(1, time, size=batch)  # every sequence shorter than the padded batch
    return np.sort(values)[::-1].copy() if descending else values


def _make(specs: Sequence[InputSpec], plan: FeedPlan, choice: dict[int, int], *, seed: int, int_high: int,
          descending: bool, lengths: bool = True) -> dict[str, np.ndarray]:
    """``choice[i]`` picks the size (0 first, 1 rest) of input i's only dynamic axis; a lengths input's
    values run up to the other size (the time of the data whose batch it counts)."""
    rng = np.random.default_rng(seed)
    sizes = (plan.first, plan.rest)
    feeds = {}
    for index, spec in enumerate(specs):
        dynamic = [axis for axis, dim in enumerate(spec.shape) if dim is None]
        size_of = {axis: sizes[choice[index]] if index in choice else sizes[min(rank, 1)]
                   for rank, axis in enumerate(dynamic)}
        shape = tuple(size_of.get(axis, dim or 0) for axis, dim in enumerate(spec.shape))
        dtype = np.dtype(spec.dtype)
        if lengths and is_lengths(spec):
            time = sizes[1 - choice.get(index, 0)]
            value = _lengths(rng, shape[0], time, plan.full_length, descending).astype(dtype)
        elif np.issubdtype(dtype, np.floating):
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            value = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            value = rng.integers(0, int_high, size=shape).astype(dtype)
        feeds[spec.name] = value
    return feeds


def candidate_feeds(specs: Sequence[InputSpec], plan: FeedPlan, *, seed: int,
                    int_high: int = DEFAULT_INT_HIGH) -> Iterator[dict[str, np.ndarray]]:
    """Feeds for ``plan``, most likely first.

    An input with one dynamic axis (a state [L, B, H], lengths [B]) may share either size of the
    data: batch-first data puts the batch in axis 0, time-first data in axis 1.  Lengths are tried
    unsorted, then sorted longest first (``enforce_sorted=True``); last, 1-D integers as plain ids (a
    class label, say).
    """
    singles = [index for index, spec in enumerate(specs) if sum(dim is None for dim in spec.shape) == 1]
    orders = (False, True) if any(is_lengths(spec) for spec in specs) else (False,)
    for picks in itertools.islice(itertools.product((0, 1), repeat=len(singles)), MAX_LAYOUTS):
        for descending in orders:
            yield _make(specs, plan, dict(zip(singles, picks, strict=True)), seed=seed, int_high=int_high,
                        descending=descending)
    if len(orders) == 2:
        yield _make(specs, plan, {}, seed=seed, int_high=int_high, descending=False, lengths=False)


def first_accepted(specs: Sequence[InputSpec], plan: FeedPlan, run: Callable[[dict[str, np.ndarray]], object], *,
                   seed: int, int_high: int = DEFAULT_INT_HIGH) -> tuple[dict[str, np.ndarray], object]:
    """The first candidate feeds the source model runs on, with its result; re-raises the first failure."""
    first_error: Exception | None = None
    for feeds in candidate_feeds(specs, plan, seed=seed, int_high=int_high):
        try:
            return feeds, run(feeds)
        except Exception as exc:  # noqa: BLE001 - the source rejects these inputs: try the next arrangement
            first_error = first_error or exc
    assert first_error is not None
    raise first_error
