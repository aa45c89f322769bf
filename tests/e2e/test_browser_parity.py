"""The same model files in headless Chromium and on the server.

For every model of the example repository: the same inputs through the server (REST, from Python and
from the page's JS client) and through onnxruntime-web in the page agree within 1e-5; for recurrent
models every LSTM/GRU/RNN node also runs in the plain-JS gates implementation, fed the node's real
input (exposed from onnxruntime-web by a probe copy of the model) and compared with the node's real
outputs. Then a screenshot of /ui with a model loaded must show drawn content.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.e2e.browser_support import (
    JS,
    TOLERANCE,
    browser_server,
    build_jobs,
    compare,
    png_pixels,
    run_browser,
)
from tests.support import ROOT, ServerProcess, copy_repository

__all__ = ["browser_server"]  # the module-scoped server fixture


def test_server_browser_and_gates_agree(browser_server: ServerProcess, tmp_path: Path) -> None:
    url = browser_server.url
    models, reference = build_jobs(browser_server)
    names = [m["name"] for m in models]
    shot_model = "sine_lstm" if "sine_lstm" in names else next((m["name"] for m in models if "recurrent" in m), names[0])
    result = run_browser({"url": url, "models": models, "quickstart": "/ui/quickstart.html",
                          "screenshot": {"model": shot_model, "path": str(tmp_path / "ui.png")}}, tmp_path)
    console = "\n".join(result["console"])
    foreign = [u for u in result["requests"] if not u.startswith(url + "/") and not u.startswith(("data:", "blob:"))]
    assert not foreign, f"the page fetched from elsewhere than our server: {foreign}"
    assert result["crossOriginIsolated"], "/ui is not cross-origin isolated (COOP/COEP headers)"

    report, failures = compare(result, models, reference)
    print("\nbrowser parity, max |diff| per model:\n" + "\n".join(report))
    print(f"  seconds since the browser started: {result['seconds']}")
    assert not failures, "\n".join(failures) + "\n-- page console --\n" + console

    diff = float(result["quickstart"].rsplit("=", 1)[1])
    assert diff <= TOLERANCE, f"the README quick start page disagrees with the server: {result['quickstart']}"

    shot = result["screenshot"]
    assert shot["state"] == "done", f"/ui did not finish loading {shot_model}: {shot['text']}\n{console}"
    assert shot["ui"]["comparison"]["maxDiff"] <= TOLERANCE
    if shot_model == "sine_lstm":
        assert shot["ui"]["sine"]["maxDiff"] <= TOLERANCE, shot["ui"]["sine"]
    drawn = [c for c in shot["canvases"] if c["ink"] > 0]
    assert drawn, f"no canvas on /ui has drawn pixels: {shot['canvases']}"
    pixels = png_pixels(Path(shot["path"]))
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours > 50, f"the screenshot looks blank ({colours} colours)"
    print(f"  /ui page phases (ms): {shot['ui'].get('ms')}")
    print(f"  /ui screenshot of {shot_model}: {pixels.shape[1]}x{pixels.shape[0]}, {colours} colours, "
          f"{sum(c['ink'] for c in drawn)} drawn canvas pixels in {len(drawn)} canvases")


def test_ui_is_cross_origin_isolated(browser_server: ServerProcess) -> None:
    """onnxruntime-web needs COOP/COEP for threads; the bundle and wasm files are served by us."""
    page = httpx.get(f"{browser_server.url}/ui/")
    assert page.status_code == 200 and "app.js" in page.text
    assert page.headers["cross-origin-opener-policy"] == "same-origin"
    assert page.headers["cross-origin-embedder-policy"] == "require-corp"
    for f in ("vendor/modelbridge.js", "vendor/ort-wasm-simd-threaded.jsep.mjs", "vendor/ort-wasm-simd-threaded.jsep.wasm"):
        answer = httpx.head(f"{browser_server.url}/ui/{f}")
        assert answer.status_code == 200, f


def test_readme_quick_start_is_the_tested_page() -> None:
    """clients/js/README.md shows server/ui/quickstart.html verbatim, the page the browser test runs."""
    page = (ROOT / "server" / "ui" / "quickstart.html").read_text()
    assert page in (JS / "README.md").read_text()


def test_ui_asks_for_the_inference_key_and_then_works(tmp_path: Path) -> None:
    """A server that requires inference keys: /ui shows a key form, and with the key lists and runs models,
    here the stateful lstm_stream, which /ui also streams step by step (server-kept vs page-kept state)."""
    help_text = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--help"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    if "--inference-keys" not in help_text:
        pytest.skip("this server has no API keys")
    key = "browser-test-inference-key-42"
    proc = ServerProcess(copy_repository(tmp_path / "repo", ["lstm_stream"]), extra_args=["--inference-keys", key])
    proc.start()
    try:
        assert httpx.get(f"{proc.url}/v2/models/lstm_stream").status_code == 401
        keyed_job = {"url": proc.url, "key": key, "model": "lstm_stream"}
        result = run_browser({"url": proc.url, "models": [], "keyed": keyed_job}, tmp_path)
    finally:
        proc.stop()
    keyed = result["keyed"]
    assert keyed["before"] == "locked", f"/ui did not ask for a key: {keyed}"
    after = keyed["after"]
    assert after["state"] == "done", f"/ui with the key: {after['text']}\n{result['console']}"
    assert after["ui"]["models"] == ["lstm_stream"]
    assert after["ui"]["comparison"]["maxDiff"] <= TOLERANCE
    assert after["ui"]["stream"]["steps"] == 60 and after["ui"]["stream"]["maxDiff"] <= TOLERANCE, after["ui"]["stream"]
