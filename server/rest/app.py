"""FastAPI app: each route translates HTTP <-> one InferenceService call; nothing else lives here."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from server.core.errors import InvalidArgument, ModelBridgeError, PayloadTooLarge
from server.core.service import InferenceService
from server.rest import codec
from server.rest.errors import error_response, from_error
from server.rest.fastpath import infer_handler

log = logging.getLogger("modelbridge.rest")
UI_DIR = Path(__file__).resolve().parent.parent / "ui"
JSON = "application/json"


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(doc), status_code=status, media_type=JSON, headers=headers)


def _empty(status: int = 200) -> Response:
    return Response(b"", status_code=status)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


class _UIFiles(StaticFiles):
    """The demo page and onnxruntime-web's wasm need cross-origin isolation for threads."""

    async def get_response(self, path: str, scope: Any) -> Response:
        resp = await super().get_response(path, scope)
        resp.headers["Cross-Origin-Opener-Policy"] = "same-origin"
        resp.headers["Cross-Origin-Embedder-Policy"] = "require-corp"
        resp.headers["Cross-Origin-Resource-Policy"] = "same-origin"
        return resp


def create_app(service: InferenceService, *, max_body_bytes: int = 64 * 1024 * 1024) -> FastAPI:
    app = FastAPI(title="modelbridge", version="2", docs_url="/docs", redoc_url=None)

    @app.exception_handler(ModelBridgeError)
    async def _core_error(_: Request, exc: ModelBridgeError) -> Response:
        return from_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        return error_response(400, f"invalid request: {exc.errors()[:3]}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        return error_response(500, f"internal error: {type(exc).__name__}")

    # -- health and metadata ---------------------------------------------------------------------
    @app.get("/v2/health/live")
    async def live() -> Response:
        return _empty(200 if service.live else 503)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return _empty(200 if service.ready else 503)

    @app.get("/v2")
    async def server_metadata() -> Response:
        return _json(service.server_metadata())

    @app.get("/v2/models/stats")
    async def all_stats() -> Response:
        return _json(service.statistics())

    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        _model_routes(app, prefix, service, max_body_bytes)

    # -- repository --------------------------------------------------------------------------------
    @app.post("/v2/repository/index")
    async def repository_index(request: Request) -> Response:
        body = await read_body(request, max_body_bytes)
        ready_only = False
        if body.strip():
            doc = codec.json_object(body, "request body")
            ready_only = bool(doc.get("ready", False))
        return _json(service.repository_index(ready_only=ready_only))

    @app.post("/v2/repository/models/{model}/load")
    async def load(model: str, request: Request) -> Response:
        body = await read_body(request, max_body_bytes)
        config_text, files = _load_parameters(codec.json_object(body, "request body") if body.strip() else {})
        await run_in_threadpool(service.load, model, config_text=config_text, files=files)
        return _empty()

    @app.post("/v2/repository/models/{model}/unload")
    async def unload(model: str, request: Request) -> Response:
        await read_body(request, max_body_bytes)
        await run_in_threadpool(service.unload, model)
        return _empty()

    @app.put("/v2/repository/models/{model}/versions/{version}")
    async def upload(model: str, version: str, request: Request) -> Response:
        body = await read_body(request, max_body_bytes)
        info = await run_in_threadpool(service.upload_version, model, version, body)
        return _json(info, status=201)

    if UI_DIR.is_dir():
        app.mount("/ui", _UIFiles(directory=UI_DIR, html=True), name="ui")
    return app


def _model_routes(app: FastAPI, prefix: str, service: InferenceService, max_body_bytes: int) -> None:
    def version_of(request: Request) -> str:
        return request.path_params.get("version", "")

    async def metadata(model: str, request: Request) -> Response:
        return _json(service.model_metadata(model, version_of(request)))

    async def ready(model: str, request: Request) -> Response:
        return _empty(200 if service.model_ready(model, version_of(request)) else 400)

    async def config(model: str, request: Request) -> Response:
        return _json(service.model_config(model, version_of(request)))

    async def stats(model: str, request: Request) -> Response:
        return _json(service.statistics(model, version_of(request)))

    async def download(model: str, request: Request) -> Response:
        raw, etag = service.model_file(model, version_of(request))
        headers = {"ETag": etag, "Cache-Control": "no-cache", "Access-Control-Expose-Headers": "ETag",
                   "Cross-Origin-Resource-Policy": "cross-origin"}
        if etag in _etags(request.headers.get("if-none-match")):
            return Response(status_code=304, headers=headers)
        return Response(raw, media_type="application/octet-stream", headers=headers)

    async def gates(model: str, request: Request) -> Response:
        doc = await run_in_threadpool(service.gates, model, version_of(request))
        return _json(doc)

    handle = infer_handler(service)

    async def infer(model: str, request: Request) -> Response:
        # The same bytes-in/bytes-out handler the HTTP/1.1 server calls; this route serves ASGI hosting.
        body = await read_body(request, max_body_bytes)
        status, headers, payload = await handle(model, version_of(request), body,
                                                request.headers.get(codec.HEADER), request.headers.raw)
        return Response(payload, status_code=status, headers={k.decode(): v.decode() for k, v in headers})

    app.add_api_route(prefix, metadata, methods=["GET"])
    app.add_api_route(prefix + "/ready", ready, methods=["GET"])
    app.add_api_route(prefix + "/config", config, methods=["GET"])
    app.add_api_route(prefix + "/stats", stats, methods=["GET"])
    app.add_api_route(prefix + "/model.onnx", download, methods=["GET"])
    app.add_api_route(prefix + "/gates", gates, methods=["GET"])
    app.add_api_route(prefix + "/infer", infer, methods=["POST"])


def _etags(header: str | None) -> set[str]:
    if not header:
        return set()
    return {t.strip().removeprefix("W/") for t in header.split(",")}


def _load_parameters(doc: dict[str, Any]) -> tuple[str | None, dict[str, bytes]]:
    """Triton's load parameters: "config" (JSON text) and "file:<version>/<name>" (base64)."""
    import base64
    import binascii

    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidArgument("'parameters' must be an object")
    config = params.get("config")
    if config is not None and not isinstance(config, str):
        raise InvalidArgument("the 'config' load parameter must be a JSON string")
    files: dict[str, bytes] = {}
    for key, value in params.items():
        if key.startswith("file:"):
            if not isinstance(value, str):
                raise InvalidArgument(f"load parameter '{key}' must be base64 text")
            try:
                files[key[5:]] = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise InvalidArgument(f"load parameter '{key}' is not valid base64") from None
    return config, files
