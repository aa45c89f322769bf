"""PyTorch -> ONNX: nn.Module (Python API), TorchScript ``.pt``, ExportedProgram ``.pt2``.

nn.LSTM / nn.GRU / nn.RNN become fused ONNX LSTM / GRU / RNN nodes (layout 0).  The dynamo exporter
is tried first; its model is kept only if every recurrent layer is fused, the opset is the one asked
for and it matches PyTorch at two different sizes of every dynamic dimension (it has been seen to
bake a traced sequence length into a Reshape).  Otherwise the TorchScript exporter is used, checked
the same way.  Each fused node is matched, by value, to the PyTorch parameters that feed it.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import json
import logging
import pickle
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from converters import DEFAULT_OPSET, parity
from converters.parity import ParityReport
from converters.pytorch_cells import cell_calls, refusal, stepped
from converters.pytorch_feeds import DEFAULT_INT_HIGH, PROOF_PLANS, TRACE_PLAN, FeedPlan, first_accepted
from converters.pytorch_fuse import CellFusionError, cell_layer, fuse_cell_loop
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
from converters.pytorch_packed import trim_to_longest
from converters.result import ConversionResult
from converters.specs import InputSpec

SOURCE_KEY = "modelbridge.source"
EXPORTERS = ("auto", "dynamo", "torchscript")
Progress = Callable[[str], None]
__all__ = [
    "EXPORTERS", "FRAMEWORK", "TORCH_GATES", "ExportCheckError", "RecurrentLayer", "UnsupportedModelError",
    "annotate", "convert", "expected_weights", "load", "parameters_of", "recurrent_layers",
]


SAVE_INSTEAD = (
    "save instead one of: an ExportedProgram (torch.export.save(torch.export.export(model, example_inputs), "
    "'model.pt2')), TorchScript (torch.jit.save(torch.jit.trace(model, example_inputs), 'model.pt')), or the "
    "state_dict with the model's code, converted through the Python API (converters.convert(model, ...))"
)


def load(path: str | Path, *, trust_pickle: bool = False) -> Any:
    """A TorchScript module (.pt), an ExportedProgram (.pt2), or — only when trusted — a pickled nn.Module.

    ``torch.save(model)`` pickles the module: unpickling it imports and runs code named in the file, so
    it is loaded only with ``trust_pickle`` (and the model's classes importable); otherwise refused with
    what to save instead.
    """
    source = Path(path)
    if not source.exists():
        raise UnsupportedModelError(f"{str(source)!r} does not exist")
    if source.suffix == ".pt2":
        try:
            return torch.export.load(str(source))
        except Exception as exc:
            raise UnsupportedModelError(f"{source.name} is not a torch.export archive: {exc}") from exc
    try:
        return torch.jit.load(str(source), map_location="cpu")
    except RuntimeError:
        pass
    try:
        loaded = torch.load(str(source), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not trust_pickle:
            raise UnsupportedModelError(_pickled_refusal(source)) from exc
        try:
            loaded = torch.load(str(source), map_location="cpu", weights_only=False)
        except (AttributeError, ModuleNotFoundError) as missing:
            raise UnsupportedModelError(
                f"{source.name} is a pickled model whose class cannot be imported here ({missing}); {SAVE_INSTEAD}"
            ) from missing
    except Exception as exc:
        raise UnsupportedModelError(
            f"{source.name} is neither TorchScript, an ExportedProgram nor a torch.save file ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(loaded, torch.nn.Module):
        return loaded
    if isinstance(loaded, dict):
        raise UnsupportedModelError(
            f"{source.name} holds a state_dict (weights without the architecture); {SAVE_INSTEAD}"
        )
    raise UnsupportedModelError(f"{source.name} holds a {type(loaded).__qualname__}, not a PyTorch model")


def _pickled_refusal(source: Path) -> str:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(source))
    except Exception:  # noqa: BLE001 - the list only makes the message more precise
        names = []
    classes = f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else ""
    return (
        f"{source.name} is a whole pickled model{classes}, as torch.save(model) writes it. Loading it would run "
        "code named inside the file (unsafe for a file you did not write; torch.load(weights_only=True) refuses "
        "it) and needs the model's classes importable. If you trust the file, pass --trust-pickle (Python API: "
        f"trust_pickle=True); otherwise {SAVE_INSTEAD}"
    )


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


def _specs_from_program(program: Any) -> list[InputSpec]:
    specs = []
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta["val"]
        shape = tuple(int(dim) if isinstance(dim, int) else None for dim in value.shape)
        specs.append(InputSpec(node.name, shape, str(value.dtype).removeprefix("torch.")))
    return specs


@contextlib.contextmanager
def _quiet_loggers() -> Iterator[None]:
    """The exporter logs its progress and version-conversion notes; our own stages say enough."""
    loggers = [logging.getLogger(name) for name in ("torch", "onnxscript", "onnx_ir")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export_dynamo(model: Any, args: tuple[Any, ...], specs: Sequence[InputSpec], outputs: list[str], opset: int) -> onnx.ModelProto:
    kwargs: dict[str, Any] = {}
    if not isinstance(model, torch.export.ExportedProgram):
        kwargs["dynamic_shapes"] = tuple(
            {axis: torch.export.Dim.AUTO for axis, dim in enumerate(spec.shape) if dim is None} for spec in specs
        )
        kwargs["input_names"] = [spec.name for spec in specs]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), _quiet_loggers():
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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, buffer, dynamo=False,  # type: ignore[arg-type]
                          opset_version=opset, do_constant_folding=True,
                          input_names=[spec.name for spec in specs], output_names=outputs,
                          dynamic_axes={name: axes for name, axes in dynamic_axes.items() if axes})
    return onnx.load_from_string(buffer.getvalue())


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
    specs = list(inputs) if inputs else _default_specs(model, example_inputs)
    if inputs:
        _check_inputs(model, specs, strict_names=isinstance(source, (str, Path)))
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
    refusals: list[UnsupportedModelError] = []  # a cell loop that is not a clean chain, per exporter
    for name in attempts:
        say(f"tracing with the {name} exporter")
        try:
            exporter_fn = _export_dynamo if name == "dynamo" else _export_torchscript
            exported = exporter_fn(model, args, specs, outputs, opset)
            for record in loops:
                say(f"converting: fusing the loop over {record.label}")
                try:
                    exported = fuse_cell_loop(exported, record, trace_feeds, params)
                except CellFusionError as exc:
                    refusals.append(UnsupportedModelError(refusal(record, str(exc))))
                    raise refusals[-1] from exc
            actual_opset = next(op.version for op in exported.opset_import if op.domain in ("", "ai.onnx"))
            if actual_opset != opset:
                raise ExportCheckError(f"it produced opset {actual_opset} instead of {opset}")
            onnx_model, report, entries = _finish(exported, model, specs, layers, params, atol=atol, say=say)
        except Exception as exc:  # every failure is recorded: in the error, or in the kept model's metadata
            failures.append(f"{name} exporter: {type(exc).__name__}: {exc}")
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


def _forward_arguments(model: Any) -> tuple[list[str], int]:
    """The names forward takes (without self) and how many of them are required."""
    if isinstance(model, torch.jit.ScriptModule):
        arguments = list(model.forward.schema.arguments)[1:]  # type: ignore[attr-defined]
        return [arg.name for arg in arguments], sum(1 for arg in arguments if not arg.has_default_value())
    parameters = [param for param in inspect.signature(model.forward).parameters.values()
                  if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)]
    if any(param.kind == param.VAR_POSITIONAL for param in inspect.signature(model.forward).parameters.values()):
        return [param.name for param in parameters] + ["*args"], len(parameters)
    return [param.name for param in parameters], sum(1 for param in parameters if param.default is param.empty)


def _check_inputs(model: Any, specs: Sequence[InputSpec], *, strict_names: bool) -> None:
    """Inputs the model cannot take are refused naming what it expects (names are checked for files)."""
    given = ", ".join(map(str, specs))
    if isinstance(model, torch.export.ExportedProgram):
        expected = _specs_from_program(model)
        wanted = ", ".join(map(str, expected))
        problems = []
        if [spec.name for spec in specs] != [spec.name for spec in expected]:
            problems.append("names differ")
        for got, want in zip(specs, expected, strict=False):
            if len(got.shape) != len(want.shape) or any(
                    w is not None and g is not None and g != w for g, w in zip(got.shape, want.shape, strict=False)):
                problems.append(f"{got.name} has shape {got}, expected {want}")
            elif np.dtype(got.dtype) != np.dtype(want.dtype):
                problems.append(f"{got.name} is {got.dtype}, expected {want.dtype}")
        if problems or len(specs) != len(expected):
            raise UnsupportedModelError(
                f"the ExportedProgram takes inputs {wanted} (-1 = dynamic); --input gave {given}"
                f"{': ' + '; '.join(problems) if problems else ''}")
        return
    names, required = _forward_arguments(model)
    variadic = names[-1:] == ["*args"]
    signature = f"forward({', '.join(names)})"
    if len(specs) < required or (len(specs) > len(names) and not variadic):
        raise UnsupportedModelError(f"the model's {signature} takes {required}"
                                    f"{'' if required == len(names) else f' to {len(names)}'} input(s); "
                                    f"--input gave {len(specs)}: {given}")
    wrong = [spec.name for spec, name in zip(specs, names, strict=False) if name != "*args" and spec.name != name]
    if strict_names and wrong:
        raise UnsupportedModelError(
            f"the model's {signature} has no input named {', '.join(map(repr, wrong))}; "
            f"name the --input after forward's arguments, in order: {', '.join(names)}")


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
            f"forward({', '.join(_forward_arguments(model)[0]) if not isinstance(model, torch.export.ExportedProgram) else '...'})): "
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        ) from exc


def _default_specs(model: Any, example_inputs: Sequence[Any] | None) -> list[InputSpec]:
    if isinstance(model, torch.export.ExportedProgram):
        return _specs_from_program(model)
    if example_inputs is None:
        kind = "TorchScript module" if isinstance(model, torch.jit.ScriptModule) else "nn.Module"
        raise UnsupportedModelError(
            f"a {kind} does not say its inputs: give input specs (--input NAME:SHAPE:DTYPE) or example inputs"
        )
    return [
        InputSpec(f"input_{index}", tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        for index, tensor in enumerate(example_inputs)
    ]
