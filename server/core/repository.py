"""The on-disk model repository in Triton's layout: <root>/<model>/[config.pbtxt]/<version>/model.onnx.

Writes are atomic: a new version is assembled in a hidden staging folder inside the repository
(same filesystem) and published with one rename, so a reader never sees a half-written model.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from server.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from server.core.model_config import CONFIG_FILES, read_config_file

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
_STAGING = ".staging"
MAX_VERSION = 2**63 - 1


def check_model_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            f"invalid model name {name[:140]!r}: use 1-128 letters, digits, '_', '-', '.', no '..', no path separators"
        )
    return name


def check_version(version: str | int) -> int:
    text = str(version)
    if not text.isascii() or not text.isdigit() or len(text) > 19 or int(text) < 1 or int(text) > MAX_VERSION:
        raise InvalidArgument(f"invalid model version {text[:40]!r}: versions are positive integers")
    return int(text)


def check_relative_file(path: str) -> str:
    """A file name inside a version folder, as Triton's `file:<version>/<name>` load parameter gives it."""
    parts = path.split("/")
    if not path or "\x00" in path or "\\" in path or path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise InvalidArgument(f"invalid file path {path[:140]!r} in upload")
    return path


class ModelRepository:
    def __init__(self, root: Path, *, read_only: bool = False) -> None:
        self.root = Path(root).resolve()
        # Read-only: the examples bundled in the package (a source checkout or site-packages) are served,
        # never written; uploads need a repository of the user's (see default_repository).
        self.read_only = read_only
        if not self.root.exists():
            raise NotFound(f"model repository {self.root} does not exist")
        if not self.root.is_dir():
            raise InvalidArgument(f"model repository {self.root} is not a directory")
        try:
            next(os.scandir(self.root), None)
        except OSError as exc:
            raise InvalidArgument(f"cannot read model repository {self.root}: {exc.strerror}") from None

    def check_writable(self) -> None:
        """Refuses a write up front (before an upload is checked) in a read-only repository."""
        if self.read_only:
            raise FailedPrecondition(
                f"model repository {self.root} holds the examples bundled with modelbridge and is read-only; "
                "serve a repository of your own (--model-repository DIR, or the default user repository) to "
                "upload or load models with a config"
            )

    def model_dir(self, name: str) -> Path:
        return self.root / check_model_name(name)

    def model_names(self) -> list[str]:
        return sorted(
            p.name for p in self.root.iterdir()
            if p.is_dir() and not p.name.startswith(".") and _NAME.fullmatch(p.name)
        )

    def versions(self, name: str) -> list[int]:
        d = self.model_dir(name)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir() if p.is_dir() and p.name.isascii() and p.name.isdigit()
                      and len(p.name) <= 19 and int(p.name) > 0)

    def read_config(self, name: str) -> dict[str, Any] | None:
        return read_config_file(self.model_dir(name))

    def model_file(self, name: str, version: int, filename: str = "model.onnx") -> Path:
        return self.model_dir(name) / str(version) / filename

    def exists(self, name: str) -> bool:
        return self.model_dir(name).is_dir()

    def publish_version(
        self, name: str, version: int, files: dict[str, bytes], *, replace: bool = True
    ) -> Path:
        """Write files into <name>/<version>/ atomically. The staging copy is checked by the caller."""
        self.check_writable()
        mdir = self.model_dir(name)
        target = mdir / str(check_version(version))
        if target.exists() and not replace:
            raise AlreadyExists(f"model '{name}' version {version} already exists")
        staging_root = self.root / _STAGING
        staging_root.mkdir(exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{name}-{version}-", dir=staging_root))
        # A new model is staged whole (<stage>/<version>/...) so that it appears with its first version in
        # one rename: a crash never leaves an empty model folder behind.
        fresh = not mdir.exists()
        vdir = stage / str(version) if fresh else stage
        try:
            for rel, data in files.items():
                dest = vdir / check_relative_file(rel)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with open(dest, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            os.chmod(stage, 0o755)   # mkdtemp makes it 0700
            if fresh:
                os.rename(stage, mdir)
            elif target.exists():
                # One atomic exchange where the kernel has it; else old aside, new in (a crash between the
                # two renames would leave the version missing until it is uploaded again).
                if not _exchange(stage, target):
                    old = staging_root / f"old-{stage.name}"
                    os.rename(target, old)
                    os.rename(stage, target)
                    shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(stage, target)
            _fsync_dir(mdir)
            _fsync_dir(self.root)
            return target
        finally:
            if stage.exists():
                shutil.rmtree(stage, ignore_errors=True)

    def write_config(self, name: str, text: str, *, json_form: bool) -> None:
        self.check_writable()
        mdir = self.model_dir(name)
        mdir.mkdir(exist_ok=True)
        fname = "config.json" if json_form else "config.pbtxt"
        tmp = mdir / f".{fname}.tmp"
        tmp.write_text(text, encoding="utf-8")
        for other in CONFIG_FILES:
            if other != fname and (mdir / other).exists():
                (mdir / other).unlink()
        os.replace(tmp, mdir / fname)

    def clean_staging(self) -> None:
        """Leftovers of an interrupted upload are never visible; remove them at startup."""
        if self.read_only:
            return
        shutil.rmtree(self.root / _STAGING, ignore_errors=True)


def bundled_repository() -> Path:
    """The example models shipped inside the package (server/examples/repository)."""
    return Path(__file__).resolve().parent.parent / "examples" / "repository"


def user_repository(env: Mapping[str, str] | None = None) -> Path:
    """Where a user's models live by default: $XDG_DATA_HOME/modelbridge/repository, else
    ~/.local/share/modelbridge/repository (XDG base directories: a relative XDG_DATA_HOME is ignored)."""
    env = os.environ if env is None else env
    base = env.get("XDG_DATA_HOME", "")
    root = Path(base) if base and Path(base).is_absolute() else Path(env.get("HOME") or Path.home()) / ".local" / "share"
    return root / "modelbridge" / "repository"


def default_repository(env: Mapping[str, str] | None = None) -> tuple[Path, str]:
    """The repository served without --model-repository: the user repository, created on first start and
    seeded with a copy of the bundled examples. Returns it and how it came to be, for the startup log.
    Where it cannot be created (a read-only home), the bundled examples are served read-only."""
    target = user_repository(env)
    if target.is_dir():
        return target, "user repository"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        # Copied aside, then renamed into place: a half-copied seed is never served, and of two
        # processes seeding at once (workers) one wins and the other uses its result.
        stage = Path(tempfile.mkdtemp(prefix=".seed-", dir=target.parent))
        try:
            shutil.copytree(bundled_repository(), stage, dirs_exist_ok=True)
            os.chmod(stage, 0o755)
            os.rename(stage, target)
        except OSError:
            if not target.is_dir():
                raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    except OSError as exc:
        return bundled_repository(), f"bundled examples, read-only: cannot create {target}: {exc.strerror}"
    return target, "user repository, created and seeded with the bundled examples"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where that is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
