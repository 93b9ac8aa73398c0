"""nonna's Prometheus metrics, on a registry of its own (never the process-global one).

The hot path pays one counter increment and two histogram observations per
request; the queue length and in-flight gauges cost nothing per request: a
collector reads them from the sidecar core when /metrics is scraped.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from katyusha.core.sidecar import Sidecar

# Queue waits cluster near zero with a long tail; app times span ms to the timeout.
WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
APP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class _QueueCollector(Collector):
    def __init__(self, sidecar: Sidecar):
        self._sidecar = sidecar

    def collect(self):
        sidecar = self._sidecar
        yield GaugeMetricFamily("nonna_queue_length", "Requests waiting in the L2 queue.",
                                value=sidecar.queue_length)
        yield GaugeMetricFamily("nonna_in_flight", "Requests executing in the application.",
                                value=sidecar.in_flight)
        yield GaugeMetricFamily("nonna_concurrency_limit",
                                "Container concurrency (0: unlimited).", value=sidecar.concurrency)
        depth = sidecar.queue_depth if sidecar.queue_depth is not None else -1
        yield GaugeMetricFamily("nonna_queue_depth", "Most requests that may wait (-1: unbounded).",
                                value=depth)


class Metrics:
    """The metrics of one nonna process."""

    def __init__(self, sidecar: Sidecar):
        self.registry = CollectorRegistry(auto_describe=True)
        self._requests = Counter(
            "nonna_requests", "Responses sent, by HTTP status code.", ["code"],
            registry=self.registry,
        )
        self._queue_wait = Histogram(
            "nonna_queue_wait_seconds", "Time requests waited in the L2 queue.",
            buckets=WAIT_BUCKETS, registry=self.registry,
        )
        self._app_time = Histogram(
            "nonna_app_seconds", "Time from forwarding a request to its response head.",
            buckets=APP_BUCKETS, registry=self.registry,
        )
        self.registry.register(_QueueCollector(sidecar))
        self._by_code: dict[int, object] = {}

    def observe(self, status: int, queue_seconds: float, app_seconds: float | None) -> None:
        """Record one response; ``app_seconds`` is None when the application was never asked."""
        child = self._by_code.get(status)
        if child is None:
            child = self._by_code[status] = self._requests.labels(code=str(status))
        child.inc()
        self._queue_wait.observe(queue_seconds)
        if app_seconds is not None:
            self._app_time.observe(app_seconds)

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)
