"""Model control "poll" mode: follow the repository on disk, as Triton's --model-control-mode=poll does.

Every `interval` seconds the poller fingerprints each model folder (config file and every file under
each version folder: size, mtime, inode). A model whose fingerprint differs from the one it was loaded
with is reloaded, which serves new version folders, drops removed ones and applies a changed config.
A change is acted on only once two consecutive scans agree, so a version folder still being copied in
is not loaded half-written. A failed reload keeps the loaded versions serving. A model folder that
disappears is unloaded. The core swaps versions in one assignment, so in-flight requests finish on the
version they started on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from server.core.errors import ModelBridgeError
from server.core.service import InferenceService

log = logging.getLogger("modelbridge.poller")

Fingerprint = tuple[tuple[str, int, int, int], ...]


def fingerprint(model_dir: Path) -> Fingerprint:
    """What a reload depends on: every file of the model folder with its size, mtime and inode."""
    out: list[tuple[str, int, int, int]] = []
    for dirpath, dirnames, filenames in os.walk(model_dir):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if fname.startswith("."):
                continue  # temporary files of an atomic config write
            path = os.path.join(dirpath, fname)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue  # removed while scanning; the next scan sees the settled state
            out.append((os.path.relpath(path, model_dir), st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


class RepositoryPoller:
    def __init__(self, service: InferenceService, *, interval: float) -> None:
        self.service = service
        self.interval = interval
        self._loaded: dict[str, Fingerprint] = {}   # what each model was (re)loaded from
        self._seen: dict[str, Fingerprint] = {}     # the previous scan

    def scan(self) -> dict[str, Fingerprint]:
        repo = self.service.repository
        return {name: fingerprint(repo.model_dir(name)) for name in repo.model_names()}

    def baseline(self) -> None:
        """Record the repository as it is before the startup load, so later changes are seen."""
        self._loaded = self._seen = self.scan()

    def poll_once(self) -> list[str]:
        """One scan; returns the models it reloaded or unloaded."""
        current = self.scan()
        acted: list[str] = []
        for name, fp in current.items():
            if fp == self._loaded.get(name) or fp != self._seen.get(name):
                continue  # unchanged, or still changing: wait for the next scan
            verb = "reload" if name in self._loaded else "load"   # a changed model, or a new one
            self._loaded[name] = fp  # even if the reload fails: retry only after the next change
            acted.append(name)
            try:
                self.service.load_from_repository(name, keep_serving=True)
                log.info("poll: %sed model %s", verb, name)
            except ModelBridgeError as exc:
                log.warning("poll: model %s failed to %s: %s", name, verb, exc.message)
        for name in sorted(set(self._loaded) - set(current)):
            del self._loaded[name]
            acted.append(name)
            self.service.drop(name)
            log.info("poll: model %s left the repository; unloaded", name)
        self._seen = current
        return acted

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.interval)
                return
            except TimeoutError:
                pass
            try:
                await asyncio.to_thread(self.poll_once)
            except Exception:  # a scan error (e.g. an unreadable folder) must not end polling
                log.exception("poll: repository scan failed")
