"""Every conversion proves itself: run onnxruntime on the converted model, compare with the source.

The report (max absolute and relative error per output, the tolerance, the inputs used) is stored in
the model's ``metadata_props`` under ``modelbridge.parity`` so it travels with the file.  The
relative error is ``max_abs / max(|expected|)`` — relative to the output's largest magnitude, which
stays meaningful where individual expected values are near zero.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from converters.specs import InputSpec

PARITY_KEY = "modelbridge.parity"
DEFAULT_ATOL = 1e-4


class ParityError(RuntimeError):
    """The converted model disagrees with its source beyond the tolerance."""

    def __init__(self, message: str, report: ParityReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass
class OutputParity:
    name: str
    shape: list[int]
    dtype: str
    max_abs: float
    max_rel: float
    passed: bool


@dataclass
class ParityReport:
    outputs: list[OutputParity]
    atol: float
    passed: bool
    inputs: list[dict[str, Any]] = field(default_factory=list)
    runtime: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ParityReport:
        raw = json.loads(text)
        outputs = [OutputParity(**item) for item in raw.pop("outputs")]
        return cls(outputs=outputs, **raw)

    def summary(self) -> str:
        lines = [f"parity {'passed' if self.passed else 'FAILED'} (atol {self.atol:g}, {self.runtime})"]
        for out in self.outputs:
            lines.append(
                f"  {out.name} {out.shape} {out.dtype}: max_abs {out.max_abs:.3g}, max_rel {out.max_rel:.3g}"
            )
        for item in self.inputs:
            lines.append(f"  input {item['name']} {item['shape']} {item['dtype']}: {item.get('origin', '')}")
        return "\n".join(lines)


def describe_inputs(feeds: Mapping[str, np.ndarray], *, origin: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "shape": list(np.shape(value)), "dtype": str(np.asarray(value).dtype), "origin": origin}
        for name, value in feeds.items()
    ]


class RuntimeFailure(RuntimeError):
    """onnxruntime refused to load or run a converted model (its message says why)."""


def _ort_errors() -> tuple[type[Exception], ...]:
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    return tuple(v for v in vars(state).values() if isinstance(v, type) and issubclass(v, Exception))


def run_onnx(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``model`` on onnxruntime's CPU provider; returns outputs by name.

    onnxruntime's own exceptions derive from Exception only; they become RuntimeFailure here so
    callers (and the CLI) can report them like any other conversion failure.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # our error names the failing output; ORT need not log it too
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        names = [out.name for out in session.get_outputs()]
        values = session.run(names, {name: np.asarray(value) for name, value in feeds.items()})
    except _ort_errors() as exc:
        raise RuntimeFailure(f"onnxruntime cannot run the converted model: {exc}".strip()) from exc
    return dict(zip(names, values, strict=True))


def compare(
    actual: Mapping[str, np.ndarray],
    expected: Mapping[str, np.ndarray],
    *,
    atol: float,
) -> list[OutputParity]:
    results = []
    for name, want in expected.items():
        got = np.asarray(actual[name])
        want = np.asarray(want)
        if got.shape != want.shape:
            raise ParityError(
                f"output {name!r}: converted model gives shape {list(got.shape)}, source gives {list(want.shape)}",
                ParityReport(outputs=[], atol=atol, passed=False),
            )
        if got.size == 0:
            max_abs = 0.0
            scale = 0.0
        else:
            got64, want64 = got.astype(np.float64), want.astype(np.float64)
            got_nan, want_nan = np.isnan(got64), np.isnan(want64)
            # NaN where the source has NaN is agreement; NaN on one side only is infinitely wrong.
            diff = np.where(got_nan & want_nan, 0.0, np.abs(got64 - want64))
            max_abs = float("inf") if (got_nan != want_nan).any() else float(np.max(diff))
            scale = float(np.max(np.abs(np.where(want_nan, 0.0, want64))))
        max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
        exact = not np.issubdtype(want.dtype, np.floating)
        passed = max_abs == 0.0 if exact else bool(max_abs <= atol)
        results.append(OutputParity(name, list(want.shape), str(want.dtype), max_abs, max_rel, passed))
    return results


def check(
    model: onnx.ModelProto,
    feeds: dict[str, np.ndarray],
    expected: dict[str, np.ndarray] | list[np.ndarray],
    *,
    atol: float = DEFAULT_ATOL,
    origin: str = "given",
) -> ParityReport:
    """Run ``model`` on ``feeds``, compare with ``expected``, store the report in the model.

    ``expected`` is a dict by output name or a list in the graph's output order.  Raises
    ParityError naming the worst output when any output is off by more than ``atol``.
    """
    import onnxruntime as ort

    actual = run_onnx(model, feeds)
    output_names = [out.name for out in model.graph.output]
    if not isinstance(expected, Mapping):
        expected_list = list(expected)
        if len(expected_list) != len(output_names):
            raise ParityError(
                f"source gives {len(expected_list)} outputs, converted model has {len(output_names)} "
                f"({', '.join(output_names)})",
                ParityReport(outputs=[], atol=atol, passed=False),
            )
        expected = dict(zip(output_names, expected_list, strict=True))
    missing = [name for name in expected if name not in actual]
    if missing:
        raise ParityError(
            f"converted model has no output named {', '.join(map(repr, missing))} (it has {', '.join(output_names)})",
            ParityReport(outputs=[], atol=atol, passed=False),
        )
    outputs = compare(actual, expected, atol=atol)
    report = ParityReport(
        outputs=outputs,
        atol=atol,
        passed=all(out.passed for out in outputs),
        inputs=describe_inputs(feeds, origin=origin),
        runtime=f"onnxruntime {ort.__version__}",
    )
    store(model, report)
    if not report.passed:
        worst = max((out for out in outputs if not out.passed), key=lambda out: out.max_abs)
        raise ParityError(
            f"parity failed: output {worst.name!r} differs from the source by max_abs {worst.max_abs:.3g} "
            f"(max_rel {worst.max_rel:.3g}) > atol {atol:g}",
            report,
        )
    return report


def store(model: onnx.ModelProto, report: ParityReport) -> None:
    set_metadata(model.metadata_props, PARITY_KEY, report.to_json())


def read(model: onnx.ModelProto) -> ParityReport | None:
    for prop in model.metadata_props:
        if prop.key == PARITY_KEY:
            return ParityReport.from_json(prop.value)
    return None


def set_metadata(props: Any, key: str, value: str) -> None:
    """Set ``key`` in a repeated StringStringEntryProto (model or node metadata_props)."""
    for prop in props:
        if prop.key == key:
            prop.value = value
            return
    entry = props.add()
    entry.key = key
    entry.value = value


_ONNX_TO_NUMPY = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


def specs_of(model: onnx.ModelProto) -> list[InputSpec]:
    """InputSpecs of the model's real inputs (initializers listed as inputs are skipped)."""
    initializers = {init.name for init in model.graph.initializer}
    specs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        tensor = value.type.tensor_type
        dtype = _ONNX_TO_NUMPY.get(tensor.elem_type)
        if dtype is None:
            raise ValueError(f"input {value.name!r} has an element type random feeds cannot make ({tensor.elem_type})")
        shape = tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in tensor.shape.dim)
        specs.append(InputSpec(value.name, shape, dtype))
    return specs


def random_feeds(
    source: onnx.ModelProto | Iterable[InputSpec],
    *,
    seed: int = 0,
    dynamic: int = 2,
) -> dict[str, np.ndarray]:
    """Random inputs within the declared shapes (dynamic dims become ``dynamic``), deterministic by seed.

    Floats are standard normal; integers are in [0, 10); booleans are fair coins.
    """
    specs: Sequence[InputSpec] = specs_of(source) if isinstance(source, onnx.ModelProto) else list(source)
    rng = np.random.default_rng(seed)
    feeds = {}
    for spec in specs:
        shape = spec.concrete_shape(dynamic=dynamic)
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.floating):
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype == np.bool_:
            value = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            value = rng.integers(0, 10, size=shape).astype(dtype)
        feeds[spec.name] = value
    return feeds
