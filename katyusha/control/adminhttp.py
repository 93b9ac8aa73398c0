"""A small asyncio JSON client for the fleet's admin ports (control traffic only).

The control loop talks to a handful of admin endpoints a few times a second;
one short-lived connection per call keeps it simple and never ties up worker
threads while a pod takes seconds to start or a drain waits for requests.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit


class AdminCallError(Exception):
    """An admin call failed: unreachable, timed out, or answered an unexpected status (``status`` 0: no answer)."""

    def __init__(self, message: str, status: int = 0, payload: Any = None):
        super().__init__(message)
        self.status = status
        self.payload = payload


async def call(method: str, url: str, body: Any = None, *, timeout: float = 5.0) -> tuple[int, Any]:
    """Send one request; return (status, decoded JSON, or text when not JSON). Raises AdminCallError."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise AdminCallError(f"{method} {url}: only http://host:port URLs are supported")
    port = parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    data = b"" if body is None else json.dumps(body).encode()
    head = (
        f"{method} {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: application/json\r\n"
        f"Connection: close\r\nContent-Length: {len(data)}\r\n"
        + ("Content-Type: application/json\r\n" if body is not None else "")
        + "\r\n"
    ).encode()
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(parts.hostname, port)
            writer.write(head + data)
            await writer.drain()
            raw = await reader.read()
    except (OSError, TimeoutError) as exc:
        raise AdminCallError(f"{method} {url}: {exc or type(exc).__name__}") from None
    finally:
        if writer is not None:
            writer.close()
    status, text = _parse(raw, method, url)
    try:
        return status, json.loads(text) if text else None
    except ValueError:
        return status, text


async def expect(method: str, url: str, body: Any = None, *, ok=(200,), timeout: float = 5.0) -> Any:
    """Like :func:`call`, but raise AdminCallError (with status and payload) unless the status is in ``ok``."""
    status, payload = await call(method, url, body, timeout=timeout)
    if status not in ok:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        raise AdminCallError(f"{method} {url}: HTTP {status}: {text[:300]}", status, payload)
    return payload


async def get_json(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` expecting 200 and JSON. Raises AdminCallError."""
    return await expect("GET", url, timeout=timeout)


def _parse(raw: bytes, method: str, url: str) -> tuple[int, str]:
    head, sep, rest = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        raise AdminCallError(f"{method} {url}: not an HTTP response") from None
    if not sep:
        return status, ""
    chunked = any(
        line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower() for line in lines[1:]
    )
    body = _dechunk(rest) if chunked else rest
    return status, body.decode("utf-8", "replace")


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    while data:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += data[:size]
        data = data[size + 2 :]
    return bytes(out)
