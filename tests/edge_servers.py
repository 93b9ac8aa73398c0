"""Third-party servers for the drop-in tests: a Starlette app on uvicorn, nginx, and the chains in front.

``python -m tests.edge_servers [--ssl-certfile F --ssl-keyfile F]`` runs the
Starlette app on plain uvicorn on a kernel-chosen port and prints a ready
line (the form of katyusha.serving) so :class:`tests.procs.Proc` can start
it. The app has a WebSocket echo (``/ws``), a Server-Sent Events stream
(``/sse``), a header echo and a hello. Nothing here is katyusha's code.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tests.procs import Proc, script

CLOSES: list[int] = []


async def ws_echo(websocket: WebSocket) -> None:
    """Echo every message; "bye" makes the server close first with code 4001."""
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                CLOSES.append(message.get("code", 0))
                return
            if message.get("text") == "bye":
                await websocket.close(code=4001, reason="server says bye")
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect as exc:
        CLOSES.append(exc.code)


async def sse(request: Request) -> StreamingResponse:
    """``n`` events, one every ``gap`` seconds; each carries the wall time it was sent."""
    count = int(request.query_params.get("n", "5"))
    gap = float(request.query_params.get("gap", "0.2"))

    async def events():
        for index in range(count):
            if index:
                await asyncio.sleep(gap)
            yield f"id: {index}\ndata: {json.dumps({'i': index, 'sent': time.time()})}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"cache-control": "no-cache"})


async def closes(request: Request) -> JSONResponse:
    return JSONResponse({"closes": CLOSES})


async def headers(request: Request) -> JSONResponse:
    return JSONResponse({k.decode(): v.decode() for k, v in request.scope["headers"]})


async def stream_bytes(request: Request) -> StreamingResponse:
    """``n`` bytes of a repeating pattern, in 64 KiB chunks."""
    size = int(request.query_params["n"])
    block = bytes(range(256)) * 256

    async def chunks():
        left = size
        while left > 0:
            yield block[:left]
            left -= len(block)

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


app = Starlette(routes=[
    WebSocketRoute("/ws", ws_echo),
    Route("/sse", sse),
    Route("/closes", closes),
    Route("/headers", headers),
    Route("/hello", hello),
    Route("/bytes", stream_bytes),
])


def main(argv: list[str]) -> None:
    import uvicorn

    ssl_args = {}
    if "--ssl-certfile" in argv:
        ssl_args = {"ssl_certfile": argv[argv.index("--ssl-certfile") + 1],
                    "ssl_keyfile": argv[argv.index("--ssl-keyfile") + 1]}
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    scheme = "https" if ssl_args else "http"
    url = f"{scheme}://127.0.0.1:{sock.getsockname()[1]}"
    config = uvicorn.Config(app, log_level="warning", ws="websockets", ws_max_size=16 << 20,
                            **ssl_args)
    sys.stderr.write(f"starlette ready data={url} admin=http://127.0.0.1:0 pid={os.getpid()}\n")
    sys.stderr.flush()
    uvicorn.Server(config).run(sockets=[sock])


# -- chains: the app behind katyusha alone, or behind katyusha and nonna --------------


def start_app(*ssl: str) -> Proc:
    return Proc([sys.executable, "-m", "tests.edge_servers", *ssl], ready_timeout=30)


def start_chain(kind: str, upstream: str, *katyusha_args: str,
                nonna_args: tuple[str, ...] = ()) -> list[Proc]:
    """``kind`` "katyusha" or "katyusha+nonna" in front of ``upstream``; the last Proc is the entry."""
    procs: list[Proc] = []
    try:
        pod = upstream
        if kind == "katyusha+nonna":
            nonna = Proc([script("nonna"), "--port", "0", "--admin-port", "0", "--upstream",
                          upstream, "--concurrency", "8", *nonna_args], ready_timeout=30)
            procs.append(nonna)
            pod = f"{nonna.url},name=pod,admin={nonna.admin}"
        else:
            pod = f"{upstream},name=pod"
        procs.append(Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0",
                           "--pod", pod, *katyusha_args], ready_timeout=30))
    except BaseException:
        stop_all(procs)
        raise
    return procs


def stop_all(procs: list[Proc]) -> None:
    for proc in reversed(procs):
        try:
            proc.terminate()
        except Exception:
            proc.kill()


CHAINS = ["katyusha", "katyusha+nonna"]

if __name__ == "__main__":
    main(sys.argv[1:])
