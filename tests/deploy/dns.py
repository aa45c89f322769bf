"""A tiny DNS server for tests: answers A queries for a few names from a table the test can change.

It stands in for Docker's embedded DNS (127.0.0.11), where a compose service name resolves to the
addresses of all its replicas."""

from __future__ import annotations

import socket
import struct
import threading
from typing import Self


class TinyDNS:
    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                query, addr = self.sock.recvfrom(512)
            except TimeoutError:
                continue
            reply = self.answer(query)
            if reply:
                self.sock.sendto(reply, addr)

    def answer(self, query: bytes) -> bytes | None:
        if len(query) < 12:
            return None
        qid, _flags, qdcount = struct.unpack(">HHH", query[:6])
        if qdcount != 1:
            return None
        labels, i = [], 12
        while i < len(query) and query[i]:
            labels.append(query[i + 1:i + 1 + query[i]].decode("ascii", "replace"))
            i += 1 + query[i]
        question = query[12:i + 5]  # name, its terminating zero, qtype, qclass
        qtype = struct.unpack(">H", query[i + 1:i + 3])[0]
        addrs = self.records.get(".".join(labels).lower().rstrip("."))
        if addrs is None:
            return struct.pack(">HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question  # NXDOMAIN
        answers = [a for a in addrs if qtype == 1]
        body = b"".join(struct.pack(">HHHIH", 0xC00C, 1, 1, 1, 4) + socket.inet_aton(a) for a in answers)
        return struct.pack(">HHHHHH", qid, 0x8180, 1, len(answers), 0, 0) + question + body
