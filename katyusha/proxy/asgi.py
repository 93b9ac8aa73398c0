"""Small raw-ASGI helpers shared by the data and admin apps: short responses and bounded bodies."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

from katyusha.core.errors import BadInput

Send = Callable[[dict], Awaitable[None]]
Receive = Callable[[], Awaitable[dict]]

JSON = b"application/json"
TEXT = b"text/plain; charset=utf-8"


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = TEXT,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """Send a whole response in one body message."""
    head = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if headers:
        head.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})


async def respond_json(send: Send, status: int, value: object, headers=None) -> None:
    body = json.dumps(value, separators=(",", ":"), default=str).encode()
    await respond(send, status, body, JSON, headers)


async def read_body(receive: Receive, limit: int = 1 << 20) -> bytes:
    """The whole request body. Raises BadInput when it exceeds ``limit`` bytes."""
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BadInput(f"request body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def lifespan(receive: Receive, send: Send, startup=None, shutdown=None) -> None:
    """Run an ASGI lifespan exchange, calling the optional async ``startup``/``shutdown``."""
    while True:
        message = await receive()
        kind = message["type"]
        if kind == "lifespan.startup":
            if startup is not None:
                await startup()
            await send({"type": "lifespan.startup.complete"})
        elif kind == "lifespan.shutdown":
            if shutdown is not None:
                await shutdown()
            await send({"type": "lifespan.shutdown.complete"})
            return
