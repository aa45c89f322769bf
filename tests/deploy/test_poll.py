"""--model-control-mode poll: the server follows the repository on disk while serving traffic."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson

from tests.deploy.helpers import OPEN_ADMIN, add_sub_body, add_sub_ok
from tests.support import ServerProcess, copy_repository


class Load(threading.Thread):
    """Sends add_sub requests back to back; records each response's status and served version."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.results: list[tuple[int, str]] = []
        self.errors: list[str] = []

    def run(self) -> None:
        body = orjson.dumps(add_sub_body(1))
        with httpx.Client(base_url=self.url, timeout=30) as http:
            while not self.stop.is_set():
                try:
                    r = http.post("/v2/models/add_sub/infer", content=body)
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                    continue
                if r.status_code != 200 or not add_sub_ok(r.json()):
                    self.errors.append(f"{r.status_code}: {r.text[:200]}")
                else:
                    self.results.append((r.status_code, r.json()["model_version"]))

    def latest_version(self) -> str | None:
        return self.results[-1][1] if self.results else None


def wait_for(cond, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def test_poll_mode_picks_up_and_drops_versions_under_load(tmp_path: Path) -> None:
    repo = copy_repository(tmp_path / "repo", ["add_sub"])
    server = ServerProcess(repo, extra_args=["--model-control-mode", "poll", "--repository-poll-secs", "0.2"],
                           env=OPEN_ADMIN)
    server.start()
    load = [Load(server.url) for _ in range(2)]
    try:
        http = httpx.Client(base_url=server.url, timeout=30)
        for t in load:
            t.start()
        wait_for(lambda: all(t.results for t in load), "the load threads are served")
        assert load[0].latest_version() == "1"

        # A new version folder, copied in place (not renamed): served once it has settled.
        shutil.copytree(repo / "add_sub" / "1", repo / "add_sub" / "2")
        wait_for(lambda: all(t.latest_version() == "2" for t in load), "version 2 is served")
        assert http.get("/v2/models/add_sub/versions/2/ready").status_code == 200

        # A changed config is applied: the version policy now keeps every version.
        config = repo / "add_sub" / "config.pbtxt"
        config.write_text(config.read_text() + "\nversion_policy: { all: {} }\n")
        wait_for(lambda: http.get("/v2/models/add_sub/versions/1/ready").status_code == 200,
                 "version 1 is served again under the new policy")
        assert http.get("/v2/models/add_sub/versions/2/ready").status_code == 200

        # A broken push (version 3 is not a model): the reload fails and the loaded versions keep serving.
        (repo / "add_sub" / "3").mkdir()
        (repo / "add_sub" / "3" / "model.onnx").write_bytes(b"not an onnx model")
        wait_for(lambda: "poll: model add_sub failed to reload" in server.log(), "the failed reload is logged")
        seen = sum(len(t.results) for t in load)
        wait_for(lambda: sum(len(t.results) for t in load) > seen + 20, "traffic continues")
        assert http.get("/v2/models/add_sub/versions/3/ready").status_code != 200
        assert http.get("/v2/models/add_sub/versions/2/ready").status_code == 200
        shutil.rmtree(repo / "add_sub" / "3")

        # A removed version folder is unloaded; traffic moves back to version 1 without a failure.
        shutil.rmtree(repo / "add_sub" / "2")
        wait_for(lambda: http.get("/v2/models/add_sub/versions/2/ready").status_code != 200,
                 "version 2 is unloaded")
        seen = sum(len(t.results) for t in load)
        wait_for(lambda: sum(len(t.results) for t in load) > seen + 20, "more traffic after the unload")
        assert all(t.latest_version() == "1" for t in load)

        # The API cannot change what is loaded in poll mode: the repository is the source of truth.
        refused = http.post("/v2/repository/models/add_sub/unload")
        assert refused.status_code == 400 and "model-control-mode=poll" in refused.json()["error"]
        http.close()
    finally:
        for t in load:
            t.stop.set()
        for t in load:
            t.join(30)
        server.stop()
    versions = Counter(v for t in load for _, v in t.results)
    assert [e for t in load for e in t.errors] == [], "requests failed while versions changed"
    assert versions["1"] > 0 and versions["2"] > 0, versions


def test_none_mode_refuses_model_control_requests(tmp_path: Path) -> None:
    server = ServerProcess(copy_repository(tmp_path / "repo", ["add_sub"]),
                           extra_args=["--model-control-mode", "none"], env=OPEN_ADMIN).start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for action in ("load", "unload"):
                r = http.post(f"/v2/repository/models/add_sub/{action}")
                assert r.status_code == 400
                assert f"model {action} is not allowed" in r.json()["error"]
                assert "--model-control-mode=none" in r.json()["error"]
            # Every model still loaded at startup and served.
            r = http.post("/v2/models/add_sub/infer", content=orjson.dumps(add_sub_body(1)))
            assert r.status_code == 200 and add_sub_ok(r.json())
    finally:
        server.stop()
