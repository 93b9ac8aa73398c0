"""Per-second samples of a service's counters and what the dashboard draws from them.

Pure: no clock, no I/O. Once a second a caller (katyusha.dashboard.feed)
hands in, with the time ``now``, the cumulative response counters the proxy
already keeps (by status and pod) and the latencies observed since the last
call as a sketch per pod (:func:`sketch_index` buckets, 2% apart).
:class:`ServiceSamples` keeps a ring of those per-second points; the
quantiles (p50, p99, per service and per pod) are read from the points'
sketches, so they are quantiles of the real per-request latencies, not means
of means. Points of several processes (``katyusha serve --workers N``) merge
by adding their counts and sketches second by second (:func:`merge_points`).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

DEFAULT_WINDOW_S = 300

# Latency sketch: bucket i holds latencies in (MIN_S * GAMMA**(i-1), MIN_S * GAMMA**i];
# a quantile read from it is within 2% of the true one (DDSketch's log buckets).
SKETCH_GAMMA = 1.04
SKETCH_MIN_S = 1e-5
_LOG_GAMMA = math.log(SKETCH_GAMMA)

Sketch = dict[int, int]


def sketch_index(seconds: float) -> int:
    """The sketch bucket of a latency (0 for anything at or under 10 µs)."""
    if seconds <= SKETCH_MIN_S:
        return 0
    return math.ceil(math.log(seconds / SKETCH_MIN_S) / _LOG_GAMMA)


def bucket_value(index: int) -> float:
    """The latency (seconds) a bucket stands for: the geometric middle of its bounds."""
    return SKETCH_MIN_S * SKETCH_GAMMA ** (index - 0.5) if index > 0 else SKETCH_MIN_S


def add_sketch(into: Sketch, other: Mapping[int, int]) -> Sketch:
    for index, count in other.items():
        into[index] = into.get(index, 0) + count
    return into


def sketch_quantile(q: float, sketch: Mapping[int, int]) -> float | None:
    """The ``q`` quantile (seconds) of the latencies in ``sketch``; None when it is empty.

    The nearest-rank quantile: the bucket holding the ``ceil(q * n)``-th latency.
    """
    total = sum(sketch.values())
    if total <= 0:
        return None
    rank = max(1, math.ceil(q * total))
    running = 0
    for index in sorted(sketch):
        running += sketch[index]
        if running >= rank:
            return bucket_value(index)
    return bucket_value(max(sketch))  # pragma: no cover - running reaches total


def bucket_quantile(q: float, bounds: Sequence[float], counts: Sequence[int]) -> float | None:
    """The ``q`` quantile of a fixed-bucket histogram (``counts`` per bucket, the last one above every bound).

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


@dataclass
class Point:
    """What one service did in one second (``dt`` seconds ending at ``at``)."""

    at: float
    dt: float
    responses: dict[tuple[int, str], int]  # responses sent in the second, by (status, pod)
    latency: dict[str, Sketch]  # latency to the response head, per pod

    @property
    def rps(self) -> float:
        return sum(self.responses.values()) / self.dt

    @property
    def errors(self) -> float:
        """Responses of status 5xx (and 499) per second."""
        return sum(n for (status, _), n in self.responses.items() if status >= 500 or status == 499) / self.dt

    @property
    def pod_rps(self) -> dict[str, float]:
        pods: dict[str, float] = {}
        for (_, pod), count in self.responses.items():
            if pod:
                pods[pod] = pods.get(pod, 0.0) + count / self.dt
        return pods

    def sketch(self, pod: str | None = None) -> Sketch:
        """The second's latencies of ``pod`` (of every pod when None)."""
        if pod is not None:
            return self.latency.get(pod, {})
        out: Sketch = {}
        for sketch in self.latency.values():
            add_sketch(out, sketch)
        return out

    def quantile_ms(self, q: float, pod: str | None = None) -> float | None:
        value = sketch_quantile(q, self.sketch(pod))
        return None if value is None else value * 1000.0

    @property
    def p50_ms(self) -> float | None:
        return self.quantile_ms(0.5)

    @property
    def p99_ms(self) -> float | None:
        return self.quantile_ms(0.99)

    def to_json(self) -> dict:
        return {"at": self.at, "dt": self.dt,
                "responses": [[status, pod, n] for (status, pod), n in self.responses.items()],
                "latency": {pod: [[i, n] for i, n in sketch.items()] for pod, sketch in self.latency.items()}}

    @classmethod
    def from_json(cls, doc: Mapping) -> Point:
        return cls(float(doc["at"]), float(doc["dt"]),
                   {(int(status), str(pod)): int(n) for status, pod, n in doc["responses"]},
                   {str(pod): {int(i): int(n) for i, n in pairs} for pod, pairs in doc["latency"].items()})


def merge_points(rings: Iterable[Iterable[Point]]) -> list[Point]:
    """Several processes' points as one ring: the points of the same second (``round(at)``) added up.

    Each process samples just after a whole second, so one second's points
    share ``round(at)``; the merged ``dt`` is the longest of them.
    """
    merged: dict[int, Point] = {}
    for ring in rings:
        for point in ring:
            key = round(point.at)
            into = merged.get(key)
            if into is None:
                merged[key] = Point(point.at, point.dt, dict(point.responses),
                                    {pod: dict(sketch) for pod, sketch in point.latency.items()})
                continue
            into.dt = max(into.dt, point.dt)
            for status_pod, n in point.responses.items():
                into.responses[status_pod] = into.responses.get(status_pod, 0) + n
            for pod, sketch in point.latency.items():
                add_sketch(into.latency.setdefault(pod, {}), sketch)
    return [merged[key] for key in sorted(merged)]


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class ServiceSamples:
    """A ring of per-second points of one service, ``window_s`` long."""

    def __init__(self, window_s: int = DEFAULT_WINDOW_S, points: Iterable[Point] = ()):
        self.points: deque[Point] = deque(points, maxlen=window_s)
        self.last_at: float | None = None
        self.last_responses: dict[tuple[int, str], int] | None = None

    def add(self, now: float, responses: Mapping[tuple[int, str], int],
            latency: Mapping[str, Mapping[int, int]]) -> Point | None:
        """Record the cumulative ``responses`` as they are at ``now`` and the ``latency`` sketches since
        the previous call; the point for that second (None at the first call, which only sets the start)."""
        previous, previous_at = self.last_responses, self.last_at
        if previous_at is not None and now <= previous_at:
            return None
        self.last_responses, self.last_at = dict(responses), now
        if previous is None or previous_at is None:
            return None
        delta = {}
        for key, count in responses.items():
            n = count - previous.get(key, 0)
            if n > 0:
                delta[key] = n
        point = Point(now, now - previous_at, delta,
                      {pod: dict(sketch) for pod, sketch in latency.items() if sketch})
        self.points.append(point)
        return point

    def since(self, at: float | None) -> list[Point]:
        """The points after ``at`` (all when None), oldest first."""
        return [p for p in self.points if at is None or p.at > at]

    def extend(self, points: Iterable[Point]) -> None:
        """Append points newer than the last one kept (a copy of another process's ring)."""
        for point in points:
            if not self.points or point.at > self.points[-1].at:
                self.points.append(point)

    def window(self, seconds: int) -> list[Point]:
        return list(self.points)[-seconds:] if seconds > 0 else []

    def series(self, seconds: int | None = None, pods: Iterable[str] = ()) -> dict[str, list | dict]:
        """The last ``seconds`` points (all kept by default) as parallel lists, oldest first; ``pods``:
        the pods whose own rps, p50 and p99 lists go under ``pods`` (any pod seen in the window by default)."""
        points = list(self.points) if seconds is None else self.window(seconds)
        names = list(dict.fromkeys([*pods, *sorted({pod for p in points for pod in p.latency})]))
        return {
            "t": [round(p.at, 3) for p in points],
            "dt": [round(p.dt, 3) for p in points],
            "rps": [round(p.rps, 2) for p in points],
            "errors": [round(p.errors, 2) for p in points],
            "p50_ms": [_ms(p.p50_ms) for p in points],
            "p99_ms": [_ms(p.p99_ms) for p in points],
            "pods": {pod: {"rps": [round(p.pod_rps.get(pod, 0.0), 2) for p in points],
                           "p50_ms": [_ms(p.quantile_ms(0.5, pod)) for p in points],
                           "p99_ms": [_ms(p.quantile_ms(0.99, pod)) for p in points]} for pod in names},
        }

    def pod_rps(self, pod: str, seconds: int = 3) -> float:
        """Requests per second ``pod`` answered, the mean of the last ``seconds`` points (0 when none)."""
        points = self.window(seconds)
        return sum(p.pod_rps.get(pod, 0.0) for p in points) / len(points) if points else 0.0

    def rps(self, seconds: int = 3) -> float | None:
        points = self.window(seconds)
        return sum(p.rps for p in points) / len(points) if points else None

    def quantile_ms(self, q: float, seconds: int = 5, pod: str | None = None) -> float | None:
        """The ``q`` quantile (ms) of every latency of the last ``seconds`` points (of ``pod`` only when given)."""
        sketch: Sketch = {}
        for point in self.window(seconds):
            add_sketch(sketch, point.sketch(pod))
        value = sketch_quantile(q, sketch)
        return None if value is None else value * 1000.0
