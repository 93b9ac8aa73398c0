"""nonna's admin port: /healthz, /stats (JSON) and /metrics (Prometheus).

All reads; with ``--admin-token`` set, any mutating request is answered 401
without the bearer token (katyusha.admintoken), as on every admin port.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from katyusha.admintoken import AdminGuard
from nonna.proxy import Nonna

_PROM_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def build_admin(nonna: Nonna) -> AdminGuard:
    """The admin ASGI app over the state of ``nonna``, behind its admin token (if any)."""

    async def healthz(request: Request) -> Response:
        if nonna.sidecar.draining:
            return PlainTextResponse("draining: nonna is shutting down\n", status_code=503)
        healthy, why = await nonna.health.probe()
        return PlainTextResponse(why + "\n", status_code=200 if healthy else 503)

    async def stats(request: Request) -> Response:
        config = nonna.config
        return JSONResponse({
            "pod": config.pod,
            "node": config.node,
            "upstream": config.upstream,
            **nonna.sidecar.stats(),
            "stats_period_seconds": config.stats_period,
        })

    async def metrics(request: Request) -> Response:
        return Response(nonna.metrics.render(), media_type=_PROM_TYPE)

    return AdminGuard(Starlette(routes=[
        Route("/healthz", healthz),
        Route("/stats", stats),
        Route("/metrics", metrics),
    ]), nonna.config.admin_token)
