"""InferenceService: the one API that REST and gRPC both call. It knows nothing of either."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from server import __version__, logs
from server.core import deadline, model_config, sandbox
from server.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelBridgeError,
    NotFound,
    Unavailable,
)
from server.core.models import LOADING, READY, UNAVAILABLE, ModelEntry, ModelVersion
from server.core.repository import ModelRepository, check_model_name, check_relative_file, check_version
from server.core.runtime import ModelRuntime
from server.core.sequences import SequenceStore, sequence_config, sequence_params, state_pairs
from server.core.types import InferRequest, InferResponse, OutputTensor

log = logging.getLogger("modelbridge.service")

# Only what is implemented: clients such as perf_analyzer decide what to call from this list.
EXTENSIONS = ["binary_tensor_data", "model_repository", "model_configuration", "statistics", "sequence"]


class InferenceService:
    def __init__(
        self, repository: ModelRepository, *, server_name: str = "modelbridge",
        sequences: SequenceStore | None = None,
    ) -> None:
        self.repository = repository
        self.sequences = sequences if sequences is not None else SequenceStore()
        self.server_name = server_name
        self._models: dict[str, ModelEntry] = {}
        self._lock = threading.RLock()   # serialises load/unload/upload; inference never takes it
        self.ready = False
        self.live = True
        # Triton's --model-control-mode: only "explicit" lets API calls change what is loaded.
        self.model_control_mode = "explicit"
        self.sandbox_limits = sandbox.Limits()   # uploaded models are checked in a child process
        self.max_pending_per_model = 4096        # in-flight requests per model version; more -> 503

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, *, load: list[str] | None = None) -> None:
        """Load every model in the repository (or just `load`); a failing model does not stop the rest."""
        self.repository.clean_staging()
        for name in load if load is not None else self.repository.model_names():
            try:
                self.load_from_repository(name)
            except ModelBridgeError as exc:
                log.warning("model %s failed to load: %s", name, exc.message)
        self.ready = True

    def stop(self) -> None:
        self.ready = False

    # -- metadata ------------------------------------------------------------------------------
    def server_metadata(self) -> dict[str, Any]:
        return {"name": self.server_name, "version": __version__, "extensions": list(EXTENSIONS)}

    def model_version(self, name: str, version: str = "") -> ModelVersion:
        entry = self._models.get(name)
        if entry is None:
            if isinstance(name, str) and self._known_on_disk(name):
                raise Unavailable(f"model '{name}' is not loaded")
            raise NotFound(f"unknown model '{name}'")
        if not entry.versions:
            raise Unavailable(f"model '{name}' is not ready: {entry.reason or entry.state.lower()}")
        if not version:
            return entry.versions[max(entry.versions)]
        if not (version.isascii() and version.isdigit() and len(version) <= 19):
            raise InvalidArgument(f"model version must be a positive integer, got {version[:40]!r}")
        mv = entry.versions.get(int(version))
        if mv is None:
            raise NotFound(
                f"model '{name}' version {version} is not available; ready versions: {sorted(entry.versions)}"
            )
        return mv

    def _known_on_disk(self, name: str) -> bool:
        try:
            return self.repository.exists(name)
        except ModelBridgeError:
            return False

    def model_ready(self, name: str, version: str = "") -> bool:
        try:
            self.model_version(name, version)
            return True
        except ModelBridgeError:
            return False

    def model_metadata(self, name: str, version: str = "") -> dict[str, Any]:
        mv = self.model_version(name, version)
        if version:
            return mv.metadata
        entry = self._models[name]
        return {**mv.metadata, "versions": [str(v) for v in sorted(entry.versions)]}

    def model_config(self, name: str, version: str = "") -> dict[str, Any]:
        return self.model_version(name, version).config

    def model_file(self, name: str, version: str = "") -> tuple[bytes, str]:
        mv = self.model_version(name, version)
        return mv.raw, mv.etag

    def gates(self, name: str, version: str = "") -> dict[str, Any]:
        return self.model_version(name, version).gates()

    # -- inference -----------------------------------------------------------------------------
    async def infer(self, req: InferRequest) -> InferResponse:
        if not logs.request_log.isEnabledFor(logging.INFO):  # request logging off: pay nothing for it
            return await self._infer(req)
        start, rid = time.perf_counter_ns(), logs.request_id(req.id)
        logs.log_start(rid=rid, model=req.model_name, version=req.model_version)
        try:
            resp = await self._infer(req)
        except ModelBridgeError as exc:
            logs.log_request(rid=rid, model=req.model_name, version=req.model_version, start_ns=start, error=exc)
            raise
        logs.log_request(rid=rid, model=resp.model_name, version=resp.model_version, start_ns=start)
        return resp

    async def _infer(self, req: InferRequest) -> InferResponse:
        start = time.perf_counter_ns()
        mv = self.model_version(req.model_name, req.model_version)
        if mv.stats.pending >= self.max_pending_per_model:
            raise Unavailable(f"model '{mv.name}' has {mv.stats.pending} requests in flight, its limit; retry later",
                              retry_after=1)
        mv.stats.pending += 1
        try:
            feeds, names, batch = mv.prepare(req)
            timeout = deadline.request_timeout(req.parameters)
            run = (self._run_stateful(mv, req, feeds, names, batch, start) if mv.states
                   else self._run(mv, feeds, names, batch, start))
            arrays, queue_ns = await (run if timeout is None else deadline.within(run, timeout, mv.name))
            outputs = [
                OutputTensor(n, mv.output_datatype(n, a), tuple(a.shape), a)
                for n, a in zip(names, arrays)
            ]
        except ModelBridgeError:
            mv.stats.record_failure(request_ns=time.perf_counter_ns() - start)
            raise
        finally:
            mv.stats.pending -= 1
        mv.stats.record_success(request_ns=time.perf_counter_ns() - start, queue_ns=queue_ns, batch=batch)
        return InferResponse(mv.name, str(mv.version), req.id, outputs)

    async def _run(
        self, mv: ModelVersion, feeds: dict[str, Any], names: list[str], batch: int, start: int
    ) -> tuple[list[Any], int]:
        if mv.batcher is not None:
            result = await mv.batcher.submit(feeds, names, batch)  # records its own executions
            return result.arrays, result.queue_ns
        t1 = time.perf_counter_ns()
        arrays = await mv.runtime.run_async(feeds, names)
        t2 = time.perf_counter_ns()
        mv.stats.record_execution(batch=batch, input_ns=t1 - start, infer_ns=t2 - t1, output_ns=0)
        return arrays, 0

    async def _run_stateful(
        self, mv: ModelVersion, req: InferRequest, feeds: dict[str, Any], names: list[str], batch: int, start: int
    ) -> tuple[list[Any], int]:
        sp = sequence_params(req.parameters, mv.name)
        key = (mv.name, mv.version, sp.sequence_id)
        seq = self.sequences.begin(key, mv.states, batch) if sp.start else self.sequences.resume(key)
        async with seq.lock:  # steps of one sequence run one at a time, in arrival order
            if sp.start:
                self.sequences.reset(seq, mv.states, batch)
            elif self.sequences.lookup(key) is not seq:
                seq = self.sequences.resume(key)  # ended or restarted while this step waited
            if seq.batch != batch:
                raise InvalidArgument(
                    f"sequence {sp.sequence_id!r} started with batch size {seq.batch}, this step has {batch}"
                )
            feeds.update(seq.state)
            arrays, queue_ns = await self._run(mv, feeds, names + [p.output for p in mv.states], batch, start)
            n = len(names)
            if sp.end:
                self.sequences.end(key)
            else:
                seq.state = {p.input: arrays[n + i] for i, p in enumerate(mv.states)}
        return arrays[:n], queue_ns

    def live_sequences(self, name: str, version: int) -> int:
        return self.sequences.count(name, version)

    # -- statistics ----------------------------------------------------------------------------
    def statistics(self, name: str = "", version: str = "") -> dict[str, Any]:
        if name:
            if version:
                mv = self.model_version(name, version)
                return {"model_stats": [mv.stats.as_dict(mv.name, mv.version)]}
            entry = self._models.get(name)
            if entry is None:
                raise NotFound(f"unknown model '{name}'")
            versions = [entry.versions[v] for v in sorted(entry.versions)]
        else:
            versions = [e.versions[v] for e in self._models.values() for v in sorted(e.versions)]
        return {"model_stats": [mv.stats.as_dict(mv.name, mv.version) for mv in versions]}

    def loaded_versions(self) -> list[ModelVersion]:
        return [e.versions[v] for e in list(self._models.values()) for v in sorted(e.versions)]

    # -- repository ----------------------------------------------------------------------------
    def repository_index(self, *, ready_only: bool = False) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        names = sorted(set(self.repository.model_names()) | set(self._models))
        for name in names:
            entry = self._models.get(name)
            if entry and entry.versions:
                for v in sorted(entry.versions):
                    out.append({"name": name, "version": str(v), "state": READY, "reason": ""})
            elif not ready_only:
                out.append({
                    "name": name, "version": "", "state": entry.state if entry else UNAVAILABLE,
                    "reason": entry.reason if entry else "not loaded",
                })
        return out

    def load(
        self, name: str, *, config_text: str | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """(Re)load a model. `files` maps "<version>/<file>" to bytes (Triton's file: load parameters);
        `config_text` is a JSON model config that replaces the stored one."""
        self._check_control("load")
        check_model_name(name)
        if config_text is not None or files:
            self.repository.check_writable()
        with self._lock:
            if config_text is not None:
                parsed = model_config.parse_config_text(config_text, json_form=True,
                                                     source="the load request's config parameter")
                if parsed.get("name") not in (None, "", name):
                    raise InvalidArgument(f"config name '{parsed['name']}' does not match model '{name}'")
            by_version: dict[int, dict[str, bytes]] = {}
            for rel, data in (files or {}).items():
                check_relative_file(rel)
                head, _, tail = rel.partition("/")
                if not tail:
                    raise InvalidArgument(f"file parameter 'file:{rel}' must be 'file:<version>/<name>'")
                by_version.setdefault(check_version(head), {})[tail] = data
            for version, vfiles in sorted(by_version.items()):
                if "model.onnx" not in vfiles:
                    raise InvalidArgument(f"files for version {version} must include model.onnx")
                validate_onnx_bytes(vfiles["model.onnx"], self.sandbox_limits)
            for version, vfiles in sorted(by_version.items()):
                self.repository.publish_version(name, version, vfiles)
            if config_text is not None:
                self.repository.write_config(name, config_text, json_form=True)
            if not self.repository.exists(name):
                raise NotFound(f"model '{name}' is not in the repository")
            self._load_locked(name)

    def load_from_repository(self, name: str, *, keep_serving: bool = False) -> None:
        """(Re)load `name` as it is on disk, whatever the control mode (startup, repository poller).
        With keep_serving, a failed reload leaves the loaded versions serving, as Triton does."""
        with self._lock:
            if not self.repository.exists(name):
                raise NotFound(f"model '{name}' is not in the repository")
            self._load_locked(name, keep_serving=keep_serving)

    def drop(self, name: str) -> None:
        """Forget a model whose folder left the repository (repository poller)."""
        with self._lock:
            self._models.pop(name, None)

    def _check_control(self, action: str) -> None:
        if self.model_control_mode != "explicit":
            raise FailedPrecondition(
                f"model {action} is not allowed: the server runs with --model-control-mode="
                f"{self.model_control_mode}; only --model-control-mode=explicit accepts model control requests"
            )

    def _load_locked(self, name: str, *, keep_serving: bool = False) -> None:
        entry = self._models.get(name) or ModelEntry(name)
        entry.state = LOADING
        self._models[name] = entry
        try:
            given = self.repository.read_config(name)
            available = self.repository.versions(name)
            if not available:
                raise Unavailable(f"model '{name}' has no version folders with a model file")
            wanted = model_config.select_versions((given or {}).get("version_policy", {"latest": {"num_versions": 1}}), available)
            if not wanted:
                raise Unavailable(f"the version policy of '{name}' selects none of the versions {available}")
            loaded: dict[int, ModelVersion] = {}
            for v in wanted:
                loaded[v] = self._load_version(name, v, given)
        except ModelBridgeError as exc:
            if keep_serving and entry.versions:
                entry.state, entry.reason = READY, f"reload failed, serving the previous versions: {exc.message}"
                raise
            entry.state, entry.reason = UNAVAILABLE, exc.message
            entry.versions = {}
            raise
        # Swap in one assignment: in-flight requests keep the ModelVersion they resolved.
        entry.versions = loaded
        entry.config = loaded[max(loaded)].config
        entry.state, entry.reason = READY, ""

    def _load_version(self, name: str, version: int, given: dict[str, Any] | None) -> ModelVersion:
        filename = (given or {}).get("default_model_filename", "model.onnx")
        path = self.repository.model_file(name, version, filename)
        if not path.is_file():
            raise Unavailable(f"model '{name}' version {version} has no {filename}")
        try:
            instances = sum(int(g.get("count", 1)) for g in (given or {}).get("instance_group", [])) or 1
            runtime = ModelRuntime(path, _params(given), instances=instances)
            pairs = state_pairs(runtime.custom_metadata, runtime.inputs, runtime.outputs)
            hidden = {p.input for p in pairs} | {p.output for p in pairs}
            # State tensors are the server's business: clients never see or send them.
            cfg = model_config.complete(name, given, [io for io in runtime.inputs if io.name not in hidden],
                                        [io for io in runtime.outputs if io.name not in hidden])
            if pairs:
                cfg["sequence_batching"] = sequence_config(pairs, int(self.sequences.idle_timeout * 1e6))
                if "dynamic_batching" in cfg:
                    # Triton's config holds one scheduler: a batched sequence model is sequence_batching
                    # with the Oldest strategy, which carries the batcher's delay and preferred sizes.
                    cfg["sequence_batching"]["oldest"] = cfg.pop("dynamic_batching")
        except ModelBridgeError as exc:
            raise Unavailable(f"model '{name}' version {version} failed to load: {exc.message}") from None
        return ModelVersion(name, version, path, cfg, runtime, states=pairs)

    def unload(self, name: str) -> None:
        self._check_control("unload")
        check_model_name(name)
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                if self._known_on_disk(name):
                    return
                raise NotFound(f"unknown model '{name}'")
            entry.versions = {}
            entry.state, entry.reason = UNAVAILABLE, "unloaded"

    def upload_version(self, name: str, version: str | int, data: bytes) -> dict[str, Any]:
        """Store ONNX bytes as <name>/<version>/model.onnx after checking them, then (re)load the model."""
        self._check_control("upload")
        check_model_name(name)
        self.repository.check_writable()
        v = check_version(version)
        validate_onnx_bytes(data, self.sandbox_limits)
        with self._lock:
            self.repository.publish_version(name, v, {"model.onnx": data})
            self._load_locked(name)
            entry = self._models[name]
            return {"name": name, "version": str(v), "served": v in entry.versions,
                    "ready_versions": [str(x) for x in sorted(entry.versions)]}


def _params(given: dict[str, Any] | None) -> dict[str, Any]:
    params = dict((given or {}).get("parameters") or {})
    return params


def validate_onnx_bytes(data: bytes, limits: sandbox.Limits | None = None) -> dict[str, Any]:
    """An uploaded model must parse, pass the ONNX checker, keep its data inside the file and load in
    onnxruntime before it is written anywhere a reader could see it. All of that runs in a child
    process with a time and memory limit (server/core/sandbox.py): hostile bytes cannot crash us."""
    return sandbox.check_model_bytes(data, limits or sandbox.Limits())

