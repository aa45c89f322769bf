from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, copy_repository


@pytest.fixture(scope="session", autouse=True)
def _user_data_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A server started without --model-repository creates the user repository under XDG_DATA_HOME: in the
    tests that is a temporary folder (inherited by every server they start), never the real home."""
    old = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    yield
    if old is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = old


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real server over a copy of the example repository, shared by read-only tests."""
    repo = copy_repository(tmp_path_factory.mktemp("shared") / "repo")
    proc = ServerProcess(repo).start()
    yield proc
    proc.stop()


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server of the test's own, for tests that change the repository or the server's state."""
    proc = ServerProcess(copy_repository(tmp_path / "repo")).start()
    yield proc
    proc.stop()
