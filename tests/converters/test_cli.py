"""`modelbridge convert` / `modelbridge gates` as a user runs them: subprocesses on real files."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from converters import gates
from converters.annotations import NODE_METADATA_IR_VERSION, read_annotations, validate
from converters.parity import read as read_parity
from converters.specs import parse_input_spec
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
    assert model.ir_version == NODE_METADATA_IR_VERSION  # not onnx's default 14, which onnxruntime-web refuses
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


def _cli_without(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a process where importing ``module`` fails, as when it is not installed."""
    code = (f"import sys; sys.modules[{module!r}] = None; from converters.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, *args], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(("module", "suffix"), [("torch", ".pt"), ("tensorflow", ".keras"), ("tensorflow", ".pb")])
def test_missing_framework_says_what_to_install(module: str, suffix: str, tmp_path: Path) -> None:
    source = tmp_path / f"model{suffix}"
    source.write_bytes(b"")
    proc = _cli_without(module, "convert", str(source), "-o", str(tmp_path / "m.onnx"), "--input", "x:1,3")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"needs the Python package {module!r}" in proc.stderr
    assert "pip install 'modelbridge[convert]'" in proc.stderr
    api = ("import sys; sys.modules['torch'] = None; import converters\n"
           "try:\n    converters.convert(sys.argv[1])\nexcept converters.FrameworkMissingError as exc:\n    print(exc)")
    if module == "torch":
        proc = subprocess.run([sys.executable, "-c", api, str(source)], check=False, cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert "pip install 'modelbridge[convert]'" in proc.stdout, proc.stderr


def test_wrong_inputs_name_what_the_model_expects(torchscript_file: tuple[Path, nn.Module], tmp_path: Path) -> None:
    from converters import convert
    from converters.pytorch import UnsupportedModelError

    source, model = torchscript_file
    out = str(tmp_path / "x.onnx")
    name = _cli("convert", str(source), "-o", out, "--input", "tokens:-1,-1,3")
    assert name.returncode == 1 and "forward(x) has no input named 'tokens'" in name.stderr
    program = tmp_path / "lstm.pt2"
    torch.export.save(torch.export.export(model, (torch.randn(2, 5, 3),)), program)
    exported = _cli("convert", str(program), "-o", out, "--input", "x:2,5,4")
    assert exported.returncode == 1 and "the ExportedProgram takes inputs x:2,5,3:float32" in exported.stderr
    for proc in (name, exported):
        assert "Traceback" not in proc.stderr
    assert not Path(out).exists()
    # the same checks through the API (the CLI prints these messages as they are)
    with pytest.raises(UnsupportedModelError, match=r"forward\(x\) takes 1 input\(s\); --input gave 2"):
        convert(source, inputs=[parse_input_spec("x:-1,-1,3"), parse_input_spec("h:1,1,1")])
    # a traced module has lost PyTorch's own size checks: onnxruntime names the size it wanted
    with pytest.raises(UnsupportedModelError, match=r"Input W must have shape \{2,16,4\}. Actual:\{2,16,3\}"):
        convert(source, inputs=[parse_input_spec("x:-1,-1,4")], exporter="torchscript")
    with pytest.raises(UnsupportedModelError, match=r"does not run on inputs x:-1,-1,3:int64"):
        convert(source, inputs=[parse_input_spec("x:-1,-1,3:int64")])


def test_pickled_module_is_explained_and_converts_only_when_trusted(tmp_path: Path) -> None:
    torch.manual_seed(8)
    torch.save(Sequence(nn.GRU(3, 4, batch_first=True), 4), tmp_path / "gru.pth")
    args = ("convert", str(tmp_path / "gru.pth"), "-o", str(tmp_path / "gru.onnx"), "--input", "x:-1,-1,3")
    refused = _cli(*args)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    for words in ("whole pickled model", "torch.save(model)", "weights_only=True", "--trust-pickle", ".pt2",
                  "TorchScript", "state_dict"):
        assert words in refused.stderr
    trusted = _cli(*args, "--trust-pickle")
    assert trusted.returncode == 0, trusted.stderr
    assert "GRU from rnn" in trusted.stderr


def test_gates_refuses_files_that_parse_as_empty_protobuf(tmp_path: Path) -> None:
    for name, data in (("empty.onnx", b""), ("config.json", b"{}\n")):
        (tmp_path / name).write_bytes(data)
        proc = _cli("gates", str(tmp_path / name))
        assert proc.returncode == 1 and "is not an ONNX model" in proc.stderr and "Traceback" not in proc.stderr


TF_NOISE = ("oneDNN custom operations", "cuInit", "absl::InitializeLog", "cpu_feature_guard")


@pytest.fixture(scope="module")
def tf_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A Keras 3 file and a TensorFlow SavedModel, each with one LSTM."""
    keras = pytest.importorskip("keras")
    tf = pytest.importorskip("tensorflow")
    folder = tmp_path_factory.mktemp("tf_sources")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((None, 3)), keras.layers.LSTM(4), keras.layers.Dense(2)])
    model.save(folder / "lstm.keras")

    class Served(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.float32, name="x")])
        def __call__(self, x: object) -> object:
            return {"prediction": self.model(x)}

    tf.saved_model.save(Served(), str(folder / "saved"))
    return {"keras": folder / "lstm.keras", "tensorflow": folder / "saved"}


@pytest.mark.parametrize("framework", ["keras", "tensorflow"])
def test_every_converter_writes_an_ir_version_onnxruntime_web_loads(framework: str, tf_sources: dict[str, Path],
                                                                    tmp_path: Path) -> None:
    """TensorFlow's log noise is hidden (Keras run) unless --verbose (SavedModel run); both files carry IR 10."""
    import onnxruntime as ort

    verbose = ("--verbose",) if framework == "tensorflow" else ()
    target = tmp_path / "model.onnx"
    proc = _cli("convert", str(tf_sources[framework]), "-o", str(target), *verbose)
    assert proc.returncode == 0, proc.stderr
    noise = [line for line in TF_NOISE if line in proc.stderr]
    assert (noise != []) if verbose else (noise == []), proc.stderr
    model = onnx.load(target)
    assert model.ir_version == NODE_METADATA_IR_VERSION and read_annotations(model)
    onnx.checker.check_model(model)
    ort.InferenceSession(str(target), providers=["CPUExecutionProvider"])


ORT_WEB = ROOT / "clients" / "js" / "node_modules" / "onnxruntime-web"


@pytest.mark.skipif(not ORT_WEB.is_dir(), reason="clients/js not installed (make js)")
def test_onnxruntime_web_loads_the_converted_file_as_written(
        converted_file: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path) -> None:
    """The IR version the converters write is one onnxruntime-web accepts without the JS client's rewrite."""
    target, _ = converted_file
    script = tmp_path / "load.cjs"
    script.write_text(
        f"const ort = require({str(ORT_WEB)!r}); const fs = require('fs'); ort.env.wasm.numThreads = 1;\n"
        f"ort.InferenceSession.create(fs.readFileSync({str(target)!r})).then(async (session) => {{\n"
        "  const x = new ort.Tensor('float32', new Float32Array(2 * 5 * 3).fill(0.5), [2, 5, 3]);\n"
        "  const out = await session.run({x});\n"
        "  console.log(JSON.stringify(Array.from(out[session.outputNames[0]].data)));\n"
        "}).catch((error) => { console.log('FAILED ' + error); process.exit(1); });\n")
    proc = subprocess.run(["node", str(script)], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import onnxruntime as ort

    (want,) = ort.InferenceSession(str(target)).run(None, {"x": np.full((2, 5, 3), 0.5, np.float32)})
    np.testing.assert_allclose(np.array(json.loads(proc.stdout)), want.ravel(), atol=1e-5)


def test_missing_torch_through_a_failing_import_hook(tmp_path: Path) -> None:
    """Blocked by a sitecustomize import hook (ImportError without a module name): still the install hint."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'torch':\n"
        "            raise ImportError('torch cannot be imported here')\n"
        "sys.meta_path.insert(0, Block())\n")
    (tmp_path / "model.pt").write_bytes(b"")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    proc = subprocess.run([sys.executable, "-m", "converters.cli", "convert", str(tmp_path / "model.pt"), "-o",
                           str(tmp_path / "m.onnx"), "--input", "x:1,3"], check=False, cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "needs the Python package 'torch'" in proc.stderr and "pip install 'modelbridge[convert]'" in proc.stderr
