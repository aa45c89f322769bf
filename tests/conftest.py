from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ServerProcess, copy_repository


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
