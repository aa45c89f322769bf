"""PyTorch -> ONNX: nn.Module (Python API), TorchScript ``.pt``, ExportedProgram ``.pt2``.

The exporters convert the graph; we own the recurrent layers.  nn.LSTM / nn.GRU / nn.RNN become
fused ONNX LSTM / GRU / RNN nodes (layout 0), packed sequences feed their ``sequence_lens``
(converters.pytorch_packed), and a cell stepped in a Python loop is fused into one node or refused
naming the cell (converters.pytorch_cells, pytorch_fuse).  The dynamo exporter is tried first; its
model is kept only if every recurrent layer is fused, the opset is the one asked for and it matches
PyTorch at several batch sizes and lengths (it has been seen to bake a traced sequence length into a
Reshape).  Otherwise the TorchScript exporter is used, checked the same way.  Each fused node is
matched, by value, to the PyTorch parameters that feed it.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from converters import DEFAULT_OPSET, parity
from converters.parity import ParityReport
from converters.pytorch_cells import cell_calls, refusal, refuse_unrolled_cells, stepped
from converters.pytorch_feeds import DEFAULT_INT_HIGH, PROOF_PLANS, TRACE_PLAN, FeedPlan, first_accepted
from converters.pytorch_fuse import CellFusionError, cell_layer, fuse_cell_loops
from converters.pytorch_layers import (
    FRAMEWORK,
    TORCH_GATES,
    ExportCheckError,
    RecurrentLayer,
    UnsupportedModelError,
    annotate,
    expected_weights,
    recurrent_layers,
)
from converters.pytorch_packed import drop_zero_touch, packed_outputs_used, trim_to_longest
from converters.pytorch_sources import check_inputs, default_specs, forward_arguments, load
from converters.quiet import quiet_loggers
from converters.result import ConversionResult
from converters.specs import InputSpec

SOURCE_KEY = "modelbridge.source"
EXPORTERS = ("auto", "dynamo", "torchscript")
Progress = Callable[[str], None]
__all__ = [
    "EXPORTERS", "FRAMEWORK", "TORCH_GATES", "ExportCheckError", "RecurrentLayer", "UnsupportedModelError",
    "annotate", "convert", "expected_weights", "load", "parameters_of", "recurrent_layers",
]


def parameters_of(model: Any) -> dict[str, np.ndarray]:
    if isinstance(model, torch.export.ExportedProgram):
        items = model.state_dict.items()
    else:
        items = model.state_dict().items()
    return {name: value.detach().cpu().numpy() for name, value in items if isinstance(value, torch.Tensor)}


def _flatten(value: Any) -> list[np.ndarray]:
    if isinstance(value, torch.Tensor):
        return [value.detach().cpu().numpy()]
    if isinstance(value, (list, tuple)):
        return [array for item in value for array in _flatten(item)]
    if isinstance(value, dict):
        return [array for item in value.values() for array in _flatten(item)]
    raise UnsupportedModelError(f"model returns a {type(value).__qualname__}; only tensors (in tuples/lists/dicts)")


def _run_torch(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    module = model.module() if isinstance(model, torch.export.ExportedProgram) else model
    with torch.no_grad():
        return _flatten(module(*[torch.from_numpy(np.array(value)) for value in feeds.values()]))


def _export_dynamo(model: Any, args: tuple[Any, ...], specs: Sequence[InputSpec], outputs: list[str], opset: int) -> onnx.ModelProto:
    kwargs: dict[str, Any] = {}
    if not isinstance(model, torch.export.ExportedProgram):
        kwargs["dynamic_shapes"] = tuple(
            {axis: torch.export.Dim.AUTO for axis, dim in enumerate(spec.shape) if dim is None} for spec in specs
        )
        kwargs["input_names"] = [spec.name for spec in specs]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), quiet_loggers("torch", "onnxscript", "onnx_ir"):  # the exporter logs its own progress
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, args, dynamo=True, opset_version=opset, output_names=outputs,
                                    verbose=False, **kwargs)
    return program.model_proto  # type: ignore[no-any-return, union-attr]


def _export_torchscript(model: Any, args: tuple[Any, ...], specs: Sequence[InputSpec], outputs: list[str], opset: int) -> onnx.ModelProto:
    if isinstance(model, torch.export.ExportedProgram):
        raise ExportCheckError("the TorchScript exporter cannot read an ExportedProgram")
    # axis 0 is the batch of every input (and of the step form's state tensors): one shared name
    dynamic_axes = {spec.name: {axis: "batch" if axis == 0 else f"{spec.name}_dim{axis}"
                                for axis, dim in enumerate(spec.shape) if dim is None} for spec in specs}
    buffer = io.BytesIO()
    with warnings.catch_warnings(), packed_outputs_used(model):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, buffer, dynamo=False,  # type: ignore[arg-type]
                          opset_version=opset, do_constant_folding=True,
                          input_names=[spec.name for spec in specs], output_names=outputs,
                          dynamic_axes={name: axes for name, axes in dynamic_axes.items() if axes})
    exported = onnx.load_from_string(buffer.getvalue())
    drop_zero_touch(exported)  # the dead ReduceSum/Mul left behind are never run: onnxruntime prunes them
    return exported


def _int_high(model: Any) -> int:
    """Token ids must index every nn.Embedding: stay below the smallest vocabulary."""
    if isinstance(model, torch.export.ExportedProgram):
        return DEFAULT_INT_HIGH
    sizes = [int(module.weight.shape[0]) for _, module in model.named_modules()
             if isinstance(module, torch.nn.Embedding) or getattr(module, "original_name", "") == "Embedding"]
    return max(1, min([DEFAULT_INT_HIGH, *sizes]))


def _plans(specs: Sequence[InputSpec]) -> tuple[FeedPlan, ...]:
    if any(dim is None for spec in specs for dim in spec.shape):
        return tuple(FeedPlan(*plan) for plan in PROOF_PLANS)
    data = next((spec.concrete_shape() for spec in specs if len(spec.shape) >= 2), (1, 1))
    return (FeedPlan(data[0], data[1], True),)


def _prove(model: onnx.ModelProto, source: Any, specs: Sequence[InputSpec], *, atol: float) -> ParityReport:
    """Parity at several batch sizes and lengths (and padded lengths), merged into one report."""
    reports = []
    for seed, plan in enumerate(_plans(specs), start=1):
        feeds, expected = first_accepted(specs, plan, lambda feeds: _run_torch(source, feeds), seed=seed,
                                         int_high=_int_high(source))
        reports.append(parity.check(model, feeds, expected, atol=atol,  # type: ignore[arg-type]
                                    origin=f"random, seed {seed}, {plan.describe()}"))
    merged = ParityReport(
        outputs=[max(group, key=lambda out: out.max_abs) for group in zip(*(r.outputs for r in reports), strict=True)],
        atol=atol, passed=True, inputs=[item for r in reports for item in r.inputs], runtime=reports[0].runtime,
    )
    parity.store(model, merged)
    return merged


def _finish(onnx_model: onnx.ModelProto, model: Any, specs: Sequence[InputSpec], layers: list[RecurrentLayer],
            params: dict[str, np.ndarray], *, atol: float, say: Progress) -> tuple[onnx.ModelProto, ParityReport, list[dict[str, Any]]]:
    """Annotate and prove the exported model; a packed-sequence model is tried trimmed first, then as is."""
    trimmed = trim_to_longest(onnx_model)
    candidates = [trimmed, onnx_model] if trimmed is not None else [onnx_model]
    for index, candidate in enumerate(candidates):
        try:
            say(f"converting: annotating {len(layers)} recurrent layer(s)")
            entries = annotate(candidate, layers, params)
            say("verifying: parity against PyTorch")
            return candidate, _prove(candidate, model, specs, atol=atol), entries
        except parity.ParityError:
            if index == len(candidates) - 1:
                raise
    raise AssertionError("unreachable")


def convert(
    source: Any,
    *,
    inputs: list[InputSpec] | None = None,
    example_inputs: Sequence[Any] | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = parity.DEFAULT_ATOL,
    progress: Progress | None = None,
    exporter: str = "auto",
    trust_pickle: bool = False,
) -> ConversionResult:
    """Convert an nn.Module, ScriptModule, ExportedProgram or a path to one of them.

    ``trust_pickle`` lets a file written by ``torch.save(model)`` be unpickled (see load).
    """
    say = progress or (lambda message: None)
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    say("loading")
    model = load(source, trust_pickle=trust_pickle) if isinstance(source, (str, Path)) else source
    is_program = isinstance(model, torch.export.ExportedProgram)
    is_script = isinstance(model, torch.jit.ScriptModule)
    if not is_program and not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(f"a {type(model).__qualname__} is not a PyTorch model")
    if not is_program:
        model.eval()
    specs = list(inputs) if inputs else default_specs(model, example_inputs)
    if inputs:
        check_inputs(model, specs, strict_names=isinstance(source, (str, Path)))
    params = parameters_of(model)
    layers = recurrent_layers(params)
    if example_inputs is not None:
        args = tuple(example_inputs)
    elif is_program and model.example_inputs:
        args = tuple(model.example_inputs[0])
    else:
        feeds, _ = _trace_feeds(model, specs)
        args = tuple(torch.from_numpy(value) for value in feeds.values())
    trace_feeds = {spec.name: np.asarray(arg) for spec, arg in zip(specs, args, strict=True)}
    with cell_calls(model) as calls:
        first = _run_torch(model, trace_feeds)
    loops = stepped(calls)
    layers += [cell_layer(record) for record in loops]
    outputs = ["output"] if len(first) == 1 else [f"output_{index}" for index in range(len(first))]

    attempts = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    if is_script and exporter == "auto":
        attempts = ["torchscript"]  # torch.export cannot trace a ScriptModule
    elif loops and exporter == "auto":
        attempts = ["torchscript", "dynamo"]  # torch.export specializes a loop's range(x.size(1)) to the traced length
    failures: list[str] = []
    refusals: list[UnsupportedModelError] = []  # what we refuse (a cell loop...) outranks an exporter's failure
    for name in attempts:
        say(f"tracing with the {name} exporter")
        try:
            exporter_fn = _export_dynamo if name == "dynamo" else _export_torchscript
            exported = exporter_fn(model, args, specs, outputs, opset)
            if loops:
                say(f"converting: fusing the loop(s) over {', '.join(record.label for record in loops)}")
                try:
                    exported = fuse_cell_loops(exported, loops, trace_feeds, params)
                except CellFusionError as exc:
                    raise UnsupportedModelError(refusal(exc.record or loops[0], str(exc))) from exc
            if is_script or is_program:
                refuse_unrolled_cells(exported, params)
            actual_opset = next(op.version for op in exported.opset_import if op.domain in ("", "ai.onnx"))
            if actual_opset != opset:
                raise ExportCheckError(f"it produced opset {actual_opset} instead of {opset}")
            onnx_model, report, entries = _finish(exported, model, specs, layers, params, atol=atol, say=say)
        except Exception as exc:  # every failure is recorded: in the error, or in the kept model's metadata
            failures.append(f"{name} exporter: {type(exc).__name__}: {exc}")
            if isinstance(exc, UnsupportedModelError):
                refusals.append(exc)
            if name == attempts[-1]:
                if refusals:
                    raise refusals[0] from exc
                if loops:  # fused, but not proven
                    raise UnsupportedModelError(refusal(
                        loops[0], "fused, it does not match PyTorch at other lengths, as when the loop runs a fixed "
                        f"number of steps ({'; '.join(failures)})")) from exc
                raise UnsupportedModelError("; ".join(failures)) from exc
            continue
        parity.set_metadata(onnx_model.metadata_props, SOURCE_KEY, json.dumps({
            "framework": FRAMEWORK, "version": torch.__version__, "exporter": name, "rejected": failures,
        }))
        return ConversionResult(model=onnx_model, parity=report, annotations=entries)
    raise AssertionError("unreachable")


def _trace_feeds(model: Any, specs: Sequence[InputSpec]) -> tuple[dict[str, np.ndarray], object]:
    try:
        dynamic = any(dim is None for spec in specs for dim in spec.shape)
        plan = FeedPlan(*TRACE_PLAN) if dynamic else _plans(specs)[0]
        return first_accepted(specs, plan, lambda feeds: _run_torch(model, feeds), seed=0, int_high=_int_high(model))
    except UnsupportedModelError:
        raise
    except Exception as exc:
        raise UnsupportedModelError(
            f"the model does not run on inputs {', '.join(map(str, specs))} (-1 = dynamic; its "
            f"forward({', '.join(forward_arguments(model)[0]) if not isinstance(model, torch.export.ExportedProgram) else '...'})): "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ) from exc
