"""The page's "run in this browser" mode: the web bundle's page modules, each served model as the
bundle would carry it (model.json, its .onnx file) and the onnxruntime-web files, under /web/; and the
cross-origin isolation headers on every answer, so that the page may run wasm with threads.

The runtime files are never downloaded by the server: they come from --web-runtime or the cache that
`sedeploy export --formats web` fills (runtime.web.runtime_dir(fetch=False)); without them model.json
answers 404 with the fix, and the page says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.errors import UserError
from ..runtime import web
from .state import model_of, state_of

PAGE_MODULES = ("sedeploy.js", "preprocess.js", "explain.js", "unsure.js", "style.css")   # the page's files


def find_runtime(source: Optional[str]) -> Tuple[Optional[Path], str]:
    """(the runtime folder, "") or (None, why not)."""
    try:
        return web.runtime_dir(source, fetch=False), ""
    except UserError as e:
        return None, str(e)


def _missing(what: str) -> Response:
    return JSONResponse({"error": what}, status_code=404)


async def page_module(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in PAGE_MODULES:
        return _missing(f"no page module {name}")
    return FileResponse(web.STATIC / name, media_type=web.MIME[Path(name).suffix])


def _onnx_file(request: Request) -> Path:
    m = model_of(request)
    path = Path(m.spec.path)
    if path.suffix.lower() != ".onnx":
        raise UserError(f"model '{m.name}' is served from {path.name}; the browser runs .onnx files: serve the "
                        f"export's model.onnx to use this mode")
    return path


async def model_json(request: Request) -> Response:
    st = state_of(request)
    if st.web_runtime is None:
        return _missing(f"this server has no onnxruntime-web files for the browser mode: {st.web_runtime_why}")
    try:
        path = _onnx_file(request)
    except UserError as e:
        return _missing(str(e))
    m = model_of(request)
    spec = web.model_json(m.predictor.info, path.name)
    spec["runtime_files"] = [n for n in web.WASM_FILES + web.WEBGPU_FILES if (st.web_runtime / n).is_file()]
    return JSONResponse(spec)


async def model_file(request: Request) -> Response:
    try:
        path = _onnx_file(request)
    except UserError as e:
        return _missing(str(e))
    if request.path_params["file"] != path.name:
        return _missing(f"model '{request.path_params['model']}' has no file {request.path_params['file']}")
    return FileResponse(path, media_type="application/octet-stream")


async def runtime_file(request: Request) -> Response:
    st = state_of(request)
    name = request.path_params["name"]
    if st.web_runtime is None or name not in web.WASM_FILES + web.WEBGPU_FILES or not (st.web_runtime / name).is_file():
        return _missing(f"no onnxruntime-web file {name} here")
    return FileResponse(st.web_runtime / name, media_type=web.MIME[Path(name).suffix])


class CrossOriginIsolation:
    """Adds COOP same-origin + COEP require-corp to every answer (the page and everything it loads is
    same-origin), which is what lets the browser give the page SharedArrayBuffer, hence wasm threads."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.lower().encode(), v.encode()) for k, v in web.ISOLATION_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def add(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": list(message.get("headers", [])) + self.headers}
            await send(message)
        await self.app(scope, receive, add)
