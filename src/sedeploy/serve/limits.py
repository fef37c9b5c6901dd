"""Request-body limits as plain ASGI middleware (uvicorn has none; Triton's is --http-max-input-size).

Per request: a declared Content-Length over the limit is answered 413 before a byte of the body is
read; a body without one (chunked) is counted as it arrives and refused with BodyTooLarge (413) once
it passes the limit, so no request can make the server hold more than `max_body` bytes of it.
As a whole: every request with a body reserves its declared length (a chunked one: `max_body`) from
one budget of `max_inflight` bytes until its answer is sent; a request the budget cannot hold is
answered 503 with Retry-After at once, before its body is read. So many large bodies at once cannot
exhaust memory: the server holds at most `max_inflight` bytes of bodies.
"""
from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the {limit:,}-byte limit; send less, or raise the server's "
                         f"--max-body-mb")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body: int, max_inflight: int = 0) -> None:
        self.app, self.max_body = app, max_body
        self.max_inflight = max(max_inflight or 4 * max_body, max_body)
        self.inflight = 0                      # bytes reserved by requests being read or answered (one event loop)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit():
                return await _reply(send, 400, f"invalid Content-Length {declared[:40].decode(errors='replace')!r}")
            if int(declared) > self.max_body:
                return await _reply(send, 413, str(BodyTooLarge(self.max_body)))
        encoded = next((v for k, v in scope["headers"] if k == b"content-encoding"), b"identity").lower()
        reserve = int(declared) if declared is not None else (
            0 if scope.get("method") in ("GET", "HEAD", "OPTIONS") else self.max_body)
        if reserve and encoded not in (b"identity", b""):
            reserve = self.max_body        # a compressed body inflates up to max_body (state.read_body)
        if reserve and self.inflight + reserve > self.max_inflight:
            await _discard(receive, self.max_body)          # so that the client, still sending, reads the answer
            return await _reply(send, 503, f"busy: {self.inflight:,} bytes of request bodies in flight, the limit is "
                                           f"{self.max_inflight:,} (--max-inflight-mb); retry shortly",
                                retry_after=1)
        self.inflight += reserve
        try:
            await self._limited(scope, receive, send)
        finally:
            self.inflight -= reserve

    async def _limited(self, scope: Scope, receive: Receive, send: Send) -> None:
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_body:
                    raise BodyTooLarge(self.max_body)
            return msg

        await self.app(scope, counted, send)


async def _discard(receive: Receive, limit: int) -> None:
    """Read and drop a request's body (at most `limit` bytes: memory stays flat, only time is spent)."""
    seen = 0
    while seen <= limit:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        seen += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            return


async def _reply(send: Send, status: int, message: str, retry_after: int = 0) -> None:
    body = json.dumps({"error": message}).encode()
    # Connection: close, since the unread body is still on the wire
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close")] + ([(b"retry-after", str(retry_after).encode())] if retry_after else [])
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
