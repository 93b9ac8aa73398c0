"""A plain web app on uvicorn + Starlette, with no nonna: what users put katyusha in front of.

Run as ``python -m tests.plain_app --name app-1 --service-time exp:20ms --concurrency 1``;
it binds ``--port`` (0: the kernel picks) and prints the ready line the
project's tools parse (``plain-app ready data=URL admin=URL pid=N``, both the
same URL). Used by end-to-end tests and ``benchmarks/dropin.py``.

Routes:

* any path: waits for one of ``--concurrency`` slots, sleeps one service
  time, answers ``{"app", "served"}`` (or ``fail_status`` at once when set);
* ``/echo``: the request's method and headers as JSON; with the request header
  ``x-send-nonna`` it also answers with ``Nonna-*`` headers of its own, as an
  app that echoes headers would;
* ``/health``: 200, or 503 while ``healthy`` is false;
* ``GET /control``: counters; ``PUT /control`` ``{"fail_status": 500 | null,
  "healthy": bool}`` changes how it behaves (a test's remote control).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from katyusha.core.distributions import parse_service_time
from katyusha.serving import bind_socket, socket_url


def build(name: str, service_time: str, concurrency: int, seed: int) -> Starlette:
    distribution = parse_service_time(service_time)
    rng = random.Random(seed)
    slots = asyncio.Semaphore(concurrency) if concurrency else None
    state = {"fail_status": None, "healthy": True, "served": 0, "in_flight": 0, "by_method": {},
             "body_bytes": 0}

    async def work(request: Request) -> Response:
        state["body_bytes"] += len(await request.body())
        method = request.method
        state["by_method"][method] = state["by_method"].get(method, 0) + 1
        if state["fail_status"]:
            return JSONResponse({"app": name, "error": "failing on purpose"}, status_code=state["fail_status"])
        state["in_flight"] += 1
        try:
            if slots is None:
                await asyncio.sleep(distribution.sample(rng))
            else:
                async with slots:
                    await asyncio.sleep(distribution.sample(rng))
        finally:
            state["in_flight"] -= 1
        state["served"] += 1
        return JSONResponse({"app": name, "served": state["served"]})

    async def echo(request: Request) -> Response:
        headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in request.scope["headers"]]
        extra = {}
        if "x-send-nonna" in request.headers:
            extra = {"Nonna-Error": "upstream-unreachable", "Nonna-Queue-Length": "12345",
                     "Nonna-In-Flight": "999", "Nonna-Pod": "spoofed"}
        return JSONResponse({"app": name, "method": request.method, "headers": headers,
                             "client": request.scope.get("client")}, headers=extra)

    async def health(request: Request) -> Response:
        return Response("ok\n" if state["healthy"] else "unhealthy\n", status_code=200 if state["healthy"] else 503)

    async def control(request: Request) -> Response:
        if request.method == "PUT":
            body = await request.json()
            for key in ("fail_status", "healthy"):
                if key in body:
                    state[key] = body[key]
        return JSONResponse({"app": name, **state})

    return Starlette(routes=[
        Route("/echo", echo, methods=["GET", "POST", "PUT"]),
        Route("/health", health, methods=["GET"]),
        Route("/control", control, methods=["GET", "PUT"]),
        Route("/{path:path}", work, methods=["GET", "POST", "PUT", "DELETE", "HEAD"]),
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.plain_app")
    parser.add_argument("--name", default="app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--service-time", default="const:1ms")
    parser.add_argument("--concurrency", type=int, default=0, help="requests served at once (0: unlimited)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    sock = bind_socket(args.host, args.port)
    url = socket_url(sock)
    config = uvicorn.Config(build(args.name, args.service_time, args.concurrency, args.seed),
                            log_level="warning", access_log=False, lifespan="off", http="httptools")
    server = uvicorn.Server(config)
    sys.stderr.write(f"plain-app ready data={url} admin={url} pid={os.getpid()}\n")
    sys.stderr.flush()
    server.run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
