"""Refusals decided from a request's head alone, so that a request that will be refused is answered before
any of its body is read (and without `100 Continue`): a 60 MiB upload without a key costs a few
kilobytes, not 60 MiB of buffer.

http_connection asks when the headers of a request that announces a body are complete. The answer is the
one the ASGI stack would give, in its order — CORS preflights pass (CORSMiddleware answers them), then the
API key (SecurityLayer: 401/403 with the same messages), then the route (the router: 404/405) — with the
headers CORSMiddleware would add. The layers behind stay as they are, so a request this lets through is
checked again there.
"""

from __future__ import annotations

from collections.abc import Callable

import orjson
from starlette.routing import BaseRoute, Match

from server.core.auth import KeyRing, Scope
from server.rest.http_wire import JSON_TYPE, Answer, Headers
from server.rest.security import cors_headers, refusal, scope_of

CACHE_SIZE = 4096

# (method, path) -> (status the router would give: 200, 404 or 405; the Allow value for a 405)
RouteTable = Callable[[str, str], tuple[int, bytes]]


def route_table(routes: list[BaseRoute]) -> RouteTable:
    """What a Starlette/FastAPI router does with (method, path) before running anything: a route takes it
    (200), takes the path with other methods (405), or none does (404). A path that matches only with a
    trailing slash added or removed is redirected by the router, so it counts as taken."""

    def lookup(method: str, path: str) -> tuple[int, bytes]:
        allowed: set[str] = set()
        for route in routes:
            match, _ = route.matches({"type": "http", "method": method, "path": path, "root_path": ""})
            if match is Match.FULL:
                return 200, b""
            if match is Match.PARTIAL:
                allowed |= getattr(route, "methods", None) or set()
        if allowed:
            return 405, ", ".join(sorted(allowed)).encode()
        if path != "/":
            other = path[:-1] if path.endswith("/") else path + "/"
            for route in routes:
                if route.matches({"type": "http", "method": method, "path": other, "root_path": ""})[0] is not Match.NONE:
                    return 200, b""
        return 404, b""

    return lookup


class Admission:
    def __init__(self, keys: KeyRing, *, cors_origins: list[str], routes: RouteTable) -> None:
        self.keys = keys
        self.inference_open = keys.inference_open
        self.cors = cors_headers(cors_origins) if cors_origins else None
        self.routes = routes
        self._known: dict[tuple[bytes, str], tuple[Scope, int, bytes]] = {}

    def __call__(self, method: bytes, path: str, headers: Headers) -> Answer | None:
        """None when the request may go on to read its body; else the answer to refuse it with."""
        if method == b"OPTIONS" and self.cors is not None:
            return None   # perhaps a preflight: CORSMiddleware's to answer
        key = (method, path)
        known = self._known.get(key)
        if known is None:
            name = method.decode("latin-1")
            known = (scope_of(name, path), *self.routes(name, path))
            if len(self._known) >= CACHE_SIZE:
                self._known.clear()
            self._known[key] = known
        scope, status, allow = known
        if scope is not Scope.OPEN and not (scope is Scope.INFERENCE and self.inference_open):
            authorization = None
            for field, value in headers:
                if field == b"authorization":
                    authorization = value
                    break
            refused = refusal(self.keys, method.decode("latin-1"), path, authorization)
            if refused is not None:
                return self._answer(headers, refused[0], refused[1], refused[2])
        if status == 404:
            return self._answer(headers, 404, "Not Found", [])
        if status == 405:
            return self._answer(headers, 405, "Method Not Allowed", [(b"allow", allow)])
        return None

    def _answer(self, headers: Headers, status: int, message: str, extra: Headers) -> Answer:
        answer = [JSON_TYPE, *extra]
        if self.cors is not None:
            answer = self.cors(headers, answer)
        return status, answer, orjson.dumps({"error": message})
