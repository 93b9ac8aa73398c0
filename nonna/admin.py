"""nonna's admin port: /healthz, /stats (JSON) and /metrics (Prometheus)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from nonna.proxy import Nonna

_PROM_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def build_admin(nonna: Nonna) -> Starlette:
    """The admin ASGI app over the state of ``nonna``."""

    async def healthz(request: Request) -> Response:
        if nonna.draining:
            return PlainTextResponse("draining: nonna is shutting down\n", status_code=503)
        healthy, why = await nonna.health.probe()
        return PlainTextResponse(why + "\n", status_code=200 if healthy else 503)

    async def stats(request: Request) -> Response:
        config = nonna.config
        last = nonna.averager.last
        return JSONResponse({
            "pod": config.pod,
            "node": config.node,
            "upstream": config.upstream,
            "concurrency": config.concurrency,
            "queue_depth": config.effective_queue_depth,
            "queue_length": nonna.breaker.waiting,
            "in_flight": nonna.breaker.in_flight,
            # What prequal probes: the smoothed app time and the latency a
            # request arriving now would see behind the current queue.
            "app_ewma_ms": _rounded(nonna.latency.app_ms),
            "latency_ms": _rounded(nonna.latency.for_new_request(
                nonna.breaker.waiting + nonna.breaker.in_flight, config.concurrency)),
            "draining": nonna.draining,
            "stats_period_seconds": config.stats_period,
            "last_period": last.to_json() if last is not None else None,
        })

    async def metrics(request: Request) -> Response:
        return Response(nonna.metrics.render(), media_type=_PROM_TYPE)

    return Starlette(routes=[
        Route("/healthz", healthz),
        Route("/stats", stats),
        Route("/metrics", metrics),
    ])
