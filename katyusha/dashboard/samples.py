"""Per-second samples of a service's counters and what the dashboard draws from them.

Pure: no clock, no I/O. A caller (katyusha.dashboard.feed) hands in, once a
second, the cumulative counters the proxy already keeps (responses by status
and pod, the upstream latency histogram's bucket counts) with the time ``now``;
:class:`ServiceSamples` keeps a ring of those snapshots and turns successive
ones into requests per second, p50/p99 latency and errors per second.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DEFAULT_WINDOW_S = 300


def bucket_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The ``q`` quantile of a histogram (``counts`` per bucket, the last one above every bound).

    Linear within the bucket, as Prometheus's ``histogram_quantile``; the
    overflow bucket answers its lower bound. None for an empty histogram.
    """
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    running = 0
    for index, count in enumerate(counts):
        if count and running + count >= rank:
            if index >= len(bounds):
                return bounds[-1]
            lower = bounds[index - 1] if index else 0.0
            return lower + (bounds[index] - lower) * (rank - running) / count
        running += count
    return bounds[-1]


@dataclass(frozen=True)
class Snapshot:
    """Cumulative counters at one moment."""

    at: float
    responses: dict[tuple[int, str], int]
    latency: tuple[int, ...]


@dataclass(frozen=True)
class Point:
    """What happened between two snapshots, per second."""

    at: float
    rps: float
    errors: float  # responses of status 5xx (and 499) per second
    p50_ms: float | None
    p99_ms: float | None
    pod_rps: dict[str, float]


class ServiceSamples:
    """A ring of per-second points of one service, ``window_s`` long."""

    def __init__(self, bounds: Sequence[float], window_s: int = DEFAULT_WINDOW_S):
        self.bounds = tuple(bounds)
        self.points: deque[Point] = deque(maxlen=window_s)
        self.last: Snapshot | None = None

    def add(self, now: float, responses: Mapping[tuple[int, str], int], latency: Sequence[int]) -> Point | None:
        """Record the counters as they are at ``now``; the point since the previous call (None at first)."""
        snap = Snapshot(now, dict(responses), tuple(latency))
        previous, self.last = self.last, snap
        if previous is None or now <= previous.at:
            return None
        if len(previous.latency) != len(snap.latency):
            return None
        dt = now - previous.at
        total = errors = 0
        pods: dict[str, int] = {}
        for key, count in snap.responses.items():
            delta = count - previous.responses.get(key, 0)
            if delta <= 0:
                continue
            status, pod = key
            total += delta
            if status >= 500 or status == 499:
                errors += delta
            if pod:
                pods[pod] = pods.get(pod, 0) + delta
        buckets = [a - b for a, b in zip(snap.latency, previous.latency, strict=True)]
        p50 = bucket_quantile(0.5, self.bounds, buckets)
        p99 = bucket_quantile(0.99, self.bounds, buckets)
        point = Point(now, total / dt, errors / dt, None if p50 is None else p50 * 1000.0,
                      None if p99 is None else p99 * 1000.0, {pod: n / dt for pod, n in pods.items()})
        self.points.append(point)
        return point

    def series(self, seconds: int | None = None) -> dict[str, list]:
        """The last ``seconds`` points (all kept by default) as parallel lists, oldest first."""
        points = list(self.points)
        if seconds is not None:
            points = points[-seconds:]
        return {
            "t": [round(p.at, 3) for p in points],
            "rps": [round(p.rps, 2) for p in points],
            "errors": [round(p.errors, 2) for p in points],
            "p50_ms": [None if p.p50_ms is None else round(p.p50_ms, 3) for p in points],
            "p99_ms": [None if p.p99_ms is None else round(p.p99_ms, 3) for p in points],
        }

    def pod_rps(self, pod: str, seconds: int = 3) -> float:
        """Requests per second ``pod`` answered, the mean of the last ``seconds`` points (0 when none)."""
        points = list(self.points)[-seconds:]
        return sum(p.pod_rps.get(pod, 0.0) for p in points) / len(points) if points else 0.0

    def recent(self, field: str, seconds: int = 5) -> float | None:
        """The mean of ``field`` over the last ``seconds`` points that have it (None when none)."""
        values = [getattr(p, field) for p in list(self.points)[-seconds:]]
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None
