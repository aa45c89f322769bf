"""Converters from TensorFlow, Keras and PyTorch to ONNX with fused, annotated recurrent ops.

One explicit table maps a framework name to the module that converts it; a framework module is
imported only when a conversion asks for it, so importing ``converters`` (as the server does, for
``converters.gates``) never imports torch or tensorflow.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from converters.parity import DEFAULT_ATOL
from converters.result import ConversionResult
from converters.specs import InputSpec

# Opset 17 is run by onnxruntime 1.32 and onnxruntime-web 1.30 alike, and carries LSTM/GRU/RNN
# (opset 14 versions, with layout) unchanged.
DEFAULT_OPSET = 17

FRAMEWORKS: dict[str, str] = {
    "pytorch": "converters.pytorch",
    "keras": "converters.keras",
    "tensorflow": "converters.tensorflow",
}

ProgressCallback = Callable[[str], None]


# what each converter cannot run without (imported before the converter, to name what is missing)
REQUIRES: dict[str, tuple[str, ...]] = {
    "pytorch": ("torch",),
    "keras": ("tensorflow", "tf2onnx"),
    "tensorflow": ("tensorflow", "tf2onnx"),
}
# the packages the `convert` extra installs (pyproject.toml), by the name they are imported as
CONVERT_EXTRA_PACKAGES = frozenset({"torch", "tensorflow", "keras", "tf_keras", "tf2onnx", "onnxscript"})
INSTALL_HINT = "pip install 'modelbridge[convert]'"


class UnsupportedSourceError(ValueError):
    """A source the converters do not know how to read (names what it is)."""


class FrameworkMissingError(UnsupportedSourceError):
    """The framework a conversion needs is not installed (says how to install it)."""


def _missing(framework: str, exc: ImportError) -> FrameworkMissingError | None:
    package = (exc.name or "").split(".")[0]
    return _missing_package(framework, package, exc) if package in CONVERT_EXTRA_PACKAGES else None


def _missing_package(framework: str, package: str, exc: ImportError) -> FrameworkMissingError:
    return FrameworkMissingError(
        f"converting a {framework} model needs the Python package {package!r}, which is not installed "
        f"(or fails to import: {exc}); install the converters with: {INSTALL_HINT}"
    )


def framework_module(framework: str) -> ModuleType:
    if framework not in FRAMEWORKS:
        raise UnsupportedSourceError(
            f"unknown framework {framework!r}; choose one of {', '.join(sorted(FRAMEWORKS))}"
        )
    for package in REQUIRES[framework]:
        try:
            importlib.import_module(package)
        except ImportError as exc:  # however the import failed (absent, broken, blocked), name the package
            raise _missing_package(framework, package, exc) from exc
    try:
        return importlib.import_module(FRAMEWORKS[framework])
    except ImportError as exc:
        missing = _missing(framework, exc)
        if missing is None:
            raise
        raise missing from exc


def detect_framework(source: Any) -> str:
    """Name the framework of a file, directory or in-memory model, by extension and content."""
    if not isinstance(source, (str, Path)):
        module = type(source).__module__.split(".")[0]
        kinds = [klass.__module__.split(".")[0] for klass in type(source).__mro__]
        if "torch" in kinds:
            return "pytorch"
        if "keras" in kinds or "tf_keras" in kinds:
            return "keras"
        if module in ("tensorflow", "tf_keras") or hasattr(source, "get_concrete_function"):
            return "tensorflow"
        raise UnsupportedSourceError(f"cannot tell which framework a {type(source).__qualname__} belongs to")
    path = Path(source)
    if not path.exists():
        raise UnsupportedSourceError(f"source {str(path)!r} does not exist")
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            return "tensorflow"
        if (path / "checkpoint").is_file():  # a TF1 checkpoint folder: the converter takes its latest .meta
            return "tensorflow"
        raise UnsupportedSourceError(
            f"directory {str(path)!r} is neither a TensorFlow SavedModel (saved_model.pb) nor a checkpoint folder"
        )
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".pt2", ".ts"):
        return "pytorch"
    if suffix in (".keras", ".h5", ".hdf5"):
        return "keras"
    if suffix in (".pb", ".pbtxt", ".meta", ".index") or path.name == "checkpoint":
        return "tensorflow"
    raise UnsupportedSourceError(
        f"cannot tell the framework of {path.name!r} from its extension; supported: .pt/.pth/.pt2 (PyTorch), "
        ".keras/.h5 (Keras), SavedModel directory/.pb/.meta (TensorFlow) — or pass --framework"
    )


def convert(
    source: Any,
    *,
    framework: str | None = None,
    inputs: list[InputSpec] | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    progress: ProgressCallback | None = None,
    stateful: bool = False,
    time_axis: int = 1,
    **framework_options: Any,
) -> ConversionResult:
    """Convert ``source`` (a path or an in-memory model) to ONNX, proven by a parity check.

    ``stateful`` exports the step form (converters.stateful): recurrent state in and out as extra
    inputs/outputs, proven by streaming ``time_axis`` of the inputs step by step.
    ``framework_options`` go to the framework's converter (e.g. PyTorch ``exporter="torchscript"``).
    """
    name = framework or detect_framework(source)
    if progress:
        progress(f"loading the {name} converter")  # importing a framework takes seconds
    module = framework_module(name)
    try:
        result: ConversionResult = module.convert(
            source, inputs=inputs, opset=opset, atol=atol, progress=progress, **framework_options
        )
    except ImportError as exc:  # a framework piece imported lazily (tf2onnx, onnxscript...)
        missing = _missing(name, exc)
        if missing is None:
            raise
        raise missing from exc
    if stateful:
        from converters.annotations import read_annotations
        from converters.stateful import check_streaming, make_stateful

        if progress:
            progress("converting to step form (stateful)")
        model = make_stateful(result.model)
        if progress:
            progress("verifying: step-by-step state equals the whole sequence")
        check_streaming(result.model, model, time_axis=time_axis)
        result = ConversionResult(model=model, parity=result.parity, annotations=read_annotations(model))
    return result


__all__ = [
    "DEFAULT_OPSET",
    "FRAMEWORKS",
    "ConversionResult",
    "FrameworkMissingError",
    "InputSpec",
    "UnsupportedSourceError",
    "convert",
    "detect_framework",
    "framework_module",
]
