"""In Chromium: a fused LSTM fed sequence_lens and initial states by model inputs.

torch.onnx's export of an nn.LSTM over a PackedSequence with (h0, c0) inputs (INT64 `lengths`, sorted
by TopK; states gathered into that order), served by our server. The page sends the same lengths and
states through the server (REST) and through onnxruntime-web, and runs the node in the plain-JS gates
with the sequence_lens and states the graph computed for it; all agree within 1e-5.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.browser_support import (
    CHROMIUM,
    JS,
    TOLERANCE,
    VENDOR,
    compare,
    job_tensor,
    probe_model,
    run_browser,
)
from tests.support import ServerProcess


@pytest.fixture(scope="module")
def packed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, dict]]:
    pytest.importorskip("torch")
    if not (CHROMIUM.exists() and (VENDOR / "modelbridge.js").is_file() and shutil.which("node")):
        pytest.fail("browser tests need chromium, node and server/ui/vendor (run `make js` and `make browser`)")
    made = tmp_path_factory.mktemp("packed")
    subprocess.run([sys.executable, str(JS / "test" / "fixtures" / "packed_lstm.py"), str(made)], check=True,
                   capture_output=True)
    version = made / "repo" / "packed_lstm" / "1"
    version.mkdir(parents=True)
    shutil.copy(made / "packed_lstm.onnx", version / "model.onnx")
    proc = ServerProcess(made / "repo").start()
    yield proc, json.loads((made / "packed_lstm.json").read_text())
    proc.stop()


def test_lengths_and_states_in_the_browser_and_the_js_gates(packed_server: tuple[ServerProcess, dict],
                                                           tmp_path: Path) -> None:
    server, fixture = packed_server
    inputs = [{"name": name, "datatype": t["datatype"], "shape": t["shape"], "data": t["data"]}
              for name, t in fixture["inputs"].items()]
    answer = httpx.post(f"{server.url}/v2/models/packed_lstm/infer", json={"inputs": inputs}, timeout=30)
    assert answer.status_code == 200, answer.text
    reference = {"packed_lstm": {o["name"]: o for o in answer.json()["outputs"]}}
    probe = probe_model(server.repository / "packed_lstm" / "1" / "model.onnx")
    assert probe is not None and probe["nodes"][0]["sequence_lens"] is not None
    job = {"name": "packed_lstm", "device": "wasm", "inputs": [job_tensor(t) for t in inputs], "recurrent": probe}
    result = run_browser({"url": server.url, "models": [job]}, tmp_path)
    report, failures = compare(result, [job], reference)
    print("\n" + "\n".join(report))
    assert not failures, "\n".join(failures) + "\n" + "\n".join(result["console"])
    (gates,) = result["models"][0]["gates"]
    assert gates["op"] == "LSTM" and set(gates["diffs"]) == {"Y", "Y_h", "Y_c"}


def test_ui_page_feeds_lengths_within_the_sequence(packed_server: tuple[ServerProcess, dict], tmp_path: Path) -> None:
    """/ui?model=packed_lstm: the sample inputs give the lengths input values the node accepts (from the gates
    wiring), so server and browser both answer and agree; arbitrary integers there made both refuse the request."""
    server, _ = packed_server
    result = run_browser({"url": server.url, "models": [],
                          "screenshot": {"model": "packed_lstm", "path": str(tmp_path / "ui.png")}}, tmp_path)
    shot = result["screenshot"]
    assert shot["state"] == "done", f"/ui?model=packed_lstm: {shot['text']}\n{result['console']}"
    assert shot["ui"]["comparison"]["maxDiff"] <= TOLERANCE, shot["ui"]["comparison"]
