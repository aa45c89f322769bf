"""kill -9 in the middle of an upload — while the candidate is being checked, and while it is being written —
then restart on the same repository: the previous version serves, and no partial version is visible."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.security.conftest import ADMIN_KEY, bearer, keyed_server
from tests.security.test_uploads import X, _sandbox_children
from tests.support import ServerProcess, copy_repository, scale_model

BIG = 40 << 20


def _repo(tmp_path: Path) -> Path:
    repo = copy_repository(tmp_path / "repo", ["add_sub"])
    (repo / "scaler" / "1").mkdir(parents=True)
    (repo / "scaler" / "1" / "model.onnx").write_bytes(scale_model(2.0).SerializeToString())
    return repo


def _upload_in_background(proc: ServerProcess, version: int, body: bytes,
                          answers: list[str] | None = None) -> threading.Thread:
    def put() -> None:
        try:
            answer = httpx.put(f"{proc.url}/v2/repository/models/scaler/versions/{version}", content=body,
                               headers=bearer(ADMIN_KEY), timeout=120)
            if answers is not None:
                answers.append(f"{answer.status_code} {answer.text[:200]}")
        except httpx.HTTPError:
            pass   # the server dies under it: that is the point

    t = threading.Thread(target=put, daemon=True)
    t.start()
    return t


def _kill9(proc: ServerProcess) -> None:
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGKILL)
    proc.proc.wait(10)


def _after_restart(repo: Path) -> tuple[ServerProcess, list[float], list[dict]]:
    proc = keyed_server(repo, inference_key=False).start()
    out = httpx.post(proc.url + "/v2/models/scaler/infer", json=X, timeout=30)
    assert out.status_code == 200, out.text
    index = httpx.post(proc.url + "/v2/repository/index", headers=bearer(ADMIN_KEY)).json()
    return proc, out.json()["outputs"][0]["data"], [m for m in index if m["name"] == "scaler"]


def test_kill9_while_the_candidate_is_checked(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    proc = keyed_server(repo, inference_key=False).start()
    try:
        t = _upload_in_background(proc, 2, scale_model(3.0, pad_bytes=BIG).SerializeToString())
        deadline = time.monotonic() + 60
        while not (children := _sandbox_children(proc.proc.pid)) and time.monotonic() < deadline:
            time.sleep(0.005)
        assert children, "the checker never started"
        _kill9(proc)
        t.join(30)
        # the orphaned checker dies with the server (PR_SET_PDEATHSIG), it does not run on
        deadline = time.monotonic() + 10
        while Path(f"/proc/{children[0]}").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not Path(f"/proc/{children[0]}").exists() or b"Z" in Path(f"/proc/{children[0]}/stat").read_bytes()
    finally:
        proc.stop()
    assert sorted(p.name for p in (repo / "scaler").iterdir()) == ["1"]
    restarted, data, index = _after_restart(repo)
    try:
        assert data == [2, 4, 6]
        assert [m["version"] for m in index] == ["1"]
        assert not (repo / ".staging").exists() or not any((repo / ".staging").iterdir())
    finally:
        restarted.stop()


@pytest.mark.parametrize("version", [1, 2], ids=["replacing the serving version", "adding a version"])
def test_kill9_while_the_candidate_is_written(tmp_path: Path, version: int) -> None:
    repo = _repo(tmp_path)
    old = (repo / "scaler" / "1" / "model.onnx").read_bytes()
    new = scale_model(3.0, pad_bytes=BIG).SerializeToString()
    proc = keyed_server(repo, inference_key=False).start()
    staging = repo / ".staging"
    caught = False
    answers: list[str] = []
    try:
        t = _upload_in_background(proc, version, new, answers)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and t.is_alive():
            try:
                written = [f for f in staging.rglob("*") if f.is_file()]
            except FileNotFoundError:
                written = []
            if written:
                caught = True
                break
            time.sleep(0.001)   # leave the CPU to the server on a loaded 2-core machine
        _kill9(proc)
        t.join(30)
    finally:
        proc.stop()
    assert caught, f"the upload finished before its staging file was seen: {answers}"
    visible = sorted(p.name for p in (repo / "scaler").iterdir())
    assert visible in (["1"], ["1", "2"]), visible
    for v in visible:   # whatever is visible is whole: the old bytes or the new ones, never a prefix
        assert (repo / "scaler" / v / "model.onnx").read_bytes() in (old, new)
    restarted, data, index = _after_restart(repo)
    try:
        # Caught during the write: the swap had not happened, so the previous version is what serves.
        assert data == [2, 4, 6] or (data == [3, 6, 9] and len(visible) == version), (data, visible)
        assert [m["version"] for m in index] == [visible[-1]]
        assert not staging.exists() or not any(staging.iterdir())
    finally:
        restarted.stop()
    os.sync()
