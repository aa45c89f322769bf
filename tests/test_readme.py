"""README.md as tested documentation: every ```bash / ```sh / ```python / ```js / ```ts block runs as printed.

The blocks run in README order in one scratch directory, as a reader following the README would run them (a
later block may use a file an earlier one wrote), against a live server this test starts on free loopback
ports with a copy of the bundled examples and administration open on loopback (what `make serve` gives).
The only change made to a block is the port: 127.0.0.1:8000 / localhost:8001 / ...:8002 become this
server's REST, gRPC and metrics ports. The scratch directory has `.venv` (this interpreter's environment),
`examples/` and `scripts/` of the checkout, and `node_modules/@modelbridge/client` (clients/js), so:

- bash / sh: `bash -euo pipefail`, the venv's bin first on PATH;
- python: this interpreter, the checkout first on PYTHONPATH;
- js: an ES module run by node; `@modelbridge/client` resolves to clients/js;
- ts: compiled by clients/js's TypeScript (strict) against clients/js/types, then run as js.

Blocks tagged ```console, ```text (output samples, Docker, long runs), ```html and the other
NOT_EXECUTED tags are not run; ```pbtxt blocks are parsed as Triton model configs (a config shown in the
README is one the server accepts); a block with no tag or an unknown one fails the convention test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from server.core.model_config import parse_config_text
from tests.support import ROOT, ServerProcess, copy_repository

README = ROOT / "README.md"
JS = ROOT / "clients" / "js"
EXECUTED = {"bash", "sh", "python", "js", "ts"}
NOT_EXECUTED = {"console", "text", "html", "json", "yaml", "toml", "ini", "conf", "dockerfile", "nginx", "proto",
                "diff", "promql", "xml", "csv", "pbtxt"}
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
PORTS = re.compile(r"\b(127\.0\.0\.1|localhost):800([012])\b")
BLOCK_TIMEOUT = 180


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    line: int

    @property
    def id(self) -> str:
        return f"README.md:{self.line}:{self.lang}"


def readme_blocks(text: str) -> list[Block]:
    return [Block(m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


BLOCKS = readme_blocks(README.read_text(encoding="utf-8"))
RUNNABLE = [b for b in BLOCKS if b.lang in EXECUTED]


def test_every_block_follows_the_convention() -> None:
    bad = [f"{b.id} (tag {b.lang!r})" for b in BLOCKS if b.lang not in EXECUTED | NOT_EXECUTED]
    assert not bad, (f"fenced blocks must be tagged {sorted(EXECUTED)} (run by this test) or "
                     f"{sorted(NOT_EXECUTED)} (not run): {bad}")
    assert "<!--" in README.read_text(encoding="utf-8").split("\n## ")[0], "the convention comment at the top is gone"


@pytest.mark.parametrize("block", [b for b in BLOCKS if b.lang == "pbtxt"],
                         ids=[b.id for b in BLOCKS if b.lang == "pbtxt"])
def test_readme_model_config_parses(block: Block) -> None:
    parse_config_text(block.code, json_form=False, source=block.id)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(copy_repository(tmp_path_factory.mktemp("readme-server") / "repo")).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("readme")
    (work / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    for name in ("examples", "scripts"):
        (work / name).symlink_to(ROOT / name, target_is_directory=True)
    (work / "node_modules" / "@modelbridge").mkdir(parents=True)
    (work / "node_modules" / "@modelbridge" / "client").symlink_to(JS, target_is_directory=True)
    return work


def _env(work: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.prefix) / "bin")
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}", "VIRTUAL_ENV": sys.prefix,
            "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}".rstrip(":"), "MODELBRIDGE_PYTHON": sys.executable,
            "NODE_NO_WARNINGS": "1"}


def _ported(code: str, server: ServerProcess) -> str:
    ports = {"0": server.http_port, "1": server.grpc_port, "2": server.metrics_port}
    return PORTS.sub(lambda m: f"{m.group(1)}:{ports[m.group(2)]}", code)


def _command(block: Block, code: str, work: Path) -> list[str]:
    stem = f"readme_{block.line}"
    if block.lang in ("bash", "sh"):
        return ["bash", "-euo", "pipefail", "-c", code]
    if block.lang == "python":
        (work / f"{stem}.py").write_text(code)
        return [sys.executable, f"{stem}.py"]
    if block.lang == "js":
        (work / f"{stem}.mjs").write_text(code)
        return ["node", f"{stem}.mjs"]
    (work / f"{stem}.mts").write_text(code)
    tsc = JS / "node_modules" / "typescript" / "bin" / "tsc"
    if not tsc.exists():
        pytest.fail("```ts blocks need clients/js's typescript (run `make js`)")
    compiled = subprocess.run(
        ["node", str(tsc), "--strict", "--target", "es2022", "--module", "nodenext", "--moduleResolution",
         "nodenext", "--skipLibCheck", "--outDir", "ts-out", f"{stem}.mts"],
        cwd=work, capture_output=True, text=True, timeout=BLOCK_TIMEOUT, check=False)
    assert compiled.returncode == 0, f"{block.id}: tsc failed:\n{compiled.stdout}{compiled.stderr}"
    return ["node", f"ts-out/{stem}.mjs"]


@pytest.mark.parametrize("block", RUNNABLE, ids=[b.id for b in RUNNABLE])
def test_readme_block_runs_as_printed(block: Block, server: ServerProcess, workdir: Path) -> None:
    if block.lang in ("js", "ts") and not (JS / "node_modules" / "onnxruntime-web").is_dir():
        pytest.fail("```js blocks need clients/js installed (run `make js`)")
    code = _ported(block.code, server)
    run = subprocess.run(_command(block, code, workdir), cwd=workdir, env=_env(workdir), capture_output=True,
                         text=True, timeout=BLOCK_TIMEOUT, check=False)
    assert run.returncode == 0, (f"{block.id} exited {run.returncode}\n--- block ---\n{code}\n--- stdout ---\n"
                                 f"{run.stdout[-4000:]}\n--- stderr ---\n{run.stderr[-4000:]}")


def test_blocks_leave_the_checkout_alone() -> None:
    """Nothing a README block does writes into the checkout (they run in a scratch folder)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "examples", "server"],
                            cwd=ROOT, capture_output=True, text=True, check=False).stdout
    written = [line for line in status.splitlines() if line[3:].startswith(("examples/", "server/examples/"))]
    assert not written, written
