"""Body-size limit as a plain ASGI middleware: refuse before reading, count while reading.

A declared `Content-Length` above the limit is answered 413 without reading a byte; a body without one (chunked) is
counted as it arrives and cut off at the limit. FastAPI reads the body before any route code runs, so this has to
sit in front of it.
"""

from __future__ import annotations

import json


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def message(self, size: str) -> str:
        return f"body: {size} exceeds the limit of {self.max_bytes} bytes (limits.max_body_bytes)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                return await reply(send, 400, "content-length: not an integer")
            if too_big:
                return await reply(send, 413, self.message(f"{int(declared)} bytes"))
        seen, started, exceeded = 0, False, False

        async def counted_receive():
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(self.message(f"more than {self.max_bytes} bytes"))
            return message

        async def guarded_send(message):
            # FastAPI turns any error while reading the body into its own 400; answer 413 in its place
            nonlocal started
            if exceeded:
                if message["type"] == "http.response.start" and not started:
                    started = True
                    await reply(send, 413, self.message(f"more than {self.max_bytes} bytes"))
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge as error:
            if not started:
                await reply(send, 413, str(error))


async def reply(send, status: int, error: str) -> None:
    body = json.dumps({"error": error, "detail": None}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
