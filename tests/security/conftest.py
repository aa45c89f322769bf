"""Servers with API keys for the security tests; keys go in through the environment, as operators should."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, copy_repository

ADMIN_KEY = "admin-6f1c2e9a4b7d4a0c9e3f"
INFERENCE_KEY = "infer-2b8d7c1e5a9f4e6b8c0d"
WRONG_KEY = "wrong-0000000000000000000"


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def keyed_server(repo: Path, *, extra: list[str] | None = None, inference_key: bool = True) -> ServerProcess:
    env = {"MODELBRIDGE_ADMIN_KEYS": ADMIN_KEY}
    if inference_key:
        env["MODELBRIDGE_INFERENCE_KEYS"] = INFERENCE_KEY
    return ServerProcess(repo, extra_args=extra or [], env=env, allow_unauthenticated_admin=False)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Admin and inference keys configured; the repository is this module's own."""
    repo = copy_repository(tmp_path_factory.mktemp("secured") / "repo", ["add_sub", "lstm_tiny"])
    proc = keyed_server(repo).start()
    yield proc
    proc.stop()
