"""Prometheus metrics of the live proxy, cheap on the request path.

The request path only bumps plain ints and dict entries (:class:`ProxyStats`,
one per service); the Prometheus view is built at scrape time by a custom
collector on the proxy's own CollectorRegistry, which also reads each
service's L1 queue and load table as they are then. Every family carries a
``service`` label. No lock is needed: one event loop owns all of it.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from functools import partial

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from katyusha.dashboard.samples import sketch_index

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


def _observe_all(histogram: Histogram, values: tuple[float, ...]) -> None:
    """``histogram.observe`` of each of ``values``, in order, the buckets counted in C."""
    counts = histogram.counts
    histogram.count += len(values)
    zeros = values.count(0.0)
    if zeros:
        # Most L1 waits on the fast path (admitted at once): a zero's bucket is the first, and
        # adding it leaves the sum as it is (the sum starts at +0.0, so it is never -0.0).
        counts[bisect_left(histogram.bounds, 0.0)] += zeros
        if zeros == len(values):
            return
        values = tuple(filter(None, values))
    for bucket, n in Counter(map(partial(bisect_left, histogram.bounds), values)).items():
        counts[bucket] += n
    total = histogram.total
    for value in values:  # one at a time, as observe adds them: the same float sum
        total += value
    histogram.total = total


# Fast answers put aside before they are counted (ProxyStats.answered).
_ANSWERS_BATCH = 256


class ProxyStats:
    """Counters the request path updates; read by the collector and by admin JSON views.

    The fast path's answers (:meth:`answered`) are put aside and counted a batch
    at a time, before anything reads or writes the counts they go into: every
    view is the same as if each had been counted at once.
    """

    def __init__(self) -> None:
        self._responses: dict[tuple[int, str], int] = {}
        self.upstream_failures: dict[tuple[str, str], int] = {}
        self.retries = 0
        self._l1_wait = Histogram()
        self._upstream_latency = Histogram()
        # Latencies per pod since the dashboard's last sample (katyusha.dashboard.samples sketches).
        self._recent_latency: dict[str, dict[int, int]] = {}
        self.demand_posts = 0
        # Answers not counted yet: (pod, status, seconds, l1 wait), at most _ANSWERS_BATCH.
        self._answers: list[tuple[str, int, float, float]] = []

    @property
    def responses(self) -> dict[tuple[int, str], int]:
        """Responses sent, by (status, pod)."""
        if self._answers:
            self._count_answers()
        return self._responses

    @property
    def l1_wait(self) -> Histogram:
        if self._answers:
            self._count_answers()
        return self._l1_wait

    @property
    def upstream_latency(self) -> Histogram:
        if self._answers:
            self._count_answers()
        return self._upstream_latency

    @property
    def recent_latency(self) -> dict[str, dict[int, int]]:
        if self._answers:
            self._count_answers()
        return self._recent_latency

    def upstream(self, pod: str, seconds: float) -> None:
        """A pod's response head arrived ``seconds`` after dispatch."""
        if self._answers:
            self._count_answers()
        histogram = self._upstream_latency  # Histogram.observe, inline: once per response
        histogram.counts[bisect_left(histogram.bounds, seconds)] += 1
        histogram.total += seconds
        histogram.count += 1
        sketch = self._recent_latency.get(pod)
        if sketch is None:
            sketch = self._recent_latency[pod] = {}
        index = sketch_index(seconds)
        sketch[index] = sketch.get(index, 0) + 1

    def answered(self, pod: str, status: int, seconds: float, l1_wait: float) -> None:
        """A pod's whole response went to the client: ``l1_wait.observe(l1_wait)``,
        :meth:`upstream` and :meth:`response`, counted with the next batch (the fast
        path's, once per request)."""
        answers = self._answers
        answers.append((pod, status, seconds, l1_wait))
        if len(answers) >= _ANSWERS_BATCH:
            self._count_answers()

    def _count_answers(self) -> None:
        """Count the answers put aside, in order (each count's float sums as one at a time)."""
        answers, self._answers = self._answers, []
        pods, statuses, latencies, waits = zip(*answers, strict=True)
        _observe_all(self._l1_wait, waits)
        _observe_all(self._upstream_latency, latencies)
        recent = self._recent_latency
        size = len(answers)
        # Most batches are one pod's (and one status'): counted without a tuple an answer.
        # (A pod's name is the same str object in every answer of its, found by identity.)
        one_pod = pods.count(pods[0]) == size
        if one_pod:
            pod = pods[0]
            sketch = recent.get(pod)
            if sketch is None:
                sketch = recent[pod] = {}
            for index, n in Counter(map(sketch_index, latencies)).items():
                sketch[index] = sketch.get(index, 0) + n
        else:
            for (pod, index), n in Counter(zip(pods, map(sketch_index, latencies),
                                               strict=True)).items():
                sketch = recent.get(pod)
                if sketch is None:
                    sketch = recent[pod] = {}
                sketch[index] = sketch.get(index, 0) + n
        responses = self._responses
        if one_pod and statuses.count(statuses[0]) == size:
            key = (statuses[0], pods[0])
            responses[key] = responses.get(key, 0) + size
        else:
            for key, n in Counter(zip(statuses, pods, strict=True)).items():
                responses[key] = responses.get(key, 0) + n

    def take_recent_latency(self) -> dict[str, dict[int, int]]:
        """The per-pod latency sketches since the last call, which starts new ones."""
        taken, self._recent_latency = self.recent_latency, {}
        return taken

    def response(self, status: int, pod: str) -> None:
        key = (status, pod)
        responses = self.responses
        responses[key] = responses.get(key, 0) + 1

    def failure(self, pod: str, reason: str) -> None:
        key = (pod, reason)
        self.upstream_failures[key] = self.upstream_failures.get(key, 0) + 1


# A service's view for one scrape: its name, its stats, and its state() (None
# for requests that matched no service).
ServiceView = tuple[str, ProxyStats, dict | None]


class _Collector:
    def __init__(self, views: Callable[[], Iterable[ServiceView]]):
        self.views = views

    def collect(self) -> Iterator:
        views = list(self.views())
        requests = CounterMetricFamily(
            "katyusha_requests", "Responses sent to clients, by service, status and pod ('' when none).",
            labels=["service", "status", "pod"],
        )
        failures = CounterMetricFamily(
            "katyusha_upstream_failures", "Tries that got no response from a pod, by reason.",
            labels=["service", "pod", "reason"],
        )
        retries = CounterMetricFamily(
            "katyusha_retries", "Requests tried again on another pod.", labels=["service"])
        posts = CounterMetricFamily(
            "katyusha_demand_posts", "Demand notifications POSTed to demand-url.", labels=["service"])
        l1_wait = HistogramMetricFamily(
            "katyusha_l1_wait_seconds", "Time requests waited in the L1 queue.", labels=["service"])
        upstream = HistogramMetricFamily(
            "katyusha_upstream_latency_seconds", "Time from dispatch to a pod's response head.",
            labels=["service"])
        for service, stats, _ in views:
            for (status, pod), count in sorted(stats.responses.items()):
                requests.add_metric([service, str(status), pod], count)
            for (pod, reason), count in sorted(stats.upstream_failures.items()):
                failures.add_metric([service, pod, reason], count)
            retries.add_metric([service], stats.retries)
            posts.add_metric([service], stats.demand_posts)
            l1_wait.add_metric([service], stats.l1_wait.cumulative(), stats.l1_wait.total)
            upstream.add_metric([service], stats.upstream_latency.cumulative(),
                                stats.upstream_latency.total)
        yield from (requests, failures, retries, posts, l1_wait, upstream)
        yield from _state_metrics([(name, state) for name, _, state in views if state is not None])


def _state_metrics(states: list[tuple[str, dict]]) -> Iterator:
    """Gauges and counters read from each service's state() at scrape time."""
    waiting = GaugeMetricFamily(
        "katyusha_l1_queue_length", "Requests waiting in the L1 queue.", labels=["service"])
    active = GaugeMetricFamily(
        "katyusha_l1_active", "Requests admitted by the L1 queue and not yet finished.",
        labels=["service"])
    counters = [
        (CounterMetricFamily(name, doc, labels=["service"]), key)
        for name, key, doc in (
            ("katyusha_l1_rejected", "rejected_total", "Requests refused because the L1 queue was full."),
            ("katyusha_l1_expired", "expired_total", "Requests whose L1 deadline passed."),
            ("katyusha_l1_cancelled", "cancelled_total", "Requests whose client left while queued."),
        )
    ]
    ready = GaugeMetricFamily("katyusha_ready_pods", "Pods katyusha may pick.", labels=["service"])
    load = GaugeMetricFamily(
        "katyusha_pod_estimated_load", "Estimated requests each pod holds.", labels=["service", "pod"])
    in_flight = GaugeMetricFamily(
        "katyusha_pod_in_flight", "katyusha's own requests in flight to each pod, bodies included.",
        labels=["service", "pod"])
    # Pod health (katyusha.core.health): counts kept per pod by the core.
    healthy = GaugeMetricFamily(
        "katyusha_pod_ready", "1 while the pod is in the ready set (healthy, not ejected).",
        labels=["service", "pod"])
    health_counts = [
        (CounterMetricFamily(name, doc, labels=["service", "pod"]), key)
        for name, key, doc in (
            ("katyusha_pod_ejections", "ejections",
             "Times the pod was ejected for consecutive failures (outlier detection)."),
            ("katyusha_pod_downs", "downs",
             "Times the pod left the ready set as unreachable or failing its health checks."),
            ("katyusha_pod_returns", "returns", "Times the pod came back to the ready set after probes."),
        )
    ]
    budget = CounterMetricFamily(
        "katyusha_retry_budget_exhausted", "Retries not made because the retry budget was spent.",
        labels=["service"])
    hedges_sent = CounterMetricFamily(
        "katyusha_hedges_sent", "Hedged requests: second tries sent to another pod after the hedge delay.",
        labels=["service"])
    hedges_won = CounterMetricFamily(
        "katyusha_hedges_won", "Hedges whose response head came first (the first try was cancelled).",
        labels=["service"])
    for service, state in states:
        hedge = state.get("hedge")
        if hedge is not None:
            hedges_sent.add_metric([service], hedge["sent_total"])
            hedges_won.add_metric([service], hedge["won_total"])
        budget.add_metric([service], state.get("retry_budget", {}).get("exhausted_total", 0))
        queue = state["queue"]
        waiting.add_metric([service], queue["waiting"])
        active.add_metric([service], queue["active"])
        for family, key in counters:
            family.add_metric([service], queue[key])
        ready.add_metric([service], state["ready_pods"])
        for row in state["pods"]:
            load.add_metric([service, row["name"]], row["estimated_load"])
            in_flight.add_metric([service, row["name"]], row["in_flight"])
            healthy.add_metric([service, row["name"]], 1 if row["ready"] else 0)
            for family, key in health_counts:
                family.add_metric([service, row["name"]], row.get(key, 0))
    yield from (waiting, active, *(family for family, _ in counters), ready, load, in_flight, healthy,
                *(family for family, _ in health_counts), budget, hedges_sent, hedges_won)


def make_registry(views: Callable[[], Iterable[ServiceView]]) -> CollectorRegistry:
    """A registry of its own (not the global one) whose collector reads every service's view.

    ``views()`` yields ``(service name, ProxyStats, state() or None)``; a
    state is ``{"queue": {...counters}, "ready_pods": n, "pods": [rows]}``.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(views))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(registry)
