"""SLOW (a minute or two): `pip install .` from a fresh `git clone` of HEAD serves a working /ui.

What a pip user gets: the committed tree only (no server/ui/vendor, no node_modules), built by pip into a new
virtualenv without system site-packages (the pip cache is reused), then that installed `modelbridge` serving
/ui in headless Chromium, with the server and onnxruntime-web in the page agreeing. The package build runs
npm in clients/js to make the /ui assets (setup.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.browser_support import CHROMIUM, JS, TOLERANCE, run_browser
from tests.support import ROOT, ServerProcess, copy_repository

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]   # pip may download the serving deps


@dataclass
class InstalledServer(ServerProcess):
    """The `modelbridge` of another virtualenv, importing nothing from this checkout."""

    venv: Path = Path()

    def command(self) -> list[str]:
        cmd = super().command()
        return [str(self.venv / "bin" / "modelbridge"), *cmd[3:]]   # drops `python -m server.cli`


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def test_pip_install_from_a_clean_clone_serves_the_ui(tmp_path: Path) -> None:
    missing = [w for w, ok in (("git", shutil.which("git")), ("npm", shutil.which("npm")), ("chromium", CHROMIUM.exists()),
                               ("clients/js/node_modules (make js)", (JS / "node_modules" / "playwright-core").is_dir()))
               if not ok]
    if missing:
        pytest.fail("this test needs: " + ", ".join(missing))
    clone, venv = tmp_path / "clone", tmp_path / "venv"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=120)
    assert not (clone / "server" / "ui" / "vendor").exists(), "the /ui assets are committed: nothing to test"
    env = _clean_env()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    pip = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(clone)],
                         capture_output=True, text=True, timeout=1200, env=env, check=False)
    assert pip.returncode == 0, f"pip install . failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}"
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import server; print(server.__file__)"],
                           capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout.strip()
    assert where.startswith(str(venv)), f"the installed package is not the one imported: {where}"
    assert (Path(where).parent / "ui" / "vendor" / "modelbridge.js").is_file(), "the wheel has no /ui assets"

    proc = InstalledServer(copy_repository(tmp_path / "repo", ["lstm_tiny"]), venv=venv,
                           env={"PYTHONPATH": "", "HOME": str(tmp_path)})
    proc.start()
    try:
        result = run_browser({"url": proc.url, "models": [],
                              "screenshot": {"model": "lstm_tiny", "path": str(tmp_path / "ui.png")}}, tmp_path)
        unknown = run_browser({"url": proc.url, "models": [],
                               "screenshot": {"model": "no_such_model", "path": str(tmp_path / "unknown.png")}},
                              tmp_path)
    finally:
        proc.stop()
    shot = result["screenshot"]
    assert shot["state"] == "done", f"/ui of the installed wheel: {shot['text']}\n{result['console']}"
    assert shot["ui"]["comparison"]["maxDiff"] <= TOLERANCE, shot["ui"]["comparison"]
    # /ui?model=<unknown> says the model does not exist instead of showing the page as if all were well.
    assert unknown["screenshot"]["state"] == "error", unknown["screenshot"]
    assert "'no_such_model' does not exist" in unknown["screenshot"]["text"], unknown["screenshot"]["text"]
