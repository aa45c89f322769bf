"""Reading a PyTorch source: files (TorchScript, ExportedProgram, trusted pickles) and the inputs it takes.

``torch.save(model)`` pickles the module: unpickling imports and runs code named in the file, so such a
file is refused (``torch.load(weights_only=True)`` refuses it too) unless the caller trusts it.  Input
specs are checked against what the model says it takes: an ExportedProgram's inputs exactly, a
module's ``forward`` arguments by count (and by name for files).
"""

from __future__ import annotations

import inspect
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from converters.pytorch_layers import UnsupportedModelError
from converters.specs import InputSpec

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


def specs_from_program(program: Any) -> list[InputSpec]:
    specs = []
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta["val"]
        shape = tuple(int(dim) if isinstance(dim, int) else None for dim in value.shape)
        specs.append(InputSpec(node.name, shape, str(value.dtype).removeprefix("torch.")))
    return specs


def forward_arguments(model: Any) -> tuple[list[str], int]:
    """The names forward takes (without self) and how many of them are required."""
    if isinstance(model, torch.jit.ScriptModule):
        arguments = list(model.forward.schema.arguments)[1:]  # type: ignore[attr-defined]
        return [arg.name for arg in arguments], sum(1 for arg in arguments if not arg.has_default_value())
    parameters = [param for param in inspect.signature(model.forward).parameters.values()
                  if param.kind in (param.POSITIONAL_ONLY, param.POSITIONAL_OR_KEYWORD)]
    if any(param.kind == param.VAR_POSITIONAL for param in inspect.signature(model.forward).parameters.values()):
        return [param.name for param in parameters] + ["*args"], len(parameters)
    return [param.name for param in parameters], sum(1 for param in parameters if param.default is param.empty)


def check_inputs(model: Any, specs: Sequence[InputSpec], *, strict_names: bool) -> None:
    """Inputs the model cannot take are refused naming what it expects (names are checked for files)."""
    given = ", ".join(map(str, specs))
    if isinstance(model, torch.export.ExportedProgram):
        expected = specs_from_program(model)
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
    names, required = forward_arguments(model)
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


def default_specs(model: Any, example_inputs: Sequence[Any] | None) -> list[InputSpec]:
    if isinstance(model, torch.export.ExportedProgram):
        return specs_from_program(model)
    if example_inputs is None:
        kind = "TorchScript module" if isinstance(model, torch.jit.ScriptModule) else "nn.Module"
        raise UnsupportedModelError(
            f"a {kind} does not say its inputs: give input specs (--input NAME:SHAPE:DTYPE) or example inputs"
        )
    return [
        InputSpec(f"input_{index}", tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
        for index, tensor in enumerate(example_inputs)
    ]
