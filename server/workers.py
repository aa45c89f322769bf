"""`--workers N`: N server processes sharing the REST and gRPC ports (SO_REUSEPORT), for machines with
more cores than one event loop can use.

Each worker is a full server with its own sessions; the kernel spreads connections across them.
Statistics are per worker and only worker 0 serves /metrics. Repository changes through the API
would reach only the worker that answered, so with several workers the repository is changed on
disk and followed with `--model-control-mode poll` (explicit mode becomes none).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import signal
import socket
from types import FrameType

from server.settings import Settings

log = logging.getLogger("modelbridge.workers")


def reuseport_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def worker_settings(settings: Settings, index: int) -> Settings:
    mode = "none" if settings.model_control_mode == "explicit" else settings.model_control_mode
    return dataclasses.replace(
        settings, workers=1, worker_index=index, model_control_mode=mode,
        metrics_port=settings.metrics_port if index == 0 else 0,
    )


def _child(settings: Settings) -> None:
    from server import logs
    from server.app import run_one

    logs.configure(settings.log_level, settings.log_format, requests=settings.log_requests)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; SIGTERM stops a worker
    run_one(settings, reuse_port=True)


def run_workers(settings: Settings) -> int:
    if settings.model_control_mode == "explicit":
        log.warning("with %d workers the repository API is off: change the repository on disk and use "
                    "--model-control-mode poll to follow it", settings.workers)
    ctx = mp.get_context("spawn")  # onnxruntime's thread pools do not survive fork
    procs = [ctx.Process(target=_child, args=(worker_settings(settings, i),), name=f"worker-{i}")
             for i in range(settings.workers)]
    for p in procs:
        p.start()

    def forward(signum: int, _frame: FrameType | None) -> None:
        for p in procs:
            if p.is_alive() and p.pid:
                p.terminate()

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed = 0
    for p in procs:
        p.join()
        if p.exitcode not in (0, -signal.SIGTERM):
            failed += 1
            forward(signal.SIGTERM, None)  # one worker failing takes the others down: restart as a unit
    return 1 if failed else 0
