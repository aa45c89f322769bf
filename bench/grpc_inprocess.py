"""The gRPC port's front + HTTP/2 layer alone, in process: one connection on a stand-in transport fed
h2load-shaped bytes (HEADERS with a repeated header block, one DATA with END_STREAM, `--per-read` calls per
read) for a trivial unary handler; prints the server's CPU time per call (`time.process_time`, the h2 client
that writes the requests and reads the answers not counted), or a cProfile of it with --profile.

usage: PYTHONPATH=<tree> .venv/bin/python bench/grpc_inprocess.py [--calls 16000] [--per-read 8] [--profile]
  (PYTHONPATH picks the tree measured: this one, or an older one exported with git archive)
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any

import grpc
import h2.config
import h2.connection
import h2.events
import h2.settings

from server.core.auth import KeyRing
from server.grpc.front import GrpcFront, Registry

PATH = "/inference.GRPCInferenceService/ModelInfer"
HEADERS = [(b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"127.0.0.1:8001"), (b":path", PATH.encode()),
           (b"user-agent", b"h2load nghttp2/1.52.0"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
BODY = b"\x00" + (300).to_bytes(4, "big") + b"x" * 300


class Transport:
    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1)

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return True

    def close(self) -> None: ...
    def write_eof(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data


async def answer(request: bytes, context: Any) -> bytes:
    return b"r" * 40


async def one_run(front: GrpcFront, calls: int, per_read: int, profile: cProfile.Profile | None) -> float:
    conn = front._connection()
    transport = Transport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: (1 << 31) - 1})
    client.increment_flow_control_window((1 << 31) - 1 - 65_535)
    conn.data_received(client.data_to_send())
    client.receive_data(transport.take())
    spent, ended = 0.0, 0
    for _ in range(calls // per_read):
        for _ in range(per_read):
            sid = client.get_next_available_stream_id()
            client.send_headers(sid, HEADERS)
            client.send_data(sid, BODY, end_stream=True)
        data = client.data_to_send()
        if profile is not None:
            profile.enable()
        t0 = time.process_time()
        conn.data_received(data)
        await asyncio.sleep(0)   # the unary tasks run, their answers go out
        await asyncio.sleep(0)
        spent += time.process_time() - t0
        if profile is not None:
            profile.disable()
        ended += sum(isinstance(e, h2.events.StreamEnded) for e in client.receive_data(transport.take()))
        more = client.data_to_send()   # the client's WINDOW_UPDATEs, SETTINGS ACKs
        if more:
            conn.data_received(more)
            client.receive_data(transport.take())
    assert ended == calls // per_read * per_read, f"{ended} answers"
    conn.connection_lost(None)
    return spent / ended * 1e6


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=16000)
    ap.add_argument("--per-read", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    registry = Registry()
    registry.methods[PATH] = grpc.unary_unary_rpc_method_handler(answer)
    front = GrpcFront(registry, keys=KeyRing(), max_message_bytes=1 << 26)
    profile = cProfile.Profile() if args.profile else None
    results = [await one_run(front, args.calls, args.per_read, profile if r == args.rounds - 1 else None)
               for r in range(args.rounds)]
    print(f"server CPU per call, {args.per_read} calls per read: " + " / ".join(f"{us:.1f} µs" for us in results))
    if profile is not None:
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    asyncio.run(main())
