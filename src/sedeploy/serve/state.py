"""Server state shared by the HTTP endpoints: the models, readiness, limits; request helpers.

Readiness follows Triton: the server is ready when every model is loaded, and stops being ready the
moment it starts shutting down (load balancers stop sending before the listener closes).
"""
from __future__ import annotations

import asyncio
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from starlette.requests import Request

from .limits import BodyTooLarge
from .model import ServedModel, State
from .protocol import ProtocolError


@dataclass
class ServerState:
    models: Dict[str, ServedModel]
    max_body: int = 64 << 20
    draining: bool = False
    on_load_error: Optional[Callable[[str], None]] = None   # the CLI stops the server (Triton's exit-on-error)
    on_ready: Optional[Callable[[], None]] = None
    heatmaps: object = None                                 # images.HeatmapCache
    tasks: List[asyncio.Task] = field(default_factory=list)
    max_decodes: int = 2                                    # images decoded or drawn at once (images.classify)
    decode_slots: Optional[asyncio.Semaphore] = None
    web_runtime: Optional[Path] = None                      # onnxruntime-web files for the page's browser mode
    web_runtime_why: str = ""                               # why there are none

    def not_ready_reason(self) -> Optional[str]:
        if self.draining:
            return "the server is shutting down"
        waiting = [m.name for m in self.models.values() if m.state != State.READY]
        return f"models not ready: {', '.join(waiting)}" if waiting else None


def state_of(request: Request) -> ServerState:
    return request.app.state.serve


def model_of(request: Request, ready: bool = True) -> ServedModel:
    """The model the path names (404 unknown model or version; 503 not ready, when `ready`)."""
    st = state_of(request)
    name = request.path_params["model"]
    m = st.models.get(name)
    if m is None:
        raise ProtocolError(f"unknown model '{name}'; this server has {', '.join(st.models) or 'none'}", 404)
    v = request.path_params.get("version")
    if v is not None and v != m.version:
        raise ProtocolError(f"unknown version '{v}' of model '{name}'; it serves version {m.version}", 404)
    if ready and m.state != State.READY:
        raise ProtocolError(f"model '{name}' is not ready ({m.state.value.lower()}{': ' + m.reason if m.reason else ''})",
                            503)
    return m


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, gunzipped/inflated when Content-Encoding says so (bounded by the same limit)."""
    body = await request.body()
    enc = request.headers.get("content-encoding", "identity").lower()
    if enc in ("identity", ""):
        return body
    if enc not in ("gzip", "deflate"):
        raise ProtocolError(f"unsupported Content-Encoding {enc!r}; use gzip, deflate or none", 415)
    d = zlib.decompressobj(16 + zlib.MAX_WBITS if enc == "gzip" else zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as e:
        raise ProtocolError(f"body is not valid {enc} data ({e})") from None
    if len(out) > limit:
        raise BodyTooLarge(limit)
    return out
