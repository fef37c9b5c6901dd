"""A request-body size limit as plain ASGI middleware (uvicorn has none; Triton's is --http-max-input-size).

A declared Content-Length over the limit is answered 413 before a byte of the body is read; a body
without one (chunked) is counted as it arrives and refused with BodyTooLarge (413) once it passes
the limit, so no request can make the server hold more than `max_body` bytes of it.
"""
from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body exceeds the {limit:,}-byte limit; send less, or raise the server's "
                         f"--max-body-mb")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope["headers"] if k == b"content-length"), None)
        if declared is not None:
            if not declared.isdigit():
                return await _reply(send, 400, f"invalid Content-Length {declared[:40].decode(errors='replace')!r}")
            if int(declared) > self.max_body:
                return await _reply(send, 413, str(BodyTooLarge(self.max_body)))
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


async def _reply(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    # Connection: close, since the unread body is still on the wire
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
