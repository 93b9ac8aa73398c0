"""Prometheus metrics of the live proxy, cheap on the request path.

The request path only bumps plain ints and dict entries (:class:`ProxyStats`);
the Prometheus view is built at scrape time by a custom collector on the
proxy's own CollectorRegistry, which also reads the L1 queue and the load
table as they are then. No lock is needed: one event loop owns all of it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

# Seconds; spans a 1 ms hop to a cold start.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)


class Histogram:
    """Fixed-bucket histogram: one bisect and two adds per observation."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out = []
        running = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            running += count
            out.append((repr(float(bound)), running))
        out.append(("+Inf", self.count))
        return out


class ProxyStats:
    """Counters the request path updates; read by the collector and by admin JSON views."""

    def __init__(self) -> None:
        self.responses: dict[tuple[int, str], int] = {}
        self.upstream_failures: dict[tuple[str, str], int] = {}
        self.retries = 0
        self.l1_wait = Histogram()
        self.upstream_latency = Histogram()
        self.demand_posts = 0

    def response(self, status: int, pod: str) -> None:
        key = (status, pod)
        self.responses[key] = self.responses.get(key, 0) + 1

    def failure(self, pod: str, reason: str) -> None:
        key = (pod, reason)
        self.upstream_failures[key] = self.upstream_failures.get(key, 0) + 1


class _Collector:
    def __init__(self, stats: ProxyStats, state: Callable[[], dict]):
        self.stats = stats
        self.state = state

    def collect(self) -> Iterator:
        stats = self.stats
        requests = CounterMetricFamily(
            "katyusha_requests", "Responses sent to clients, by status and pod ('' when none).",
            labels=["status", "pod"],
        )
        for (status, pod), count in sorted(stats.responses.items()):
            requests.add_metric([str(status), pod], count)
        yield requests
        failures = CounterMetricFamily(
            "katyusha_upstream_failures", "Tries that got no response from a pod, by reason.",
            labels=["pod", "reason"],
        )
        for (pod, reason), count in sorted(stats.upstream_failures.items()):
            failures.add_metric([pod, reason], count)
        yield failures
        yield CounterMetricFamily(
            "katyusha_retries", "Requests tried again on another pod.", value=stats.retries
        )
        yield CounterMetricFamily(
            "katyusha_demand_posts", "Demand notifications POSTed to demand-url.",
            value=stats.demand_posts,
        )
        yield _histogram(
            "katyusha_l1_wait_seconds", "Time requests waited in the L1 queue.", stats.l1_wait
        )
        yield _histogram(
            "katyusha_upstream_latency_seconds",
            "Time from dispatch to a pod's response head.", stats.upstream_latency,
        )
        state = self.state()
        queue = state["queue"]
        yield GaugeMetricFamily(
            "katyusha_l1_queue_length", "Requests waiting in the L1 queue.", value=queue["waiting"]
        )
        yield GaugeMetricFamily(
            "katyusha_l1_active", "Requests admitted by the L1 queue and not yet finished.",
            value=queue["active"],
        )
        for name, key, doc in (
            ("katyusha_l1_rejected", "rejected_total", "Requests refused because the L1 queue was full."),
            ("katyusha_l1_expired", "expired_total", "Requests whose L1 deadline passed."),
            ("katyusha_l1_cancelled", "cancelled_total", "Requests whose client left while queued."),
        ):
            yield CounterMetricFamily(name, doc, value=queue[key])
        yield GaugeMetricFamily(
            "katyusha_ready_pods", "Pods katyusha may pick.", value=state["ready_pods"]
        )
        load = GaugeMetricFamily(
            "katyusha_pod_estimated_load", "Estimated requests each pod holds.", labels=["pod"]
        )
        in_flight = GaugeMetricFamily(
            "katyusha_pod_in_flight", "katyusha's own requests in flight to each pod.", labels=["pod"]
        )
        for row in state["pods"]:
            load.add_metric([row["name"]], row["estimated_load"])
            in_flight.add_metric([row["name"]], row["in_flight"])
        yield load
        yield in_flight


def _histogram(name: str, doc: str, histogram: Histogram) -> HistogramMetricFamily:
    return HistogramMetricFamily(
        name, doc, buckets=histogram.cumulative(), sum_value=histogram.total
    )


def make_registry(stats: ProxyStats, state: Callable[[], dict]) -> CollectorRegistry:
    """A registry of its own (not the global one) whose collector reads ``stats`` and ``state()``.

    ``state()`` returns ``{"queue": {...counters}, "ready_pods": n, "pods": table snapshot}``.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(stats, state))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(registry)
