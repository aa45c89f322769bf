"""One table: V2 datatype <-> numpy dtype <-> ONNX element type <-> Triton config TYPE_*."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from server.core.errors import InvalidArgument, Unsupported


@dataclass(frozen=True)
class DataType:
    v2: str               # "FP32"
    numpy: np.dtype       # float32; object for BYTES
    onnx: int             # TensorProto.FLOAT
    config: str           # "TYPE_FP32"
    config_enum: int      # 11
    itemsize: int         # bytes per element on the wire; 0 for BYTES (length-prefixed)
    ort: str              # onnxruntime's type string, "tensor(float)"


_TABLE = [
    DataType("BOOL", np.dtype(np.bool_), TensorProto.BOOL, "TYPE_BOOL", 1, 1, "tensor(bool)"),
    DataType("UINT8", np.dtype(np.uint8), TensorProto.UINT8, "TYPE_UINT8", 2, 1, "tensor(uint8)"),
    DataType("UINT16", np.dtype(np.uint16), TensorProto.UINT16, "TYPE_UINT16", 3, 2, "tensor(uint16)"),
    DataType("UINT32", np.dtype(np.uint32), TensorProto.UINT32, "TYPE_UINT32", 4, 4, "tensor(uint32)"),
    DataType("UINT64", np.dtype(np.uint64), TensorProto.UINT64, "TYPE_UINT64", 5, 8, "tensor(uint64)"),
    DataType("INT8", np.dtype(np.int8), TensorProto.INT8, "TYPE_INT8", 6, 1, "tensor(int8)"),
    DataType("INT16", np.dtype(np.int16), TensorProto.INT16, "TYPE_INT16", 7, 2, "tensor(int16)"),
    DataType("INT32", np.dtype(np.int32), TensorProto.INT32, "TYPE_INT32", 8, 4, "tensor(int32)"),
    DataType("INT64", np.dtype(np.int64), TensorProto.INT64, "TYPE_INT64", 9, 8, "tensor(int64)"),
    DataType("FP16", np.dtype(np.float16), TensorProto.FLOAT16, "TYPE_FP16", 10, 2, "tensor(float16)"),
    DataType("FP32", np.dtype(np.float32), TensorProto.FLOAT, "TYPE_FP32", 11, 4, "tensor(float)"),
    DataType("FP64", np.dtype(np.float64), TensorProto.DOUBLE, "TYPE_FP64", 12, 8, "tensor(double)"),
    DataType("BYTES", np.dtype(object), TensorProto.STRING, "TYPE_STRING", 13, 0, "tensor(string)"),
]

BY_V2: dict[str, DataType] = {d.v2: d for d in _TABLE}
BY_ONNX: dict[int, DataType] = {d.onnx: d for d in _TABLE}
BY_CONFIG: dict[str, DataType] = {d.config: d for d in _TABLE}
BY_ORT: dict[str, DataType] = {d.ort: d for d in _TABLE}
# Triton knows BF16; onnxruntime's CPU provider cannot take it as a model input here.
KNOWN_UNSUPPORTED = {"BF16"}


def from_v2(name: str) -> DataType:
    try:
        return BY_V2[name]
    except KeyError:
        if name in KNOWN_UNSUPPORTED:
            raise Unsupported(f"datatype {name} is not supported by this server") from None
        raise InvalidArgument(f"unknown datatype '{name}'; expected one of {', '.join(BY_V2)}") from None


def from_onnx(elem_type: int) -> DataType:
    try:
        return BY_ONNX[elem_type]
    except KeyError:
        name = TensorProto.DataType.Name(elem_type) if elem_type in TensorProto.DataType.values() else elem_type
        raise Unsupported(f"ONNX element type {name} has no V2 datatype") from None


def from_config(name: str) -> DataType:
    try:
        return BY_CONFIG[name]
    except KeyError:
        raise InvalidArgument(f"unknown config data_type '{name}'") from None


def from_numpy(dtype: np.dtype) -> DataType:
    if dtype.kind in ("O", "S", "U"):
        return BY_V2["BYTES"]
    for d in _TABLE:
        if d.numpy == dtype:
            return d
    raise Unsupported(f"numpy dtype {dtype} has no V2 datatype")
