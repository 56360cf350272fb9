"""The HTTP server: decode -> batch -> predict -> unbatch -> encode, on FastAPI.

    POST /v1/predict   JSON (one row object, or an array of them) or multipart/form-data (files)
    POST /v1/embed     the same inputs -> fused, per-column and per-modality embeddings
    POST /v1/search    one query -> hits from a FAISS index (serving/search.py; `serve --index`)
    POST /v1/generate  a generation run's text, batched, streamed with stream: true (serving/generate.py)
    GET  /v1/model     columns, task and classes      GET /healthz, /readyz, /metrics, /docs
"""
from __future__ import annotations

import hmac
import logging
import time
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from .backend import Backend
from .batcher import Batcher, BatchTimeout
from .metrics import Metrics
from .protocol import (TEXTUAL, ApiError, decode_rows, embeddings, parse_form, parse_json, predictions,
                       read_form_values)
from .schemas import EmbedResponse, PredictResponse, Status, error_reference, error_responses
from .settings import ServeConfig

log = logging.getLogger("polyfuse.serve")
INLINE_PARSE_BYTES = 256 * 1024      # JSON bodies up to this size are parsed on the event loop (about 1 ms at most)


def create_app(backend: Backend | None, settings: ServeConfig | None = None, search=None) -> FastAPI:
    """backend: the model behind /v1/predict and /v1/embed (None: a pretraining run, search only);
    search: a serving.search.SearchService behind /v1/search."""
    if backend is None and search is None:
        raise ValueError("create_app needs a backend, a search service, or both")
    settings = (settings or ServeConfig()).validate()
    metrics = Metrics(settings.max_batch_size)
    state = {"ready": False}

    @asynccontextmanager
    async def lifespan(app):
        if backend is None:                # search only: queries run one at a time, no batcher
            state["ready"] = True
            yield
            state["ready"] = False
            return
        # Requests queue raw rows; the model's thread decodes them just before each batch (one thread hop a batch).
        batcher = Batcher(backend.run, settings.max_batch_size, settings.max_wait_ms, metrics.observe_batch,
                          prepare=lambda raw: prepare(raw, backend, settings))
        batcher.start()
        app.state.batcher = batcher
        metrics.queue_depth = lambda: batcher.queued_rows
        await run_in_threadpool(backend.warm_up)
        state["ready"] = True
        yield
        # uvicorn has stopped accepting and waited for in-flight requests; drain whatever is left.
        state["ready"] = False
        await batcher.stop(settings.graceful_timeout_s)

    streams = backend.streams if backend is not None else list(search.embedder.columns.items())
    app = FastAPI(title="Polyfuse", version="1", lifespan=lifespan,
                  description=f"Serving a Polyfuse model ({backend.name if backend else 'search only'}): "
                              f"{', '.join(f'{c} ({m})' for c, m in streams)}.")
    known_paths: set[str] = set()        # filled below, once the routes exist
    app.add_middleware(Guard, settings=settings, metrics=metrics, known_paths=known_paths)

    @app.exception_handler(ApiError)
    async def api_error(request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(Exception)
    async def internal_error(request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}", "field": None, "status": 500},
                            status_code=500)

    async def require_key(request: Request):       # async: FastAPI would run a plain def in a thread, per request
        if settings.api_key is None:
            return
        given = request.headers.get("x-api-key") or ""
        auth = request.headers.get("authorization") or ""
        if auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY' or 'X-API-Key: KEY')",
                           "authorization")

    async def infer(request: Request) -> tuple[list, dict]:
        ctype = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if ctype in ("multipart/form-data", "application/x-www-form-urlencoded"):
            try:
                form = await request.form(max_files=settings.max_rows * len(backend.streams),
                                          max_fields=settings.max_rows * len(backend.streams))
            except ApiError:
                raise
            except Exception as e:
                raise ApiError(400, f"cannot read the multipart body: {getattr(e, 'detail', e)}", "body") from None
            try:
                raw = await read_form_values(parse_form(form, backend, settings), backend)
            finally:
                await form.close()
            rows = raw
        elif ctype in ("application/json", ""):
            body = await request.body()
            # JSON + base64 of a small body costs less than a thread hop; a big one must not stall the loop.
            rows = parse_json(body, backend, settings) if len(body) <= INLINE_PARSE_BYTES else \
                await run_in_threadpool(parse_json, body, backend, settings)
        else:
            raise ApiError(415, f"content type '{ctype}' is not accepted; send application/json or "
                                "multipart/form-data (or a urlencoded form of text fields)", "content-type")
        try:
            out = await request.app.state.batcher.submit(rows, settings.timeout_ms / 1000.0)
        except BatchTimeout:
            raise ApiError(504, f"no answer within {settings.timeout_ms:g} ms", "timeout") from None
        return rows, out

    prepare = decode_rows
    if backend is not None and "generate" in backend.routes:
        from .generate import add_generate_route, prepare_items
        prepare = prepare_items
        add_generate_route(app, backend, settings, require_key, error_responses(400, 401, 413, 415, 422, 504))

    if backend is not None and "predict" in backend.routes:
        body_doc = {"requestBody": request_schema(backend, settings)}

        # response_model documents the answer; returning a JSONResponse skips FastAPI's validation copy.
        errors = error_responses(400, 401, 413, 415, 422, 504)

        @app.post("/v1/predict", dependencies=[Depends(require_key)], openapi_extra=body_doc,
                  summary="Predict for one row or a list of rows", response_model=PredictResponse, responses=errors)
        async def predict(request: Request):
            rows, out = await infer(request)
            return JSONResponse({"predictions": predictions(out, backend), "backend": backend.name})

        @app.post("/v1/embed", dependencies=[Depends(require_key)], openapi_extra=body_doc,
                  summary="Fused, per-column and per-modality embeddings", response_model=EmbedResponse,
                  responses=errors)
        async def embed(request: Request):
            rows, out = await infer(request)
            return JSONResponse({"embeddings": embeddings(out, rows, backend), "backend": backend.name})

    if search is not None:
        from .search import search_schema

        @app.post("/v1/search", dependencies=[Depends(require_key)], openapi_extra={"requestBody": search_schema(search)},
                  summary="Search an index with one text, image or audio query")
        async def search_route(request: Request):
            return await run_in_threadpool(search.search, await request.body(), settings)

    @app.get("/v1/model", dependencies=[Depends(require_key)], summary="What the model takes and returns",
             responses=error_responses(401))
    async def model_info():
        info = backend.describe() if backend is not None else \
            {"backend": "search only", "columns": dict(search.embedder.columns)}
        if search is not None:
            info["indexes"] = search.describe()
        return info

    @app.get("/healthz", summary="The process is up", response_model=Status)
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz", summary="The model is loaded and taking requests", response_model=Status,
             responses={503: {"model": Status, "description": "starting or stopping: not taking requests"}})
    async def readyz():
        if not state["ready"]:
            return JSONResponse({"status": "not ready"}, status_code=503)
        return {"status": "ready"}

    @app.get("/metrics", dependencies=[Depends(require_key)], response_class=PlainTextResponse,
             summary="Prometheus metrics", responses=error_reference(401))
    async def prometheus():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    known_paths.update(getattr(r, "path", "") for r in app.routes)
    return app


class Guard:
    """ASGI middleware: the body size limit (Content-Length, then counted as it streams) and metrics."""

    def __init__(self, app, settings: ServeConfig, metrics: Metrics, known_paths: set[str]):
        self.app, self.settings, self.metrics, self.known_paths = app, settings, metrics, known_paths

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0, status = time.perf_counter(), [500]
        limit = self.settings.max_body_bytes

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        seen = [0]

        async def limited_receive():
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > limit:
                raise ApiError(413, f"request body is over the limit of {limit} bytes", "body")
            return message

        self.metrics.in_flight += 1
        try:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and (not length.isdigit() or int(length) > limit):
                err = ApiError(413, f"request body is over the limit of {limit} bytes", "body") \
                    if length.isdigit() else ApiError(400, "bad Content-Length header", "content-length")
                await JSONResponse(err.body(), status_code=err.status)(scope, receive, send_status)
                return
            await self.app(scope, limited_receive, send_status)
        finally:
            self.metrics.in_flight -= 1
            # Label by route, never by raw path: a scan of random URLs must not grow the metrics without bound.
            route = getattr(scope.get("route"), "path", None) or \
                (scope["path"] if scope["path"] in self.known_paths else "unmatched")
            self.metrics.observe_request(route, status[0], time.perf_counter() - t0)


def request_schema(backend: Backend, settings: ServeConfig) -> dict:
    """The OpenAPI request body, from the model's columns: JSON (base64 for files) and multipart."""
    json_props, form_props = {}, {}
    for c, m in backend.streams:
        if m in TEXTUAL:
            json_props[c] = {"type": "string", "maxLength": settings.max_text_chars, "nullable": True}
            form_props[c] = {"type": "string"}
        else:
            json_props[c] = {"type": "string", "format": "byte", "nullable": True,
                             "description": f"{m} file content, base64 (never a path)"}
            form_props[c] = {"type": "string", "format": "binary"}
    row = {"type": "object", "properties": json_props, "additionalProperties": False}
    return {"required": True, "content": {
        "application/json": {"schema": {"oneOf": [row, {"type": "array", "items": row, "minItems": 1,
                                                        "maxItems": settings.max_rows}]}},
        "multipart/form-data": {"schema": {"type": "object", "properties": form_props}}}}
