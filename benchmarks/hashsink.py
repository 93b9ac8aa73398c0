"""A tiny upstream for body benchmarks: hashes what is uploaded, streams what is downloaded.

``PUT/POST /upload``  -> the body's sha256 and length as JSON, read as a stream.
``GET /download?size=N`` -> N deterministic bytes (see :func:`pattern`), streamed.

Run as ``python -m benchmarks.hashsink --port P``; it prints the katyusha-style
ready line so the benchmark can read its URL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from urllib.parse import parse_qs

CHUNK = 256 * 1024


def pattern(size: int, chunk: int = CHUNK):
    """Yield ``size`` bytes in chunks; the same size always gives the same bytes."""
    block = hashlib.sha256(b"katyusha").digest() * (chunk // 32)
    sent = 0
    index = 0
    while sent < size:
        n = min(chunk, size - sent)
        # Vary each chunk so a dropped or repeated chunk changes the hash.
        head = index.to_bytes(8, "big")
        data = (head + block)[:n]
        yield data
        sent += n
        index += 1


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    for chunk in pattern(size):
        digest.update(chunk)
    return digest.hexdigest()


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["path"] == "/download":
        query = parse_qs(scope["query_string"].decode())
        size = int(query.get("size", ["0"])[0])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/octet-stream"),
                                (b"content-length", str(size).encode())]})
        for chunk in pattern(size):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    digest = hashlib.sha256()
    length = 0
    while True:
        message = await receive()
        body = message.get("body", b"")
        digest.update(body)
        length += len(body)
        if not message.get("more_body"):
            break
    payload = json.dumps({"sha256": digest.hexdigest(), "length": length}).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": payload})


def main() -> int:
    from katyusha.serving import App, bind_socket, run

    parser = argparse.ArgumentParser(prog="hashsink")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    data = bind_socket("127.0.0.1", args.port)
    admin = bind_socket("127.0.0.1", 0)
    return run([App(app, data), App(app, admin)], role="hashsink")


if __name__ == "__main__":
    sys.exit(main())
