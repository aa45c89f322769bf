"""Test data for every V2 datatype, shaped from a model's metadata."""

from __future__ import annotations

from typing import Any

import numpy as np

NUMPY = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64, "BYTES": np.object_,
}


def random_tensor(datatype: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    count = int(np.prod(shape))
    if datatype == "BOOL":
        return rng.random(shape) > 0.5
    if datatype == "BYTES":
        # Non-ASCII and an empty element: length prefixes and UTF-8 must survive both transports.
        words = [f"w{i}-ü".encode() if i % 3 else b"" for i in range(count)]
        arr = np.empty(count, dtype=object)
        arr[:] = words
        return arr.reshape(shape)
    dtype = np.dtype(NUMPY[datatype])
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
        values.reshape(-1)[:2] = [info.min, info.max][: values.size]  # the extremes, always
        return values
    return rng.standard_normal(shape).astype(dtype)


def concrete_shape(shape: list[Any], *, fill: int = 2) -> list[int]:
    """A request shape for a metadata shape: every variable (-1) dimension becomes `fill`."""
    return [fill if int(d) == -1 else int(d) for d in shape]


def inputs_for(metadata: dict[str, Any], seed: int = 0) -> dict[str, tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {
        i["name"]: (i["datatype"], random_tensor(i["datatype"], concrete_shape(i["shape"]), rng))
        for i in metadata["inputs"]
    }
