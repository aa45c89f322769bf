"""`modelbridge convert` / `modelbridge gates` as a user runs them: subprocesses on real files."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from converters import gates
from converters.annotations import read_annotations, validate
from converters.parity import read as read_parity
from tests.converters.torch_models import Sequence

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "converters.cli", *args], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=240)


@pytest.fixture(scope="module")
def torchscript_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, nn.Module]:
    torch.manual_seed(5)
    model = Sequence(nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True), 8).eval()
    path = tmp_path_factory.mktemp("cli") / "lstm.pt"
    torch.jit.trace(model, torch.randn(2, 5, 3)).save(str(path))
    return path, model


@pytest.fixture(scope="module")
def converted_file(torchscript_file: tuple[Path, nn.Module]) -> tuple[Path, subprocess.CompletedProcess[str]]:
    source, _ = torchscript_file
    target = source.with_suffix(".onnx")
    return target, _cli("convert", str(source), "-o", str(target), "--input", "x:-1,-1,3:float32", "--atol", "1e-5")


def test_convert_torchscript_file(converted_file: tuple[Path, subprocess.CompletedProcess[str]],
                                  torchscript_file: tuple[Path, nn.Module]) -> None:
    target, proc = converted_file
    assert proc.returncode == 0, proc.stderr
    for stage in ("loading", "tracing", "converting", "verifying", "writing", "parity passed"):
        assert stage in proc.stderr
    model = onnx.load(target)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("LSTM") == 2 and "Loop" not in ops and "Scan" not in ops
    report = read_parity(model)
    assert report is not None and report.passed and report.atol == 1e-5
    for entry in read_annotations(model):
        validate(entry)
    _, source = torchscript_file
    x = np.random.default_rng(0).normal(size=(3, 9, 3)).astype(np.float32)
    import onnxruntime as ort

    (got,) = ort.InferenceSession(str(target)).run(None, {"x": x})
    np.testing.assert_allclose(got, source(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_gates_json_text_npz(converted_file: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    target, _ = converted_file
    proc = _cli("gates", str(target))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(gates.split_gates(onnx.load(target))))
    text = _cli("gates", str(target), "--format", "text")
    assert "[reverse] gate c (source gate g)" in text.stdout
    assert _cli("gates", str(target), "--format", "npz", "-o", str(tmp_path / "g.npz")).returncode == 0
    archive = np.load(tmp_path / "g.npz")
    first = read_annotations(onnx.load(target))[0]["node"]
    assert archive[f"{first}/forward/f/W"].shape == (4, 3)
    missing = _cli("gates", str(target), "--format", "npz")
    assert missing.returncode == 2 and "give -o" in missing.stderr


def test_cli_errors_name_the_problem(torchscript_file: tuple[Path, nn.Module], tmp_path: Path) -> None:
    source, _ = torchscript_file
    no_inputs = _cli("convert", str(source), "-o", str(tmp_path / "x.onnx"))
    assert no_inputs.returncode == 1
    assert "TorchScript module does not say its inputs" in no_inputs.stderr and "Traceback" not in no_inputs.stderr
    bad_spec = _cli("convert", str(source), "-o", str(tmp_path / "x.onnx"), "--input", "x:1,b")
    assert bad_spec.returncode == 2 and "'b' is not an integer" in bad_spec.stderr
    (tmp_path / "notes.txt").write_text("hello")
    unknown = _cli("convert", str(tmp_path / "notes.txt"), "-o", str(tmp_path / "x.onnx"))
    assert unknown.returncode == 1 and "cannot tell the framework of 'notes.txt'" in unknown.stderr
    stateful = _cli("convert", str(source), "-o", str(tmp_path / "x.onnx"), "--input", "x:-1,-1,3", "--stateful")
    assert stateful.returncode == 1 and "reads the sequence backwards" in stateful.stderr
    not_onnx = _cli("gates", str(tmp_path / "notes.txt"))
    assert not_onnx.returncode == 1 and "is not an ONNX model" in not_onnx.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_cli_imports_no_framework() -> None:
    code = ("import sys, argparse, converters.cli as c; p = argparse.ArgumentParser(); "
            "c.register(p.add_subparsers()); import converters.gates; "
            "print(sorted(m for m in ('torch', 'tensorflow', 'keras') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


def test_npz_round_trip_equals_json(converted_file: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    model = onnx.load(converted_file[0])
    archive = np.load(io.BytesIO(gates.to_npz(model)))
    for node in gates.split_gates(model)["nodes"]:
        for direction in node["directions"]:
            for gate, parts in direction["gates"].items():
                key = f"{node['node']}/{direction['direction']}/{gate}/R"
                np.testing.assert_array_equal(archive[key], np.array(parts["R"], dtype=np.float32))
