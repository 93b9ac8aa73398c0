"""The Kubernetes control plane's admin port: probes, status and Prometheus metrics.

Routes::

    GET /healthz   "ok" while its Lease and discovery tasks run; 503 naming the one that stopped
                   (the Deployment's liveness and readiness probe: every copy is ready, leader or not)
    GET /status    JSON: identity, leader, Lease and watch counters, targets, the autoscaler's view
    GET /metrics   Prometheus text: the autoscaler's series (katyusha.control.metrics) while leading,
                   plus katyusha_control_leader, the Lease rounds and each watch's counters
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from katyusha.control.metrics import AutoscalerCollector
from katyusha.kubernetes.controlplane import KubernetesControlPlane

METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ControlCollector(Collector):
    """Leadership, Lease rounds and watch counters, read from the plane when scraped."""

    def __init__(self, plane: KubernetesControlPlane):
        self.plane = plane

    def collect(self):
        plane = self.plane
        leader = GaugeMetricFamily("katyusha_control_leader", "1 while this copy holds the Lease.",
                                   labels=["identity"])  # fmt: skip
        leader.add_metric([plane.elector.identity], 1.0 if plane.elector.is_leader() else 0.0)
        yield leader
        lease = CounterMetricFamily("katyusha_control_lease", "Lease rounds by outcome.", labels=["outcome"])
        for outcome, count in plane.elector.counts.items():
            lease.add_metric([outcome], count)
        yield lease
        watch = CounterMetricFamily("katyusha_control_watch", "EndpointSlice lists, watches, events, 410s and "
                                    "failures, per Service.", labels=["service", "kind"])  # fmt: skip
        for watcher in plane.discovery.watchers:
            for kind, count in watcher.counts.items():
                watch.add_metric([watcher.service.key, kind], count)
        yield watch
        refused = CounterMetricFamily("katyusha_control_scale_refused", "Scalings not done: no longer leading.")
        refused.add_metric([], plane.actuator.refused)
        yield refused


def build_app(plane: KubernetesControlPlane) -> Starlette:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AutoscalerCollector(
        lambda: plane.loop.status() if plane.loop is not None else {"services": {}}, plane.cold
    ))  # fmt: skip
    registry.register(ControlCollector(plane))

    async def healthz(request: Request) -> Response:
        ok, why = plane.healthy()
        return PlainTextResponse(why, status_code=200 if ok else 503)

    async def status(request: Request) -> Response:
        return JSONResponse(plane.status())

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=METRICS_TYPE)

    return Starlette(routes=[
        Route("/healthz", healthz), Route("/status", status), Route("/metrics", metrics),
    ])  # fmt: skip
