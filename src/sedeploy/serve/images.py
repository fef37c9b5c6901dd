"""The image endpoint: an image file in, top-k classes (and heatmap PNGs) out, as `sedeploy infer` gives them.

    POST /v2/models/{m}/classify?topk=5&heatmaps=none|base64|url&channels=6
    body: the image file itself (any Content-Type but multipart), or multipart/form-data with a file
    field (the page sends `image`)

Decoding, EXIF, mode conversion, resize and normalization are the runtime's (Predictor.decode /
to_input, runtime/preprocess.py); the tensor then joins the model's dynamic batcher like any
protocol request, and the answer is Predictor.predictions / render_heatmaps: the same code as the
CLI. Heatmaps come back inline (data: URIs) or as URLs into a small bounded in-memory cache.
An extension route in the style of Triton's (e.g. /v2/models/{m}/generate); not part of KServe v2.
"""
from __future__ import annotations

import base64
import collections
import io
import threading
import uuid
from typing import Dict, Optional, Tuple

from PIL import Image
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core.decode import ImageError
from .protocol import ProtocolError
from .batcher import QueueFull
from .state import model_of, read_body, state_of

HEATMAP_MODES = ("none", "base64", "url")
MAX_TOPK = 1000
DISPLAY_MAX = 256


class HeatmapCache:
    """Rendered PNGs by key, the oldest dropped past `max_entries` images (memory stays bounded)."""

    def __init__(self, max_entries: int = 64) -> None:
        self.max_entries = max_entries
        self._items: "collections.OrderedDict[str, Dict[str, bytes]]" = collections.OrderedDict()
        self._lock = threading.Lock()

    def put(self, pngs: Dict[str, bytes]) -> str:
        key = uuid.uuid4().hex
        with self._lock:
            self._items[key] = pngs
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        return key

    def get(self, key: str, kind: str) -> Optional[bytes]:
        with self._lock:
            return self._items.get(key, {}).get(kind)


def _int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        v = int(raw)
    except ValueError:
        raise ProtocolError(f"query parameter {name}={raw[:20]!r} must be an integer") from None
    if not lo <= v <= hi:
        raise ProtocolError(f"query parameter {name}={v} must be between {lo} and {hi}")
    return v


async def _image_bytes(request: Request, limit: int) -> Tuple[bytes, str]:
    """The uploaded file: the raw body, or the first file part of a multipart form."""
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=16)
        try:
            up = next((v for v in form.values() if isinstance(v, UploadFile)), None)
            if up is None:
                raise ProtocolError("the multipart form has no file; send the image as a file field "
                                    "(e.g. curl -F image=@photo.jpg)")
            return await up.read(), up.filename or "upload"
        finally:
            await form.close()
    return await read_body(request, limit), request.query_params.get("name", "upload")


def _for_display(im: Image.Image) -> Image.Image:
    """Heatmaps are drawn over the image at most DISPLAY_MAX pixels on a side: a browser shows no more, and a
    640x480 upload's full-size overlays cost ~10x the time (the prediction itself used the full image)."""
    if max(im.size) <= DISPLAY_MAX:
        return im
    small = im.copy()
    small.thumbnail((DISPLAY_MAX, DISPLAY_MAX), Image.BILINEAR)
    return small


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)   # fast: these PNGs live for one page view
    return buf.getvalue()


async def classify(request: Request) -> Response:
    st = state_of(request)
    m = model_of(request)
    topk = _int_param(request, "topk", 5, 1, MAX_TOPK)
    channels = _int_param(request, "channels", 6, 1, 128)
    mode = request.query_params.get("heatmaps", "none")
    if mode not in HEATMAP_MODES:
        raise ProtocolError(f"heatmaps={mode[:20]!r}; choose one of: {', '.join(HEATMAP_MODES)}")
    p = m.predictor
    if mode != "none" and p.info.feature_map is None:
        raise ProtocolError(f"model '{m.name}' has no feature_map output, so no heatmaps; re-export it without "
                            f"--logits-only, or ask with heatmaps=none")
    if len(m.inputs) != 1:
        raise ProtocolError(f"model '{m.name}' takes {len(m.inputs)} inputs; the image endpoint needs one")
    data, name = await _image_bytes(request, st.max_body)
    if st.decode_slots.locked():        # a decoded image may be 160 MB: only so many at once, then 503 at once
        raise QueueFull(f"busy: {st.max_decodes} images are being decoded or drawn (--max-decodes); retry shortly")
    await st.decode_slots.acquire()
    held = True
    try:
        def prepare():
            im = p.decode(data, name)
            return im, p.to_input(im)
        try:
            original, x = await run_in_threadpool(prepare)
        except ImageError as e:
            raise ProtocolError(str(e)) from None
        if mode == "none":              # the decoded image is not needed any more: the slot is free for others
            original = None
            st.decode_slots.release()
            held = False
        return await _classify(st, m, p, original, x, name, topk, channels, mode)
    finally:
        if held:
            st.decode_slots.release()


async def _classify(st, m, p, original, x, name: str, topk: int, channels: int, mode: str) -> Response:
    outs = await m.batcher.submit({m.inputs[0].name: x[None]}, 1)
    pred = p.predictions([name], [original], outs, topk)[0]
    rec = {"model_name": m.name, "model_version": m.version, **pred.to_dict()}
    if mode != "none":
        pred.original = _for_display(original)
        images, report = await run_in_threadpool(p.render_heatmaps, pred, channels)
        pngs = await run_in_threadpool(lambda: {k: _png(v) for k, v in images.items()})
        rec.update(report)
        if mode == "base64":
            rec["heatmaps"] = {k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in pngs.items()}
        else:
            key = st.heatmaps.put(pngs)
            rec["heatmaps"] = {k: f"/heatmaps/{key}/{k}.png" for k in pngs}
    return JSONResponse(rec)


async def heatmap_png(request: Request) -> Response:
    png = state_of(request).heatmaps.get(request.path_params["key"], request.path_params["kind"])
    if png is None:
        raise ProtocolError("no such heatmap (it expired: the server keeps the most recent ones only)", 404)
    return Response(png, media_type="image/png")
