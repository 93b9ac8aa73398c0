"""The data port: the emulated application, a bare ASGI app answering every method and path.

No framework on this path: it is what the load balancer's benchmarks measure
through, so it does the least work a request needs. Only a warm or active
pod serves; any other state, or a timed transition, answers 503 naming the
state. With ``--app sentiment`` an admitted request is served by the real
sentiment app (sim_backend/sentiment.py) instead of the emulated service time.
"""

from __future__ import annotations

import json

from katyusha.core.errors import IllegalTransition
from sim_backend.pod import Pod

_JSON = [(b"content-type", b"application/json")]


def _headers(body: bytes, extra: list | None = None) -> list:
    return [*_JSON, (b"content-length", str(len(body)).encode()), *(extra or [])]


class DataApp:
    def __init__(self, pod: Pod):
        self.pod = pod
        self.app = None
        if pod.settings.app == "sentiment":
            from sim_backend.sentiment import SentimentApp

            self.app = SentimentApp()

    async def __call__(self, scope, receive, send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await _lifespan(receive, send)

    async def _http(self, scope, receive, send) -> None:
        pod = self.pod
        try:
            record = pod.admit(scope["method"], scope["path"])
        except IllegalTransition as exc:
            state = pod.state.value
            body = json.dumps(
                {"error": str(exc), "pod": pod.name, "node": pod.node, "state": state}
            ).encode()
            await _drain(receive)
            await send(
                {"type": "http.response.start", "status": 503, "headers": _headers(body, [(b"retry-after", b"1")])}
            )
            await send({"type": "http.response.body", "body": body})
            return
        if self.app is not None:
            await self.app.serve(pod, record, scope, receive, send)
            return
        try:
            bytes_in = await _drain(receive)
        except BaseException:
            pod.machine.request_finished()
            raise
        elapsed = await pod.serve(record, bytes_in)
        body = json.dumps(
            {"pod": pod.name, "node": pod.node, "service_ms": round(elapsed * 1e3, 3),
             "target_ms": round(record["target_ms"], 3), "bytes_in": bytes_in}
        ).encode()
        await send({"type": "http.response.start", "status": 200, "headers": _headers(body)})
        await send({"type": "http.response.body", "body": body})


async def _drain(receive) -> int:
    """Read the whole request body; return how many bytes it had."""
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return total
        total += len(message.get("body", b""))
        if not message.get("more_body", False):
            return total


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return
