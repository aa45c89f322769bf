"""Build hook: the wheel carries the /ui assets (server/ui/vendor/), so `pip install .` serves a working /ui.

They are built, not committed: onnxruntime-web's wasm runtime alone is ~27 MB of binary that every
onnxruntime-web bump would add to the history again, and the bundle is reproducible from
clients/js/package-lock.json (`npm ci`, esbuild). So building the package builds them when they are missing
or older than their sources: `npm ci` + `npm run build` in clients/js (Node >= 20 and npm needed, as for
`make js`). Without npm the build stops and says so, rather than ship a wheel whose /ui is broken;
MODELBRIDGE_BUILD_UI=0 builds a wheel without the demo page on purpose (the REST/gRPC server is unaffected).
Builds that provide the assets themselves (the Dockerfile's node stage) find them up to date and run no npm.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

ROOT = Path(__file__).resolve().parent
JS = ROOT / "clients" / "js"
VENDOR = ROOT / "server" / "ui" / "vendor"
ASSETS = ("modelbridge.js", "modelbridge-gates.js", "ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm")


def _stale() -> bool:
    built = [VENDOR / a for a in ASSETS]
    if not all(p.is_file() for p in built):
        return True
    if not JS.is_dir():
        return False  # an sdist that ships the built assets without their sources
    sources = [JS / "package.json", JS / "package-lock.json", *(JS / "src").rglob("*.js"), *(JS / "scripts").glob("*.mjs")]
    oldest = min(p.stat().st_mtime for p in built)
    return any(p.stat().st_mtime > oldest for p in sources if p.is_file())


def build_ui_assets() -> None:
    if os.environ.get("MODELBRIDGE_BUILD_UI", "1") == "0" or not _stale():
        return
    npm = shutil.which("npm")
    if npm is None or not JS.is_dir():
        raise SystemExit(
            "modelbridge: the /ui assets (server/ui/vendor/) are missing and cannot be built here: "
            + ("npm (Node.js >= 20) is not on PATH" if npm is None else f"{JS} is missing")
            + ". Install Node.js and npm, or run `make js` first, or set MODELBRIDGE_BUILD_UI=0 to build without /ui."
        )
    # --ignore-scripts: the package's own prepare script is the build, run once below.
    subprocess.run([npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS, check=True)
    subprocess.run([npm, "run", "build"], cwd=JS, check=True)


class BuildPyWithUI(build_py):
    def run(self) -> None:
        build_ui_assets()
        super().run()


class SdistWithUI(sdist):
    """The sdist carries the built assets (MANIFEST.in), so a wheel built from it needs no npm."""

    def run(self) -> None:
        build_ui_assets()
        super().run()


setup(cmdclass={"build_py": BuildPyWithUI, "sdist": SdistWithUI})
