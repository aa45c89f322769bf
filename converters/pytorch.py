"""PyTorch -> ONNX: nn.Module (Python API), TorchScript ``.pt``, ExportedProgram ``.pt2``.

nn.LSTM / nn.GRU / nn.RNN become fused ONNX LSTM / GRU / RNN nodes (layout 0).  The dynamo exporter
is tried first; its model is kept only if every recurrent layer is fused, the opset is the one asked
for and it matches PyTorch at two different sizes of every dynamic dimension (it has been seen to
bake a traced sequence length into a Reshape).  Otherwise the TorchScript exporter is used, checked
the same way.  Each fused node is matched, by value, to the PyTorch parameters that feed it.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from converters import DEFAULT_OPSET, parity, recurrent
from converters.annotations import GATE_ORDERS, annotate_recurrent_node
from converters.parity import ParityReport
from converters.result import ConversionResult
from converters.specs import InputSpec
from converters.weights import resolve, resolve_optional

FRAMEWORK = "pytorch"
SOURCE_KEY = "modelbridge.source"
EXPORTERS = ("auto", "dynamo", "torchscript")
# source gate order and source gate -> ONNX gate, per ONNX op
TORCH_GATES: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "LSTM": (("i", "f", "g", "o"), {"i": "i", "f": "f", "g": "c", "o": "o"}),
    "GRU": (("r", "z", "n"), {"r": "r", "z": "z", "n": "h"}),
    "RNN": (("h",), {"h": "i"}),
}
_OP_BY_GATES = {4: "LSTM", 3: "GRU", 1: "RNN"}
_WEIGHT_NAME = re.compile(r"^(?P<prefix>(?:.*\.)?)weight_ih_l(?P<layer>\d+)$")

Progress = Callable[[str], None]


class UnsupportedModelError(ValueError):
    """A PyTorch source or layer this converter cannot turn into ONNX faithfully (names which)."""


class ExportCheckError(RuntimeError):
    """An exporter's model failed our checks (not fused, wrong opset, or parity)."""


@dataclass(frozen=True)
class RecurrentLayer:
    """One layer of an nn.LSTM/GRU/RNN, as seen in the parameter names."""

    module: str
    layer: int
    op: str
    directions: tuple[str, ...]
    variables: dict[str, str] = field(hash=False)

    @property
    def label(self) -> str:
        return f"nn.{self.op} {self.module or '<root>'!r} layer {self.layer}"


def load(path: str | Path) -> Any:
    """A TorchScript module (.pt), an ExportedProgram (.pt2) or a pickled nn.Module."""
    source = Path(path)
    if not source.exists():
        raise UnsupportedModelError(f"{str(source)!r} does not exist")
    if source.suffix == ".pt2":
        return torch.export.load(str(source))
    try:
        return torch.jit.load(str(source), map_location="cpu")
    except RuntimeError:
        pass
    loaded = torch.load(str(source), map_location="cpu", weights_only=False)
    if isinstance(loaded, torch.nn.Module):
        return loaded
    if isinstance(loaded, dict):
        raise UnsupportedModelError(
            f"{source.name} holds a state_dict (weights without the architecture); save the model with "
            "torch.jit.save (TorchScript) or torch.export.save (.pt2), or pass the nn.Module to the Python API"
        )
    raise UnsupportedModelError(f"{source.name} holds a {type(loaded).__qualname__}, not a PyTorch model")


def parameters_of(model: Any) -> dict[str, np.ndarray]:
    if isinstance(model, torch.export.ExportedProgram):
        items = model.state_dict.items()
    else:
        items = model.state_dict().items()
    return {name: value.detach().cpu().numpy() for name, value in items if isinstance(value, torch.Tensor)}


def recurrent_layers(params: dict[str, np.ndarray]) -> list[RecurrentLayer]:
    """Every nn.LSTM/GRU/RNN layer, found by its ``weight_ih_l{k}`` parameters."""
    layers = []
    for name in params:
        match = _WEIGHT_NAME.match(name)
        if not match:
            continue
        prefix, layer = match["prefix"], int(match["layer"])
        module = prefix.rstrip(".")
        if f"{prefix}weight_hr_l{layer}" in params:
            raise UnsupportedModelError(
                f"nn.LSTM {module!r} uses proj_size (weight_hr_l{layer}); ONNX LSTM has no projection"
            )
        hidden = params[f"{prefix}weight_hh_l{layer}"].shape[1]
        op = _OP_BY_GATES.get(params[name].shape[0] // hidden)
        if op is None:
            raise UnsupportedModelError(f"{module!r}: weight_ih_l{layer} has a shape no LSTM/GRU/RNN has")
        directions = ("forward", "reverse") if f"{prefix}weight_ih_l{layer}_reverse" in params else ("forward",)
        variables = {}
        for direction in directions:
            suffix = f"l{layer}" + ("_reverse" if direction == "reverse" else "")
            for role, stem in (("W", "weight_ih"), ("R", "weight_hh"), ("Wb", "bias_ih"), ("Rb", "bias_hh")):
                if f"{prefix}{stem}_{suffix}" in params:
                    variables[f"{direction}.{role}"] = f"{prefix}{stem}_{suffix}"
        layers.append(RecurrentLayer(module, layer, op, directions, variables))
    return layers


def expected_weights(layer: RecurrentLayer, params: dict[str, np.ndarray]) -> tuple[np.ndarray, ...]:
    """The ONNX (W, R, B) this layer's parameters become."""
    order, gate_map = TORCH_GATES[layer.op]
    per_direction = []
    for direction in layer.directions:
        weight = params[layer.variables[f"{direction}.W"]]
        hidden = weight.shape[0] // len(order)
        parts = {}
        for role in ("W", "R", "Wb", "Rb"):
            name = layer.variables.get(f"{direction}.{role}")
            parts[role] = recurrent.split_rows(
                params[name] if name else np.zeros(len(order) * hidden, weight.dtype), order
            )
        per_direction.append({gate: {role: parts[role][gate] for role in parts} for gate in order})
    return recurrent.to_onnx_weights(layer.op, per_direction, gate_map)


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


def _export_dynamo(model: Any, args: tuple[Any, ...], specs: Sequence[InputSpec], outputs: list[str], opset: int) -> onnx.ModelProto:
    kwargs: dict[str, Any] = {}
    if not isinstance(model, torch.export.ExportedProgram):
        kwargs["dynamic_shapes"] = tuple(
            {axis: torch.export.Dim.AUTO for axis, dim in enumerate(spec.shape) if dim is None} for spec in specs
        )
        kwargs["input_names"] = [spec.name for spec in specs]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
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


def annotate(model: onnx.ModelProto, layers: list[RecurrentLayer], params: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Match every fused node to its PyTorch layer by value and annotate it; refuse what is not fused."""
    looping = sorted({node.op_type for node in model.graph.node if node.op_type in ("Loop", "Scan")})
    if layers and looping:
        raise ExportCheckError(f"the graph holds {'/'.join(looping)} instead of fused recurrent ops")
    nodes = [node for node in model.graph.node if node.op_type in GATE_ORDERS]
    entries, used = [], set()
    for layer in layers:
        want = expected_weights(layer, params)
        for index, node in enumerate(nodes):
            if index in used or node.op_type != layer.op:
                continue
            inputs = list(node.input) + [""] * 4
            bias = resolve_optional(model, inputs[3])
            got = [resolve(model, inputs[1]), resolve(model, inputs[2]),
                   np.zeros_like(want[2]) if bias is None else bias]
            if all(a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-7) for a, b in zip(got, want, strict=True)):
                break
        else:
            found = ", ".join(sorted({node.op_type for node in model.graph.node})) or "nothing"
            raise ExportCheckError(f"{layer.label} did not come out as a fused ONNX {layer.op} node (graph ops: {found})")
        used.add(index)
        layout = next((attr.i for attr in node.attribute if attr.name == "layout"), 0)
        if layout != 0:
            raise ExportCheckError(f"{layer.label} was exported with layout={layout}; onnxruntime-web needs layout 0")
        order, gate_map = TORCH_GATES[layer.op]
        entries.append(annotate_recurrent_node(
            model, node, framework=FRAMEWORK, layer=layer.module, variables=layer.variables,
            source_gate_order=order, gate_map=gate_map,
            notes=f"torch.nn.{layer.op} layer {layer.layer}; B = [bias_ih, bias_hh] per direction",
        ))
    stray = [node.name or node.op_type for index, node in enumerate(nodes) if index not in used]
    if stray:
        raise ExportCheckError(f"fused nodes {stray} match no nn.LSTM/GRU/RNN parameters")
    return entries


def _prove(model: onnx.ModelProto, source: Any, specs: Sequence[InputSpec], *, atol: float) -> ParityReport:
    """Parity at two sizes of every dynamic dimension (other than the traced one), merged into one report."""
    sizes = (2, 5) if any(dim is None for spec in specs for dim in spec.shape) else (2,)
    reports = []
    for seed, size in enumerate(sizes, start=1):
        feeds = parity.random_feeds(specs, seed=seed, dynamic=size)
        reports.append(parity.check(model, feeds, _run_torch(source, feeds), atol=atol,
                                    origin=f"random normal, seed {seed}, dynamic dims = {size}"))
    merged = ParityReport(
        outputs=[max(group, key=lambda out: out.max_abs) for group in zip(*(r.outputs for r in reports), strict=True)],
        atol=atol, passed=True, inputs=[item for r in reports for item in r.inputs], runtime=reports[0].runtime,
    )
    parity.store(model, merged)
    return merged


def convert(
    source: Any,
    *,
    inputs: list[InputSpec] | None = None,
    example_inputs: Sequence[Any] | None = None,
    opset: int = DEFAULT_OPSET,
    atol: float = parity.DEFAULT_ATOL,
    progress: Progress | None = None,
    exporter: str = "auto",
) -> ConversionResult:
    """Convert an nn.Module, ScriptModule, ExportedProgram or a path to one of them."""
    say = progress or (lambda message: None)
    if exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; choose one of {', '.join(EXPORTERS)}")
    say("loading")
    model = load(source) if isinstance(source, (str, Path)) else source
    is_program = isinstance(model, torch.export.ExportedProgram)
    is_script = isinstance(model, torch.jit.ScriptModule)
    if not is_program and not isinstance(model, torch.nn.Module):
        raise UnsupportedModelError(f"a {type(model).__qualname__} is not a PyTorch model")
    if not is_program:
        model.eval()
    specs = list(inputs) if inputs else _default_specs(model, example_inputs)
    params = parameters_of(model)
    layers = recurrent_layers(params)
    if example_inputs is not None:
        args = tuple(example_inputs)
    elif is_program:
        args = tuple(model.example_inputs[0]) if model.example_inputs else ()
    else:
        args = tuple(torch.from_numpy(v) for v in parity.random_feeds(specs, seed=0, dynamic=3).values())
    first = _run_torch(model, {spec.name: np.asarray(arg) for spec, arg in zip(specs, args, strict=True)})
    outputs = ["output"] if len(first) == 1 else [f"output_{index}" for index in range(len(first))]

    attempts = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    if is_script and exporter == "auto":
        attempts = ["torchscript"]  # torch.export cannot trace a ScriptModule
    failures = []
    for name in attempts:
        say(f"tracing with the {name} exporter")
        try:
            exporter_fn = _export_dynamo if name == "dynamo" else _export_torchscript
            onnx_model = exporter_fn(model, args, specs, outputs, opset)
            actual_opset = next(op.version for op in onnx_model.opset_import if op.domain in ("", "ai.onnx"))
            if actual_opset != opset:
                raise ExportCheckError(f"it produced opset {actual_opset} instead of {opset}")
            say(f"converting: annotating {len(layers)} recurrent layer(s)")
            entries = annotate(onnx_model, layers, params)
            say("verifying: parity against PyTorch")
            report = _prove(onnx_model, model, specs, atol=atol)
        except Exception as exc:  # every failure is recorded: in the error, or in the kept model's metadata
            failures.append(f"{name} exporter: {type(exc).__name__}: {exc}")
            if name == attempts[-1]:
                raise UnsupportedModelError("; ".join(failures)) from exc
            continue
        parity.set_metadata(onnx_model.metadata_props, SOURCE_KEY, json.dumps({
            "framework": FRAMEWORK, "version": torch.__version__, "exporter": name, "rejected": failures,
        }))
        return ConversionResult(model=onnx_model, parity=report, annotations=entries)
    raise AssertionError("unreachable")


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
