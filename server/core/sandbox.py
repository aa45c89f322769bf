"""Check a candidate (uploaded) ONNX model in a separate process with a time and a memory limit.

Parsing, the ONNX checker and building an onnxruntime session all run native code on hostile
bytes. A model that makes that code crash, hang or allocate without bound must cost one child
process, never the server: the child sets RLIMIT_AS/RLIMIT_CPU on itself before importing onnx or
onnxruntime, asks the kernel to kill it when the server dies (PR_SET_PDEATHSIG), reads the model
from stdin and answers one JSON line. The parent only waits, with a deadline.

Run as `python -m server.core.sandbox <memory_bytes> <cpu_secs>`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.core.errors import InvalidArgument, PayloadTooLarge, Unavailable

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
MAX_CONCURRENT_CHECKS = 2
_SLOTS = threading.BoundedSemaphore(MAX_CONCURRENT_CHECKS)


@dataclass(frozen=True)
class Limits:
    timeout_secs: float = 60.0
    memory_bytes: int = 2 << 30
    max_model_bytes: int = 1 << 30


def check_model_bytes(data: bytes, limits: Limits = Limits()) -> dict[str, Any]:
    """Refuse (InvalidArgument) unless `data` is a self-contained ONNX model that passes the checker
    and loads in onnxruntime within the limits; return what the child saw (inputs, outputs)."""
    if not data:
        raise InvalidArgument("the uploaded model is empty")
    if len(data) > limits.max_model_bytes:
        raise PayloadTooLarge(f"the model is {len(data)} bytes, over the limit of {limits.max_model_bytes}")
    # Each check may use memory_bytes: a burst of uploads must not multiply that without bound.
    if not _SLOTS.acquire(timeout=limits.timeout_secs):
        raise Unavailable(f"{MAX_CONCURRENT_CHECKS} model checks are already running; retry later", retry_after=5)
    try:
        return _check(data, limits)
    finally:
        _SLOTS.release()


def _check(data: bytes, limits: Limits) -> dict[str, Any]:
    cpu = max(1, int(limits.timeout_secs + 1))
    cmd = [sys.executable, "-m", "server.core.sandbox", str(limits.memory_bytes), str(cpu)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [_PACKAGE_PARENT, os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=env, cwd=_PACKAGE_PARENT, start_new_session=True)
    except OSError as exc:
        raise Unavailable(f"cannot start the model checker: {exc.strerror}") from None
    try:
        out, err = proc.communicate(data, timeout=limits.timeout_secs)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise InvalidArgument(
            f"the model did not pass the checks within {limits.timeout_secs:g} s (checker stopped); refused"
        ) from None
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return _verdict(proc.returncode, out, err, limits)


def _verdict(code: int, out: bytes, err: bytes, limits: Limits) -> dict[str, Any]:
    if code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else str(-code)
        raise InvalidArgument(
            f"checking the model crashed the checker process ({name}); the model is refused "
            f"(memory limit {limits.memory_bytes >> 20} MiB)"
        )
    try:
        doc = json.loads(out.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        tail = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise InvalidArgument(f"the model checker failed (exit {code}): {tail[0][:300]}") from None
    if code != 0 or "error" in doc:
        raise InvalidArgument(str(doc.get("error", f"the model checker failed (exit {code})")))
    return doc


# -- the child ----------------------------------------------------------------------------------------
def external_data_tensors(model: Any) -> list[str]:
    """Names of every tensor that points at external data: graph and subgraph initializers, sparse
    initializers (values and indices), tensor attributes, and function bodies."""
    import onnx

    found: list[str] = []

    def tensor(t: onnx.TensorProto, where: str) -> None:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            found.append(f"{where}'{t.name}'")

    def sparse(s: onnx.SparseTensorProto, where: str) -> None:
        tensor(s.values, where + "sparse values ")
        tensor(s.indices, where + "sparse indices ")

    def nodes(ns: Any, where: str) -> None:
        for node in ns:
            for a in node.attribute:
                if a.HasField("t"):
                    tensor(a.t, f"{where}attribute {a.name} of node '{node.name}' ")
                for t in a.tensors:
                    tensor(t, f"{where}attribute {a.name} of node '{node.name}' ")
                if a.HasField("sparse_tensor"):
                    sparse(a.sparse_tensor, f"{where}attribute {a.name} ")
                for s in a.sparse_tensors:
                    sparse(s, f"{where}attribute {a.name} ")
                if a.HasField("g"):
                    graph(a.g, f"{where}subgraph {a.name} ")
                for g in a.graphs:
                    graph(g, f"{where}subgraph {a.name} ")

    def graph(g: onnx.GraphProto, where: str) -> None:
        for t in g.initializer:
            tensor(t, where + "initializer ")
        for s in g.sparse_initializer:
            sparse(s, where + "sparse initializer ")
        nodes(g.node, where)

    graph(model.graph, "")
    for f in model.functions:
        nodes(f.node, f"function {f.name} ")
    return found


def _limit_self(memory_bytes: int, cpu_secs: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_secs, cpu_secs + 1))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:  # die with the server: an orphaned checker must not outlive a kill -9
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)   # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            os._exit(3)
    except (OSError, AttributeError):
        pass


def _child(argv: list[str]) -> int:
    memory_bytes, cpu_secs = int(argv[0]), int(argv[1])
    _limit_self(memory_bytes, cpu_secs)
    data = sys.stdin.buffer.read()
    try:
        doc = _inspect(data)
    except MemoryError:
        doc = {"error": f"the model needs more than the checker's memory limit ({memory_bytes >> 20} MiB); refused"}
    except Exception as exc:  # noqa: BLE001 - anything the libraries raise is the model's verdict
        doc = {"error": f"{type(exc).__name__}: {str(exc)[:400]}"}
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    return 0 if "error" not in doc else 1


def _inspect(data: bytes) -> dict[str, Any]:
    import onnx

    try:
        model = onnx.load_model_from_string(data)
    except Exception as exc:  # noqa: BLE001 - protobuf raises DecodeError and friends
        return {"error": f"the upload is not an ONNX model: {str(exc)[:200]}"}
    external = external_data_tensors(model)
    if external:
        return {"error": f"the model refers to external data ({', '.join(external[:5])}); "
                         "uploads must be self-contained: save with save_as_external_data=False"}
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"the ONNX checker refused the model: {str(exc)[:300]}"}
    del model
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        text = str(exc)
        if "bad_alloc" in text or "bad allocation" in text or "Failed to allocate" in text:
            return {"error": f"loading the model needs more memory than the checker's limit allows: {text[:200]}"}
        return {"error": f"onnxruntime cannot load the model: {text[:400]}"}
    trial = _trial_run(session)
    if trial:
        return {"error": trial}
    return {"inputs": [i.name for i in session.get_inputs()], "outputs": [o.name for o in session.get_outputs()]}


_ALLOCATION_FAILURE = ("bad_alloc", "bad allocation", "Failed to allocate", "MemoryError", "std::length_error")


def _trial_run(session: Any) -> str | None:
    """Run the model once on the smallest inputs it accepts (every free dimension 1). Most models need
    real data and may refuse these; that is fine. What is not fine is a graph that allocates without
    bound by itself (ConstantOfShape of 2**31, Expand, Tile...): it would do so inside the server."""
    import numpy as np

    types = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16,
             "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16,
             "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_,
             "tensor(string)": np.object_}
    feeds: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        dtype = types.get(i.type)
        if dtype is None:
            return None
        shape = [d if isinstance(d, int) and 0 < d <= 64 else 1 for d in (i.shape or [])]
        feeds[i.name] = np.full(shape, "" if dtype is np.object_ else 0, dtype=dtype)
    try:
        session.run(None, feeds)
    except MemoryError:
        return "running the model on its smallest inputs needs more memory than the checker's limit; refused"
    except Exception as exc:  # noqa: BLE001 - refusing dummy inputs is normal; only allocation failures count
        text = str(exc)
        if any(marker in text for marker in _ALLOCATION_FAILURE):
            return f"running the model on its smallest inputs exhausts the checker's memory limit: {text[:200]}"
    return None


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
