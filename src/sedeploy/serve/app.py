"""The HTTP app: Open Inference Protocol (KServe v2) REST endpoints as Triton serves them, on starlette.

    GET  /v2/health/live | /v2/health/ready            200, or 503 while loading or shutting down
    GET  /v2                                           server metadata (extensions)
    GET  /v2/models/{m}[/versions/{v}]                 model metadata
    GET  /v2/models/{m}[/versions/{v}]/ready           200 / 503
    GET  /v2/models/{m}[/versions/{v}]/config          model configuration (model_config.proto as JSON)
    GET  /v2/models/{m}[/versions/{v}]/stats           statistics (Triton's statistics extension, a subset)
    POST /v2/models/{m}[/versions/{v}]/infer           JSON and binary tensors (protocol.py)
    POST /v2/repository/index                          the models and their state
    POST /v2/models/{m}/classify                       an image file -> top-k (+ heatmaps): images.py
    GET  /                                             the page (static/)
Errors are {"error": "..."} with Triton's status codes: 400 bad request, 404 unknown model or route,
405 wrong method, 413 body over the limit, 503 not ready / queue full / shutting down; never a trace.
Follows Triton's HTTP/REST docs and KServe's Open Inference Protocol; no torch anywhere.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from .batcher import QueueFull, Stopped
from .limits import BodyLimit, BodyTooLarge
from .model import ServedModel, State
from .state import ServerState, model_of, read_body, state_of
from .protocol import BINARY_TYPE, HEADER_LENGTH, JSON_TYPE, ProtocolError, encode_infer_response, parse_infer_request

log = logging.getLogger("sedeploy.serve")
STATIC = Path(__file__).parent / "static"
EXTENSIONS = ["binary_tensor_data", "classification", "model_configuration", "statistics", "sedeploy_image"]


def error(message: str, status: int, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


# ---------------------------------------------------------------- health, metadata
async def live(request: Request) -> Response:
    return Response(status_code=200)


async def ready(request: Request) -> Response:
    why = state_of(request).not_ready_reason()
    return error(why, 503) if why else Response(status_code=200)


async def server_metadata(request: Request) -> Response:
    return JSONResponse({"name": "sedeploy", "version": __version__, "extensions": EXTENSIONS})


async def model_metadata(request: Request) -> Response:
    return JSONResponse(model_of(request).metadata())


async def model_ready(request: Request) -> Response:
    m = model_of(request, ready=False)
    if state_of(request).draining:
        return error("the server is shutting down", 503)
    return Response(status_code=200) if m.state == State.READY else error(f"model '{m.name}' is {m.state.value}", 503)


async def model_config(request: Request) -> Response:
    return JSONResponse(model_of(request).config)


async def model_stats(request: Request) -> Response:
    m = model_of(request)
    return JSONResponse({"model_stats": [m.batcher.stats.to_triton(m.name, m.version)]})


async def repository_index(request: Request) -> Response:
    return JSONResponse([{"name": m.name, "version": m.version, "state": m.state.value, "reason": m.reason}
                         for m in state_of(request).models.values()])


# ---------------------------------------------------------------- inference
async def infer(request: Request) -> Response:
    st = state_of(request)
    m = model_of(request)
    t0 = time.perf_counter_ns()
    body = await read_body(request, st.max_body)
    try:
        req = parse_infer_request(body, request.headers.get(HEADER_LENGTH), m.max_json_bytes(st.max_body), m.check_input)
        inputs, n = m.check_inputs(req)
        m.validate_outputs(req)
        outs = await m.batcher.submit(inputs, n)
        payload, header_len = encode_infer_response(m.name, m.version, req.id, m.select_outputs(req, outs),
                                                     m.unsure_parameters(outs))
    except Exception:
        m.batcher.stats.fail.add(time.perf_counter_ns() - t0)
        raise
    m.batcher.stats.success.add(time.perf_counter_ns() - t0)
    if header_len is None:
        return Response(payload, media_type=JSON_TYPE)
    return Response(payload, media_type=BINARY_TYPE, headers={HEADER_LENGTH: str(header_len)})


async def index_page(request: Request) -> Response:
    return FileResponse(STATIC / "index.html", media_type="text/html")


# ---------------------------------------------------------------- errors
async def on_protocol_error(request: Request, exc: ProtocolError) -> Response:
    return error(str(exc), exc.status)


async def on_http_exception(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 404:
        return error(f"no route {request.method} {request.url.path}; see GET /v2 and the README's endpoint list", 404)
    if exc.status_code == 405:
        return error(f"method {request.method} not allowed on {request.url.path}", 405, exc.headers)
    return error(str(exc.detail), exc.status_code, exc.headers)


async def on_overload(request: Request, exc: Exception) -> Response:
    return error(str(exc), 503)


async def on_too_large(request: Request, exc: BodyTooLarge) -> Response:
    return error(str(exc), 413)


async def on_disconnect(request: Request, exc: ClientDisconnect) -> Response:
    return Response(status_code=499)   # nobody to answer; uvicorn drops it


async def on_internal(request: Request, exc: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error(f"internal server error ({type(exc).__name__}); see the server log", 500)


# ---------------------------------------------------------------- lifespan: load in the background, drain at exit
async def _load_all(st: ServerState, loader: ThreadPoolExecutor) -> None:
    for m in st.models.values():
        try:
            await asyncio.wrap_future(loader.submit(m.load))
        except Exception as e:  # noqa: BLE001 - UserError (bad model) and onnxruntime errors alike
            m.state, m.reason = State.UNAVAILABLE, str(e)
            if st.on_load_error:
                st.on_load_error(f"model {m.name}: {e}")
            else:
                log.error("model %s: %s", m.name, e)
            return
        m.make_batcher().on_death = lambda why, m=m: _died(st, m, why)
        m.batcher.start()
        m.state = State.READY
    if st.on_ready:
        st.on_ready()


def _died(st: ServerState, m, why: str) -> None:
    """A model's batching loop ended unasked: readiness false, its requests 503 at once (batcher.Stopped)."""
    m.state, m.reason = State.UNAVAILABLE, why
    log.error("model %s: %s", m.name, why)


def lifespan(app: Starlette):
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def span(app: Starlette):
        st: ServerState = app.state.serve
        loader = ThreadPoolExecutor(1, thread_name_prefix="sedeploy-load")
        st.tasks.append(asyncio.get_running_loop().create_task(_load_all(st, loader)))
        try:
            yield
        finally:
            st.draining = True
            for t in st.tasks:
                t.cancel()
            # the loading thread cannot be interrupted: wait for it here, so it does not outlive shutdown
            await asyncio.gather(*st.tasks, return_exceptions=True)
            await asyncio.get_running_loop().run_in_executor(None, loader.shutdown, True)
            for m in st.models.values():
                if m.batcher is not None:
                    await m.batcher.stop()
    return span(app)


def create_app(models: List[ServedModel], max_body: int = 64 << 20, web_runtime: Optional[str] = None,
               max_inflight: int = 0, max_decodes: int = 0) -> Starlette:
    """The ASGI app serving `models` (loaded in the background once it starts), bodies limited to max_body
    each and max_inflight together (0: 4 x max_body), at most max_decodes images decoded at once (0: the
    cores, at least 2); the page's browser mode with the onnxruntime-web files of web_runtime (None: the cache)."""
    from . import images, web
    versioned = ["/v2/models/{model}", "/v2/models/{model}/versions/{version}"]
    # starlette tries routes in order: the hot one first
    routes = [Route(base + "/infer", infer, methods=["POST"]) for base in versioned]
    routes += [Route("/", index_page), Mount("/static", StaticFiles(directory=STATIC), name="static"),
               Route("/v2/health/live", live), Route("/v2/health/ready", ready), Route("/v2", server_metadata),
               Route("/v2/repository/index", repository_index, methods=["POST", "GET"]),
               Route("/v2/models/{model}/classify", images.classify, methods=["POST"]),
               Route("/heatmaps/{key}/{kind}.png", images.heatmap_png),
               Route("/web/{name}", web.page_module), Route("/web/models/{model}/model.json", web.model_json),
               Route("/web/models/{model}/ort/{name}", web.runtime_file),
               Route("/web/models/{model}/{file}", web.model_file)]
    for base in versioned:
        routes += [Route(base, model_metadata), Route(base + "/ready", model_ready),
                   Route(base + "/config", model_config), Route(base + "/stats", model_stats)]
    handlers = {ProtocolError: on_protocol_error, HTTPException: on_http_exception, QueueFull: on_overload,
                Stopped: on_overload, BodyTooLarge: on_too_large,
                ClientDisconnect: on_disconnect, Exception: on_internal}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan,
                    middleware=[Middleware(web.CrossOriginIsolation), Middleware(BodyLimit, max_body=max_body, max_inflight=max_inflight)])
    app.state.serve = ServerState({m.name: m for m in models}, max_body, heatmaps=images.HeatmapCache())
    app.state.serve.web_runtime, app.state.serve.web_runtime_why = web.find_runtime(web_runtime)
    app.state.serve.max_decodes = max_decodes or max(2, os.cpu_count() or 1)
    app.state.serve.decode_slots = asyncio.Semaphore(app.state.serve.max_decodes)
    return app
