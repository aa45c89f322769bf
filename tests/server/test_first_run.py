"""What a new user meets first: where models live (never inside the package), what the startup and poll logs
say."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from server.app import build_service
from server.core.errors import FailedPrecondition
from server.core.poller import RepositoryPoller
from server.core.repository import bundled_repository, default_repository, user_repository
from server.settings import Settings
from tests.support import EXAMPLES, ServerProcess, copy_repository, scale_model


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


@dataclass
class DefaultRepositoryServer(ServerProcess):
    """The server as `make serve` starts it: no --model-repository."""

    def command(self) -> list[str]:
        cmd = super().command()
        i = cmd.index("--model-repository")
        return cmd[:i] + cmd[i + 2:]


def test_default_repository_is_the_users_not_the_package(tmp_path: Path) -> None:
    bundled_before = tree_digest(EXAMPLES)
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    home.mkdir()
    data = xdg / "modelbridge" / "repository"
    server = DefaultRepositoryServer(tmp_path / "log", env={"HOME": str(home), "XDG_DATA_HOME": str(xdg)}).start()
    try:
        log = server.log()
        assert f"models live in {data} (user repository, created and seeded with the bundled examples)" in log
        assert f"REST on 127.0.0.1:{server.http_port}, gRPC on 127.0.0.1:{server.grpc_port}," in log
        assert set(tree_digest(data)) == set(bundled_before)       # seeded by copy
        up = httpx.put(f"{server.url}/v2/repository/models/uploaded/versions/1",
                       content=scale_model(3.0).SerializeToString(), timeout=60)
        assert up.status_code == 201, up.text
        config = {"max_batch_size": 2, "dynamic_batching": {"max_queue_delay_microseconds": 100}}
        load = httpx.post(f"{server.url}/v2/repository/models/lstm_tiny/load",
                          json={"parameters": {"config": json.dumps(config)}}, timeout=60)
        assert load.status_code == 200, load.text
        assert httpx.get(f"{server.url}/v2/models/lstm_tiny/config").json()["max_batch_size"] == 2
    finally:
        assert server.stop() == 0
    assert (data / "uploaded" / "1" / "model.onnx").is_file()
    assert json.loads((data / "lstm_tiny" / "config.json").read_text()) == config
    assert tree_digest(EXAMPLES) == bundled_before, "the package's bundled repository changed"

    # Without XDG_DATA_HOME: ~/.local/share. And a disabled gRPC port is said so.
    server = DefaultRepositoryServer(tmp_path / "log2", env={"HOME": str(home), "XDG_DATA_HOME": ""},
                                     extra_args=["--grpc-port", "0"]).start()
    try:
        assert f"models live in {home / '.local/share/modelbridge/repository'}" in server.log()
        assert f"REST on 127.0.0.1:{server.http_port}, gRPC off, metrics on" in server.log()
    finally:
        assert server.stop() == 0


def test_bundled_repository_is_never_written() -> None:
    service = build_service(Settings(model_repository=str(bundled_repository())))
    assert service.repository.read_only
    # Refused up front, over the API (before the upload would be checked: these bytes are no model) ...
    with pytest.raises(FailedPrecondition, match="read-only"):
        service.upload_version("uploaded", 1, b"not a model")
    with pytest.raises(FailedPrecondition, match="read-only"):
        service.load("lstm_tiny", config_text='{"max_batch_size": 2}')
    # ... and by the repository itself.
    with pytest.raises(FailedPrecondition, match="read-only"):
        service.repository.publish_version("uploaded", 1, {"model.onnx": b"x"})
    with pytest.raises(FailedPrecondition, match="read-only"):
        service.repository.write_config("lstm_tiny", "{}", json_form=True)
    assert not (bundled_repository() / "uploaded").exists()


def test_default_repository_falls_back_to_read_only_examples(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    root, how = default_repository({"XDG_DATA_HOME": str(blocker), "HOME": str(tmp_path)})
    assert root == bundled_repository() and "read-only" in how and str(blocker) in how
    # A relative XDG_DATA_HOME is ignored, as the XDG spec says.
    assert user_repository({"XDG_DATA_HOME": "rel", "HOME": "/h"}) == Path("/h/.local/share/modelbridge/repository")


def test_poll_log_says_loaded_for_new_and_reloaded_for_changed(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    repo = copy_repository(tmp_path / "repo", ["add_sub"])
    service = build_service(Settings(model_repository=str(repo)))
    poller = RepositoryPoller(service, interval=1)
    poller.baseline()
    service.start()
    caplog.set_level(logging.INFO, logger="modelbridge.poller")
    shutil.copytree(EXAMPLES / "lstm_tiny", repo / "lstm_tiny")
    shutil.copytree(repo / "add_sub" / "1", repo / "add_sub" / "2")
    for _ in range(2):   # a change is acted on once two scans agree
        poller.poll_once()
    messages = [r.getMessage() for r in caplog.records]
    assert "poll: loaded model lstm_tiny" in messages
    assert "poll: reloaded model add_sub" in messages
    assert "poll: reloaded model lstm_tiny" not in messages
