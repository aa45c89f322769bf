"""/ui?model=sine_lstm_stream in headless Chromium: the live sine panel streams a sine one sample per step to
the server (V2 sequence parameters, state kept there) and to onnxruntime-web in the page (state kept there).

The plotted series are read back from the page (window.__liveSine): server and browser agree at every
step, the server's predictions track the sine, the canvas shows them, the stop button really ends the
server's sequence, and the streamed predictions equal whole-sequence requests over the same samples (so the
server carried h/c between the steps instead of answering each sample from a fresh state).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.e2e.browser_support import CHROMIUM, JS, TOLERANCE
from tests.support import ServerProcess, copy_repository

MODEL = "sine_lstm_stream"
STEPS = 40
WARM_UP = 20  # the model was trained on 20-sample windows

# Runs in node: opens the page with the stream model, lets it stream, presses stop, reports what it saw.
DRIVER = """
import { readFileSync, writeFileSync } from 'node:fs';
import { chromium } from %(playwright)s;

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const args = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];
const browser = await chromium.launch({ executablePath: job.chromium, args });
const out = { console: [], requests: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
  page.on('console', (m) => out.console.push(`${m.type()}: ${m.text()}`));
  page.on('pageerror', (e) => out.console.push(`pageerror: ${e.message}`));
  page.on('request', (r) => out.requests.push(r.url()));
  await page.goto(`${job.url}/ui/?model=${job.model}`);
  await page.waitForFunction((n) => window.__liveSine?.error || window.__liveSine?.truth.length >= n, job.steps,
    { timeout: 40000 });
  out.whileRunning = await page.evaluate(() => ({
    running: window.__liveSine.running, toggle: document.getElementById('live-toggle').textContent,
    text: document.getElementById('live-text').textContent,
  }));
  await page.click('#live-toggle');
  await page.waitForFunction(() => !window.__liveSine.running, null, { timeout: 10000 });
  out.live = await page.evaluate(() => window.__liveSine);
  out.text = await page.evaluate(() => document.getElementById('live-text').textContent);
  out.toggle = await page.evaluate(() => document.getElementById('live-toggle').textContent);
  // Drawn pixels of the live canvas, and how many of them are the server's blue / the browser's orange.
  out.canvas = await page.evaluate(() => {
    const c = document.getElementById('live-plot');
    const { data } = c.getContext('2d').getImageData(0, 0, c.width, c.height);
    let ink = 0, blue = 0, orange = 0;
    for (let i = 0; i < data.length; i += 4) {
      const [r, g, b, a] = [data[i], data[i + 1], data[i + 2], data[i + 3]];
      if (a === 0) continue;
      if (r < 240 || g < 240 || b < 240) ink++;
      if (b > 180 && r < 110) blue++;
      if (r > 200 && g > 110 && g < 190 && b < 80) orange++;
    }
    return { ink, blue, orange, visible: c.offsetParent !== null };
  });
} finally {
  await browser.close();
}
writeFileSync(process.argv[3], JSON.stringify(out));
"""


@pytest.fixture(scope="module")
def stream_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    playwright = JS / "node_modules" / "playwright-core" / "index.mjs"
    if not CHROMIUM.exists() or not playwright.is_file():
        pytest.fail(f"browser tests need {CHROMIUM} (`make browser`) and clients/js installed (`make js`)")
    proc = ServerProcess(copy_repository(tmp_path_factory.mktemp("stream") / "repo", [MODEL])).start()
    yield proc
    proc.stop()


def run_page(url: str, tmp: Path) -> dict[str, Any]:
    playwright = (JS / "node_modules" / "playwright-core" / "index.mjs").as_uri()
    (tmp / "driver.mjs").write_text(DRIVER % {"playwright": json.dumps(playwright)})
    (tmp / "job.json").write_text(json.dumps({"url": url, "model": MODEL, "steps": STEPS, "chromium": str(CHROMIUM)}))
    done = subprocess.run(["node", str(tmp / "driver.mjs"), str(tmp / "job.json"), str(tmp / "out.json")],
                          check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"browser driver failed:\n{done.stdout}\n{done.stderr}"
    return json.loads((tmp / "out.json").read_text())


def whole_sequence(url: str, samples: list[float], sequence_id: int) -> float:
    """The prediction after `samples`, all in one request from zero state."""
    answer = httpx.post(f"{url}/v2/models/{MODEL}/infer", timeout=30, json={
        "parameters": {"sequence_id": sequence_id, "sequence_start": True, "sequence_end": True},
        "inputs": [{"name": "sample", "shape": [1, len(samples), 1], "datatype": "FP32", "data": samples}],
    })
    assert answer.status_code == 200, answer.text
    return float(answer.json()["outputs"][0]["data"][0])


def test_live_sine_streams_server_and_browser_side_by_side(stream_server: ServerProcess, tmp_path: Path) -> None:
    url = stream_server.url
    out = run_page(url, tmp_path)
    live, console = out["live"], "\n".join(out["console"])
    assert live["error"] is None, f"the stream failed: {live['error']}\n{console}"
    foreign = [u for u in out["requests"] if not u.startswith(url + "/") and not u.startswith(("data:", "blob:"))]
    assert not foreign, f"the page fetched from elsewhere than our server: {foreign}"

    truth, server, browser = (np.asarray(live[k], dtype=np.float64) for k in ("truth", "server", "browser"))
    n = len(truth)
    assert n >= STEPS and len(server) == n and len(browser) == n, (n, len(server), len(browser))
    assert out["whileRunning"]["running"] and out["whileRunning"]["toggle"] == "Stop", out["whileRunning"]
    assert live["ended"] and not live["running"] and out["toggle"] == "Restart", (live["ended"], out["toggle"])
    # The page streamed a sine 0.1 rad apart, as the model was trained on.
    assert np.allclose(truth, 0.8 * np.sin(0.1 * np.arange(n)), atol=1e-12)

    diffs = np.abs(server - browser)
    assert np.all(diffs <= TOLERANCE), f"server vs browser per step: {diffs.tolist()}"
    assert abs(live["maxDiff"] - diffs.max()) <= 1e-12, "the page's running max is not the series' max"
    shown = float(out["text"].rsplit("=", 1)[1])  # the running max the page shows, in JS's exponent format
    assert abs(shown - diffs.max()) <= 0.01 * diffs.max() + 1e-12, out["text"]

    # server[t] predicts truth[t + 1]: after the warm-up it must follow the sine.
    error = np.abs(server[WARM_UP:-1] - truth[WARM_UP + 1:])
    assert error.mean() < 0.05, f"the server's predictions do not track the sine: mean |error| {error.mean():.3g}"
    # ...and a model answering each sample from a fresh state could not: the same sample, two phases.
    fresh = [whole_sequence(url, [float(truth[t])], 900 + t) for t in (WARM_UP, WARM_UP + 5)]
    assert not np.isclose(fresh[0], server[WARM_UP], atol=0.01) or not np.isclose(fresh[1], server[WARM_UP + 5], atol=0.01)

    canvas = out["canvas"]
    assert canvas["visible"] and canvas["ink"] > 2000 and canvas["blue"] > 200 and canvas["orange"] > 100, canvas

    # The state the server kept across the streamed steps equals the whole sequence in one request, for the
    # last step and along the way.
    checked = sorted({n - 1, *range(9, n, 10)})
    whole = {t: whole_sequence(url, truth[: t + 1].tolist(), 1000 + t) for t in checked}
    state_diff = max(abs(whole[t] - server[t]) for t in checked)
    assert state_diff <= TOLERANCE, {t: (whole[t], server[t]) for t in checked}

    # Stop sent sequence_end: the server no longer knows the sequence.
    again = httpx.post(f"{url}/v2/models/{MODEL}/infer", timeout=30, json={
        "parameters": {"sequence_id": live["sequenceId"]},
        "inputs": [{"name": "sample", "shape": [1, 1, 1], "datatype": "FP32", "data": [0.0]}],
    })
    assert again.status_code == 400 and live["sequenceId"] in again.text, again.text

    step_ms = np.asarray(live["stepMs"])
    print(f"\nlive sine: {n} steps, max |server - browser| {diffs.max():.2e}, server vs whole-sequence requests "
          f"{state_diff:.2e} at steps {checked}, mean |server - truth| after {WARM_UP} steps {error.mean():.4f}, "
          f"step round trip median {np.median(step_ms):.1f} ms, canvas {canvas}")
