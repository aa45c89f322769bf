"""A web page on another origin uses the JS client against the server: allowed with --cors-origins
(remote inference, and the model downloaded and revalidated by ETag for the in-page runner), refused by
the browser when CORS is off (the default)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.browser_support import CHROMIUM, JS, TOLERANCE, VENDOR, run_browser
from tests.support import ROOT, ServerProcess, copy_repository, free_port

# The other site's page: its own copy of the bundle, the modelbridge server somewhere else.
PAGE = """<!doctype html><meta charset="utf-8"><pre id="out"></pre>
<script type="module">
  import { InferenceClient, createLocalRunner, ConnectionError } from './vendor/modelbridge.js';
  const out = document.getElementById('out');
  const verdict = {};
  try {
    const client = new InferenceClient({ baseUrl: new URLSearchParams(location.search).get('server') });
    const x = [{ name: 'x', datatype: 'FP32', shape: [1, 3, 2], data: [0, 0.5, 1, 1.5, 2, 2.5] }];
    const server = await client.infer('lstm_tiny', x);
    const runner = createLocalRunner(client);
    const model = await runner.load('lstm_tiny');
    const again = await runner.load('lstm_tiny');
    const browser = await model.infer(x);
    const [a, b] = [server.output('y').data, browser.output('y').data];
    Object.assign(verdict, { ok: true, maxDiff: Math.max(...a.map((v, i) => Math.abs(v - b[i]))),
                             etag: model.etag, firstSource: model.source, secondSource: again.source });
  } catch (err) {
    Object.assign(verdict, { ok: false, error: err.name, message: err.message });
  }
  out.textContent = JSON.stringify(verdict);
  out.dataset.done = 'yes';
</script>
"""


_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm"}


class _Site(SimpleHTTPRequestHandler):
    def guess_type(self, path: str | os.PathLike[str]) -> str:
        # module scripts are refused unless served as JavaScript, whatever the host's mime.types says
        return _TYPES.get(Path(path).suffix) or super().guess_type(path)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def other_site(tmp_path: Path) -> Iterator[str]:
    if not CHROMIUM.exists() or not (VENDOR / "modelbridge.js").is_file() or not (JS / "node_modules").is_dir():
        pytest.fail("browser tests need chromium (`make browser`) and clients/js installed (`make js`)")
    site = tmp_path / "site"
    shutil.copytree(VENDOR, site / "vendor")
    (site / "index.html").write_text(PAGE)
    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(_Site, directory=str(site)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join()


def test_other_origin_works_with_cors_and_is_refused_without(other_site: str, tmp_path: Path) -> None:
    help_text = subprocess.run([sys.executable, "-m", "server.cli", "serve", "--help"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    if "--cors-origins" not in help_text:
        pytest.skip("this server has no CORS setting")
    repo = copy_repository(tmp_path / "repo", ["lstm_tiny"])
    allowed = ServerProcess(repo, extra_args=["--cors-origins", other_site]).start()
    closed = ServerProcess(repo).start()
    try:
        pages = [f"{other_site}/index.html?server={allowed.url}", f"{other_site}/index.html?server={closed.url}"]
        result = run_browser({"url": allowed.url, "models": [], "pages": pages}, tmp_path)
    finally:
        allowed.stop()
        closed.stop()
    with_cors, without = (result["pages"][p] for p in pages)
    assert with_cors["ok"], f"cross-origin page failed: {with_cors}\n{json.dumps(result['console'])}"
    assert with_cors["maxDiff"] <= TOLERANCE
    assert with_cors["etag"], "the ETag header is not readable cross-origin (Access-Control-Expose-Headers)"
    assert (with_cors["firstSource"], with_cors["secondSource"]) in (("network", "cache"), ("cache", "cache"))
    assert not without["ok"] and without["error"] == "ConnectionError", without
