"""Helpers of the browser tests: the real server for them, page jobs built from model metadata, recurrent
probes, the Chromium driver (clients/js/scripts/browser-parity.mjs) and a small PNG decoder.

Needs Debian's chromium (/usr/bin/chromium, `make browser`) and clients/js installed (`make js`, which
also builds server/ui/vendor).
"""

from __future__ import annotations

import base64
import json
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.support import ROOT, ServerProcess, copy_repository

JS = ROOT / "clients" / "js"
VENDOR = ROOT / "server" / "ui" / "vendor"
CHROMIUM = Path("/usr/bin/chromium")
TOLERANCE = 1e-5
RECURRENT_OPS = ("LSTM", "GRU", "RNN")


@pytest.fixture(scope="module")
def browser_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    missing = [what for what, ok in (
        (f"{CHROMIUM} (run `make browser`)", CHROMIUM.exists()),
        ("node (Node.js >= 20)", shutil.which("node") is not None),
        ("clients/js/node_modules (run `make js`)", (JS / "node_modules" / "playwright-core").is_dir()),
        ("server/ui/vendor/modelbridge.js (run `make js`)", (VENDOR / "modelbridge.js").is_file()),
    ) if not ok]
    if missing:
        pytest.fail("browser tests need: " + ", ".join(missing))
    proc = ServerProcess(copy_repository(tmp_path_factory.mktemp("browser") / "repo")).start()
    yield proc
    proc.stop()


# -- inputs -------------------------------------------------------------------------------------

def concrete_shape(shape: list[int]) -> list[int]:
    return [d if d >= 0 else (1 if k == 0 else 5) for k, d in enumerate(shape)]


def sample(datatype: str, shape: list[int], rng: np.random.Generator) -> list[Any]:
    n = int(np.prod(shape))
    if datatype.startswith("FP") or datatype == "BF16":
        return rng.uniform(-1, 1, n).astype(np.float16 if datatype == "FP16" else np.float32).astype(float).tolist()
    if datatype == "BOOL":
        return rng.integers(0, 2, n).astype(bool).tolist()
    if datatype == "BYTES":
        return [f"s{k}-{rng.integers(1000)}" for k in range(n)]
    low = 0 if datatype.startswith("UINT") else -50
    return rng.integers(low, 100, n).tolist()


def job_tensor(tensor: dict[str, Any]) -> dict[str, Any]:
    """64-bit integers travel to the page as strings (JSON numbers lose digits beyond 2^53)."""
    if tensor["datatype"] in ("INT64", "UINT64"):
        return {**tensor, "data": [str(v) for v in tensor["data"]]}
    return tensor


# -- recurrent probes ---------------------------------------------------------------------------

def probe_model(path: Path) -> dict[str, Any] | None:
    """A copy of the model exposing each recurrent node's X, states and outputs as graph outputs."""
    model = onnx.load(path)
    graph = model.graph
    if not any(node.op_type in RECURRENT_OPS for node in graph.node):
        return None
    inits = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    graph_inputs = {i.name for i in graph.input} - set(inits)
    typed = onnx.shape_inference.infer_shapes(model)
    elem = {v.name: v.type.tensor_type.elem_type for v in [*typed.graph.value_info, *typed.graph.input, *typed.graph.output]}
    outputs = {o.name for o in graph.output}

    def expose(name: str) -> dict[str, Any]:
        if name not in outputs:
            graph.output.append(helper.make_tensor_value_info(name, elem.get(name, TensorProto.FLOAT), None))
            outputs.add(name)
        return {"output": name}

    def ref(name: str) -> dict[str, Any] | None:
        if not name:
            return None
        if name in inits:
            return {"values": inits[name].astype(float).ravel().tolist(), "shape": list(inits[name].shape)}
        return {"input": name} if name in graph_inputs else expose(name)

    nodes = []
    for index, node in enumerate(n for n in graph.node if n.op_type in RECURRENT_OPS):
        inputs = list(node.input) + [""] * (8 - len(node.input))
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        assert layout == 0, f"{path}: node {node.name} has layout=1, which onnxruntime-web rejects"
        keys = ["Y", "Y_h", "Y_c"][: 3 if node.op_type == "LSTM" else 2]
        while len(node.output) < len(keys):
            node.output.append("")
        for k, key in enumerate(keys):
            if not node.output[k]:
                node.output[k] = f"mb_probe_{index}_{key}"
        nodes.append({
            "index": index, "name": node.name, "op": node.op_type,
            "x": ref(inputs[0]), "sequence_lens": ref(inputs[4]), "initial_h": ref(inputs[5]),
            "initial_c": ref(inputs[6]) if node.op_type == "LSTM" else None,
            "outputs": {key: expose(node.output[k])["output"] for k, key in enumerate(keys)},
        })
    return {"onnx_b64": base64.b64encode(model.SerializeToString()).decode(), "nodes": nodes}


# -- the page -----------------------------------------------------------------------------------

def run_browser(job: dict[str, Any], tmp: Path) -> dict[str, Any]:
    (tmp / "job.json").write_text(json.dumps(job))
    done = subprocess.run(
        ["node", str(JS / "scripts" / "browser-parity.mjs"), str(tmp / "job.json"), str(tmp / "result.json")],
        check=False, cwd=JS, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, f"browser driver failed:\n{done.stdout}\n{done.stderr}"
    return json.loads((tmp / "result.json").read_text())


def png_pixels(path: Path) -> np.ndarray:
    """Decodes an 8-bit, non-interlaced RGB/RGBA PNG (what Chromium's screenshots are)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    assert header is not None
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0, f"unexpected PNG format {header}"
    bpp = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(height, 1 + width * bpp)
    out = np.zeros((height, width * bpp), dtype=np.int32)
    prev = np.zeros(width * bpp, dtype=np.int32)
    for y in range(height):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int32)
        row = line.copy()
        if kind == 2:
            row = (line + prev) & 0xFF
        elif kind in (1, 3, 4):
            for x in range(width * bpp):  # byte-serial filters depend on the bytes just decoded
                left = row[x - bpp] if x >= bpp else 0
                up, corner = prev[x], prev[x - bpp] if x >= bpp else 0
                if kind == 1:
                    pred = left
                elif kind == 3:
                    pred = (left + up) // 2
                else:
                    p = left + up - corner
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                    pred = left if pa <= pb and pa <= pc else (up if pb <= pc else corner)
                row[x] = (line[x] + pred) & 0xFF
        out[y], prev = row, row
    return out.reshape(height, width, bpp)[:, :, :3]


def build_jobs(server: ServerProcess, *, device: str | None = None, probes: bool = True,
               only: list[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Page jobs for the loaded models (inputs from their metadata) and the server's answers over REST."""
    url = server.url
    names = sorted({m["name"] for m in httpx.get(f"{url}/v2/models/stats").json()["model_stats"]})
    assert names, "the example repository is empty"
    rng = np.random.default_rng(5)
    models: list[dict[str, Any]] = []
    reference: dict[str, dict[str, Any]] = {}
    for name in names if only is None else [n for n in names if n in only]:
        meta = httpx.get(f"{url}/v2/models/{name}").json()
        inputs = [
            {"name": i["name"], "datatype": i["datatype"], "shape": (shape := concrete_shape(i["shape"])),
             "data": sample(i["datatype"], shape, rng)}
            for i in meta["inputs"]
        ]
        # A stateful model gets its whole sequence in one request, from zero state (server and page alike).
        state = httpx.get(f"{url}/v2/models/{name}/config").json().get("sequence_batching", {}).get("state", [])
        parameters = {"sequence_id": len(models) + 1, "sequence_start": True, "sequence_end": True} if state else None
        answer = httpx.post(f"{url}/v2/models/{name}/infer", json={"inputs": inputs, "parameters": parameters or {}},
                            timeout=30)
        assert answer.status_code == 200, f"{name}: {answer.text}"
        reference[name] = {o["name"]: o for o in answer.json()["outputs"]}
        version = str(max(int(v) for v in meta["versions"]))
        job: dict[str, Any] = {"name": name, "inputs": [job_tensor(t) for t in inputs]}
        if device:
            job["device"] = device
        if parameters:
            job["parameters"] = parameters
        probe = probe_model(server.repository / name / version / "model.onnx") if probes else None
        if probe:
            batch = inputs[0]["shape"][0]
            probe["extra_inputs"] = [
                {"name": s["input_name"], "datatype": s["data_type"].removeprefix("TYPE_"),
                 "shape": [batch, *s["dims"]], "data": [0] * (batch * int(np.prod(s["dims"])))}
                for s in state
            ]
            job["recurrent"] = probe
        models.append(job)
    return models, reference


def compare(result: dict[str, Any], models: list[dict[str, Any]],
            reference: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """(one report line per model, failures): the page's outputs against the server's REST answers."""
    report, failures = [], []
    for got in result["models"]:
        name = got["name"]
        if "error" in got:
            failures.append(f"{name}: {got['error']}")
            continue
        worst = 0.0
        got["auto_outputs"] = got["auto"]["outputs"]
        for side in ("server", "browser", "auto_outputs"):
            assert [o["name"] for o in got[side]] == list(reference[name]), f"{name} {side}: output names"
            for out in got[side]:
                ref = reference[name][out["name"]]
                assert out["datatype"] == ref["datatype"] and out["shape"] == ref["shape"], f"{name} {out['name']}"
                if ref["datatype"] == "BYTES":
                    assert out["data"] == ref["data"], f"{name} {side} {out['name']}"
                    continue
                diff = float(np.max(np.abs(np.asarray(out["data"], dtype=np.float64) - np.asarray(ref["data"], dtype=np.float64)),
                                    initial=0.0))
                if ref["datatype"] not in ("FP16", "FP32", "FP64", "BF16"):
                    assert diff == 0, f"{name} {side} {out['name']}: integers differ"
                if side != "server":
                    worst = max(worst, diff)
                elif diff > 0:
                    failures.append(f"{name}: the page's REST client got {out['name']} off by {diff}")
        gate_worst = max((d for g in got["gates"] for d in g["diffs"].values()), default=None)
        if worst > TOLERANCE:
            failures.append(f"{name}: onnxruntime-web vs server max |diff| {worst:.3g}")
        if gate_worst is not None and gate_worst > TOLERANCE:
            failures.append(f"{name}: JS gates vs onnxruntime-web max |diff| {gate_worst:.3g} ({got['gates']})")
        gates = "" if gate_worst is None else f", JS gates ({len(got['gates'])} node(s)) {gate_worst:.2e}"
        devices = got["device"] if got["auto"]["device"] == got["device"] else f"{got['device']}, auto: {got['auto']['device']}"
        report.append(f"  {name:<24} onnxruntime-web ({devices}) vs server {worst:.2e}{gates}")
        if "recurrent" in next(m for m in models if m["name"] == name):
            assert got["gates"], f"{name}: recurrent model but no gate comparison ran"
    return report, failures
