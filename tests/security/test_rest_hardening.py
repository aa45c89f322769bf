"""The REST port against hostile HTTP/1.1, on raw sockets to a real keyed server: refusals decided from the
request head before any body byte is read (memory measured from /proc), request targets, Host, upgrades and
CONNECT, the header-size limit, and trailers. The server's log must never show a traceback."""

from __future__ import annotations

import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import orjson
import pytest

from tests.security.conftest import ADMIN_KEY, INFERENCE_KEY, WRONG_KEY
from tests.support import ServerProcess

MIB = 1 << 20
UPLOAD = 60 * MIB
ADD_SUB = orjson.dumps({"inputs": [{"name": n, "shape": [1, 16], "datatype": "INT32", "data": [1] * 16}
                                   for n in ("INPUT0", "INPUT1")]})


def _connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_answers(sock: socket.socket, timeout: float = 5.0) -> tuple[list[int], bool]:
    """Statuses of every answer until the server closes (True) or goes quiet for `timeout` s (False)."""
    sock.settimeout(timeout)
    data = b""
    closed = False
    try:
        while chunk := sock.recv(1 << 20):
            data += chunk
        closed = True
    except ConnectionResetError:
        closed = True
    except TimeoutError:
        pass
    statuses = []
    while data:
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        statuses.append(int(lines[0].split(b" ")[1]))
        length = [int(v) for n, _, v in (line.partition(b":") for line in lines[1:]) if n.lower() == b"content-length"]
        data = data[length[0] if length else 0:]
    return statuses, closed


def _status_line(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _upload(server: ServerProcess, head: bytes) -> tuple[bytes, int, float]:
    """Send `head` and a 60 MiB body in 1 MiB pieces, watching for an answer between pieces; stop at the
    answer. Returns (status line, body bytes sent before it came, seconds from the head to it)."""
    piece = b"\0" * MIB
    with _connect(server) as sock:
        sock.sendall(head + piece[:65536])
        start = time.monotonic()
        sent = 65536
        try:
            while sent < UPLOAD and not select.select([sock], [], [], 0)[0]:
                sock.sendall(piece)
                sent += len(piece)
                time.sleep(0.02)   # ~50 MiB/s: the old server took it all in before answering
        except (BrokenPipeError, ConnectionResetError):
            pass
        line = _status_line(sock, 30)
        return line, sent, time.monotonic() - start


def test_refused_uploads_are_answered_before_their_bodies(secured: ServerProcess) -> None:
    """8 parallel unauthenticated 60 MiB uploads (inference and model upload routes): each gets 401 at once,
    and the server does not take the bodies in (keys configured: secured's server)."""
    assert secured.proc is not None
    pid = secured.proc.pid
    heads = [b"PUT /v2/repository/models/big/versions/%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n"
             % (i + 1, UPLOAD) for i in range(4)]
    heads += [b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer %s\r\n"
              b"Content-Length: %d\r\n\r\n" % (WRONG_KEY.encode(), UPLOAD) for _ in range(4)]
    before = _rss_kib(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_kib(pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(len(heads)) as pool:
            results = list(pool.map(lambda head: _upload(secured, head), heads))
    finally:
        done.set()
        sampler.join(5)
    growth_mb = (peak[0] - before) / 1024
    print(f"VmRSS {before} KiB -> peak {peak[0]} KiB (+{growth_mb:.1f} MiB); "
          f"sent before the answer: {[r[1] // MIB for r in results]} MiB")
    for line, sent, took in results:
        assert line.startswith(b"HTTP/1.1 401"), line
        assert sent <= UPLOAD // 2 and took < 5, (sent, took)   # answered long before the 60 MiB were sent
    assert growth_mb < 50, growth_mb


@pytest.mark.parametrize(("head", "status"), [
    (b"PUT /v2/repository/models/big/versions/1 HTTP/1.1\r\nHost: t\r\n", 401),
    (b"PUT /v2/repository/models/big/versions/1 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " +
     INFERENCE_KEY.encode() + b"\r\n", 403),
    (b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + WRONG_KEY.encode() + b"\r\n", 401),
    (b"POST /v2/no/such/route HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + ADMIN_KEY.encode() + b"\r\n", 404),
    (b"POST /nowhere HTTP/1.1\r\nHost: t\r\n", 404),
    (b"POST /v2/health/live HTTP/1.1\r\nHost: t\r\n", 405),
])
def test_refusals_come_before_the_body_and_without_100_continue(secured: ServerProcess, head: bytes,
                                                                 status: int) -> None:
    for expect in (b"", b"Expect: 100-continue\r\n"):
        with _connect(secured) as sock:
            sock.sendall(head + expect + b"Content-Length: %d\r\n\r\n" % UPLOAD + b"x" * 1000)
            line = _status_line(sock, 3)   # the body never comes: the answer must not wait for it
            assert line.startswith(b"HTTP/1.1 %d" % status), (expect, line)
            assert _read_answers(sock)[1], "a connection whose refused body is large must be closed"


def test_over_limit_content_length_is_413_before_the_key_is_even_needed(secured: ServerProcess) -> None:
    with _connect(secured) as sock:
        sock.sendall(b"PUT /v2/repository/models/big/versions/1 HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                     b"Authorization: Bearer %s\r\nContent-Length: %d\r\n\r\n" % (ADMIN_KEY.encode(), 65 * MIB))
        assert _status_line(sock, 3).startswith(b"HTTP/1.1 413")


def test_a_small_refused_body_is_drained_and_the_connection_kept(secured: ServerProcess) -> None:
    with _connect(secured) as sock:
        request = (b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n" % len(ADD_SUB))
        sock.sendall(request + b"\r\n" + ADD_SUB)
        sock.sendall(request + b"Authorization: Bearer %s\r\n\r\n" % INFERENCE_KEY.encode() + ADD_SUB)
        assert _read_answers(sock, timeout=2) == ([401, 200], False)


def test_a_key_in_a_chunked_trailer_is_not_honoured(secured: ServerProcess) -> None:
    with _connect(secured) as sock:
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                     b"Trailer: Authorization\r\n\r\n%x\r\n%s\r\n0\r\nAuthorization: Bearer %s\r\n\r\n"
                     % (len(ADD_SUB), ADD_SUB, INFERENCE_KEY.encode()))
        statuses, _ = _read_answers(sock, timeout=2)
    assert statuses == [401]


@pytest.mark.parametrize(("request_head", "status"), [
    (b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n", 405),
    (b"GET http://[::1 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET http://[::1]:8000/v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n", 200),   # absolute-form: served
    (b"GET http://other.example/v2/health/live?x=1 HTTP/1.1\r\nHost: t\r\n\r\n", 200),
    (b"GET ftp://other.example/v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET http:///v2/health/live HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET x:443 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET * HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nX: 1\r\n\r\nGET /v2/a b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET /v2/a\x01b HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET /v2/\xc3\xa9 HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET /v2/health/live#x HTTP/1.1\r\nHost: t\r\n\r\n", 400),
    (b"GET /v2/health/live HTTP/2.0\r\nHost: t\r\n\r\n", 505),
    (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),                   # HTTP/2 prior knowledge
    (b"GET /v2/health/live HTTP/1.1\r\n\r\n", 400),                       # RFC 9112 3.2: Host is required
    (b"GET /v2/health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),  # ... and only once
    (b"GET /v2/health/live HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
    (b"GET /v2/health/live HTTP/1.0\r\n\r\n", 200),                       # HTTP/1.0 needs none
])
def test_request_targets_and_host(secured: ServerProcess, request_head: bytes, status: int) -> None:
    with _connect(secured) as sock:
        sock.sendall(request_head)
        statuses, closed = _read_answers(sock, timeout=2)
    assert statuses[-1:] == [status], statuses
    if status >= 400:
        assert closed, "an unusable request is answered, then the connection closed"


def test_thousands_of_pipelined_upgrades_and_connects(secured: ServerProcess) -> None:
    upgrade = (b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
               b"HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n\r\n")
    websocket = (b"GET /v2/health/ready HTTP/1.1\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                 b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    with _connect(secured) as sock:   # answered as plain HTTP/1.1, every one, in order
        sock.sendall((upgrade + websocket) * 1500)
        statuses, _ = _read_answers(sock, timeout=3)
    assert statuses == [200] * 3000
    with _connect(secured) as sock:   # CONNECT: 405 once, then closed
        try:
            sock.sendall(b"CONNECT x:443 HTTP/1.1\r\nHost: x:443\r\n\r\n" * 3000)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _read_answers(sock) == ([405], True)


def test_header_size_limit_holds_on_the_first_read(secured: ServerProcess) -> None:
    def request(kib: int) -> bytes:
        filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"f" * 1000) for i in range(kib))
        return b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n" + filler + b"\r\n"

    with _connect(secured) as sock:
        sock.sendall(request(98))   # one write
        assert _read_answers(sock) == ([431], True)
    with _connect(secured) as sock:
        sock.sendall(request(60))   # under the 64 KiB limit: served
        assert _read_answers(sock, timeout=1)[0] == [200]
    with _connect(secured) as sock:   # trailers count too
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                     b"Authorization: Bearer %s\r\n\r\n%x\r\n%s\r\n0\r\n" % (INFERENCE_KEY.encode(), len(ADD_SUB), ADD_SUB)
                     + b"".join(b"X-T%d: %s\r\n" % (i, b"t" * 1000) for i in range(98)) + b"\r\n")
        assert _read_answers(sock) == ([431], True)


def test_an_endless_trailer_over_many_reads_is_refused(secured: ServerProcess) -> None:
    with _connect(secured) as sock:
        sock.sendall(b"POST /v2/models/add_sub/infer HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                     b"Authorization: Bearer %s\r\n\r\n%x\r\n%s\r\n0\r\nX-Trailer: "
                     % (INFERENCE_KEY.encode(), len(ADD_SUB), ADD_SUB))
        try:
            for _ in range(40):   # one trailer value, 8 KiB at a time, never ending
                time.sleep(0.01)
                sock.sendall(b"v" * 8192)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _read_answers(sock, timeout=3) == ([431], True)


def test_the_log_has_no_traceback(secured: ServerProcess) -> None:
    """Runs last in this module: nothing above may have left a traceback in the server's log."""
    time.sleep(0.5)
    log = secured.log()
    assert "Traceback" not in log and "RecursionError" not in log, log[-3000:]
