"""modelbridge server: the V2 inference protocol on ONNX Runtime."""

__version__ = "0.1.0"
