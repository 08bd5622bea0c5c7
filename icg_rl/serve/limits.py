"""Body-size limit as a plain ASGI middleware: refuse before reading, count while reading, and close gracefully.

A declared `Content-Length` above the limit is answered 413 without parsing a byte; a body without one (chunked) is
counted as it arrives and cut off at the limit. FastAPI reads the body before any route code runs, so this has to
sit in front of it.

Lingering close: a server that answers early and closes while the client is still sending makes the kernel reset
the connection, and a client that writes its whole body before reading (Python's urllib, many SDKs) then sees
"connection reset" instead of the 413 and its reason. So after the 413's bytes are out, the rest of the body is read
and discarded — at most `linger_bytes`, for at most `linger_s` — before the response is completed (and the
connection closed, when the client asked for that), as nginx and Apache do. A body declared larger than that bound
is not read at all: its 413 carries `Connection: close`, and such a client may see the reset.
"""

from __future__ import annotations

import asyncio
import json


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app, max_bytes: int, linger_bytes: int = 64 * 2**20, linger_s: float = 10.0):
        self.app, self.max_bytes, self.linger_bytes, self.linger_s = app, max_bytes, linger_bytes, linger_s

    def message(self, size: str) -> str:
        return f"body: {size} exceeds the limit of {self.max_bytes} bytes (limits.max_body_bytes)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                return await reply(send, 400, "content-length: not an integer", close=True)
            if size > self.max_bytes:
                return await self.refuse(receive, send, self.message(f"{size} bytes"), unread=size)
        seen, started, exceeded, ended = 0, False, False, False

        async def counted_receive():
            nonlocal seen, exceeded, ended
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                ended = not message.get("more_body", False)
                if seen > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge(self.message(f"more than {self.max_bytes} bytes"))
            return message

        async def guarded_send(message):
            # FastAPI turns any error while reading the body into its own 400: once over the limit, drop its reply
            nonlocal started
            if exceeded:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except BodyTooLarge:
            pass
        if exceeded and not started:
            await self.refuse(receive, send, self.message(f"more than {self.max_bytes} bytes"),
                              unread=0 if ended else None)

    async def refuse(self, receive, send, error: str, unread: int | None) -> None:
        """413, then the lingering close. `unread`: the body bytes still to come (declared), None when unknown
        (chunked); the connection stays open for another request only when the whole rest fits the bound."""
        if unread == 0 or (unread is not None and unread > self.linger_bytes):
            return await reply(send, 413, error, close=unread != 0)
        await reply(send, 413, error, close=unread is None, more=True)  # the client has its answer now
        await discard(receive, self.linger_bytes, self.linger_s)
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def discard(receive, max_bytes: int, max_seconds: float) -> int:
    """Read and drop request body messages until the body ends, `max_bytes` were read or `max_seconds` passed;
    returns the bytes dropped."""
    loop = asyncio.get_running_loop()
    deadline, dropped = loop.time() + max_seconds, 0
    while dropped <= max_bytes:
        try:
            message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.0))
        except TimeoutError:
            break
        if message["type"] != "http.request":  # http.disconnect: the client is gone
            break
        dropped += len(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return dropped


async def reply(send, status: int, error: str, close: bool = False, more: bool = False) -> None:
    """A JSON refusal; `close` asks the server to close the connection after it, `more` leaves the response open
    (its bytes are all sent; an empty final message completes it)."""
    body = json.dumps({"error": error, "detail": None}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status,
                "headers": headers + ([(b"connection", b"close")] if close else [])})
    await send({"type": "http.response.body", "body": body, "more_body": more})
