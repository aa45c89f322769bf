"""Decode V2 tensors (JSON `data` or binary-extension bytes) to numpy and encode them back.

Every check here guards against hostile input: shapes are validated before anything is
allocated, and sizes are compared with what actually arrived.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np

from server.core.datatypes import DataType
from server.core.errors import InvalidArgument

# A shape whose element count exceeds this is refused before any allocation.
MAX_ELEMENTS = 1 << 31
MAX_RANK = 32   # numpy allows 64; no model here needs more than a handful


def check_shape(name: str, shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)):
        raise InvalidArgument(f"input '{name}': shape must be a list of integers, got {shape!r}")
    dims: list[int] = []
    for d in shape:
        if isinstance(d, bool) or not isinstance(d, int):
            raise InvalidArgument(f"input '{name}': shape must be a list of integers, got {shape!r}")
        if d < 0:
            raise InvalidArgument(f"input '{name}': shape {list(shape)} has a negative dimension")
        dims.append(d)
    if len(dims) > MAX_RANK:
        raise InvalidArgument(f"input '{name}': shape has {len(dims)} dimensions, over the limit {MAX_RANK}")
    count = math.prod(dims)
    if count > MAX_ELEMENTS:
        raise InvalidArgument(f"input '{name}': shape {dims} holds {count} elements, over the limit {MAX_ELEMENTS}")
    # A zero dimension makes the count 0, yet numpy still refuses dimensions whose product overflows.
    if count == 0 and math.prod(d for d in dims if d) > MAX_ELEMENTS:
        raise InvalidArgument(f"input '{name}': shape {dims} has dimensions over the limit {MAX_ELEMENTS}")
    return tuple(dims)


def element_count(shape: Sequence[int]) -> int:
    return math.prod(shape)


def from_json_data(name: str, dt: DataType, shape: tuple[int, ...], data: Any) -> np.ndarray:
    """JSON `data` (flat or nested, row-major) -> array of `shape`."""
    count = element_count(shape)
    if not isinstance(data, list):
        data = [data]
    try:
        if dt.v2 == "BYTES":
            flat = _flatten(data)
            arr = np.empty(len(flat), dtype=object)
            for i, v in enumerate(flat):
                if isinstance(v, str):
                    arr[i] = v.encode("utf-8")
                elif isinstance(v, (bytes, bytearray)):
                    arr[i] = bytes(v)
                else:
                    raise InvalidArgument(f"input '{name}': BYTES data must be strings, got {type(v).__name__}")
        elif dt.v2 == "BOOL":
            flat = _flatten(data)
            if not all(isinstance(v, bool) for v in flat):
                raise InvalidArgument(f"input '{name}': BOOL data must be true/false")
            arr = np.array(flat, dtype=np.bool_)
        else:
            arr = np.array(data, dtype=dt.numpy)
            if arr.dtype == object:
                raise ValueError("ragged")
            arr = arr.reshape(-1)
            # A bool (true/false) or string slipping into numeric data is refused rather than coerced.
            if dt.numpy.kind in "iuf" and _has_bad_scalar(data):
                raise InvalidArgument(f"input '{name}': {dt.v2} data must be numbers")
    except InvalidArgument:
        raise
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidArgument(f"input '{name}': data is not a valid {dt.v2} array ({_reason(exc)})") from None
    if arr.size != count:
        raise InvalidArgument(
            f"input '{name}': shape {list(shape)} needs {count} elements, data holds {arr.size}"
        )
    return arr.reshape(shape)


def _reason(exc: Exception) -> str:
    text = str(exc)
    if "inhomogeneous" in text or text == "ragged" or "sequence" in text:
        return "nested lists of ragged lengths"
    return text.split("\n")[0][:200]


_NUMBERS = frozenset((int, float))


def _has_bad_scalar(data: list) -> bool:
    """True when anything but numbers (bool, str, None, objects) hides in the (nested) lists."""
    # set(map(type, ...)) runs at C speed: this is on the hot path of every JSON request.
    kinds = set(map(type, data))
    if kinds <= _NUMBERS:
        return False
    if kinds == {list}:
        return any(_has_bad_scalar(item) for item in data)
    return True


def _flatten(data: list) -> list:
    out: list = []
    depth_lengths: dict[int, int] = {}

    def walk(item: Any, depth: int) -> None:
        if isinstance(item, list):
            prev = depth_lengths.setdefault(depth, len(item))
            if prev != len(item):
                raise ValueError("ragged")
            for sub in item:
                walk(sub, depth + 1)
        else:
            out.append(item)

    walk(data, 0)
    return out


def from_binary(name: str, dt: DataType, shape: tuple[int, ...], raw: bytes | memoryview) -> np.ndarray:
    """Binary-extension bytes (little-endian, row-major) -> array of `shape`."""
    count = element_count(shape)
    if dt.v2 == "BYTES":
        arr = decode_bytes_elements(name, raw)
        if arr.size != count:
            raise InvalidArgument(
                f"input '{name}': shape {list(shape)} needs {count} BYTES elements, data holds {arr.size}"
            )
        return arr.reshape(shape)
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input '{name}': shape {list(shape)} of {dt.v2} needs {expected} bytes, got {len(raw)}"
        )
    arr = np.frombuffer(raw, dtype=dt.numpy.newbyteorder("<"))
    if dt.v2 == "BOOL":
        # As Triton reads them: any nonzero byte is true (perf_analyzer's random data relies on it).
        arr = np.frombuffer(raw, dtype=np.uint8) != 0
    return arr.reshape(shape)


def decode_bytes_elements(name: str, raw: bytes | memoryview) -> np.ndarray:
    view = memoryview(raw)
    items: list[bytes] = []
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < 4:
            raise InvalidArgument(f"input '{name}': BYTES data ends inside a 4-byte length prefix")
        (length,) = struct.unpack_from("<I", view, pos)
        pos += 4
        if length > end - pos:
            raise InvalidArgument(
                f"input '{name}': BYTES element declares {length} bytes but only {end - pos} remain"
            )
        items.append(bytes(view[pos : pos + length]))
        pos += length
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def to_binary(dt: DataType, arr: np.ndarray) -> bytes:
    if dt.v2 == "BYTES":
        parts: list[bytes] = []
        for item in arr.reshape(-1):
            b = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    return np.ascontiguousarray(arr, dtype=dt.numpy.newbyteorder("<")).tobytes()


def to_json_data(dt: DataType, arr: np.ndarray) -> list:
    flat = arr.reshape(-1)
    if dt.v2 == "BYTES":
        return [
            (v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v)) for v in flat
        ]
    if dt.v2 == "FP16":
        flat = flat.astype(np.float32)
    return flat.tolist()
