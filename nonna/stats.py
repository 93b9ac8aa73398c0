"""Per-period load statistics, sans-IO: time-weighted average concurrency and request counts.

In the spirit of Knative queue-proxy's ``Stat``: every reporting period
closes with the average number of requests inside nonna (waiting plus
executing) and executing only, weighted by how long each count lasted, and
the number of requests that arrived. Time comes in as ``now`` (seconds, any
monotonic origin); updating costs O(1) per event.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class PeriodStat:
    """One closed reporting period."""

    period_seconds: float
    average_concurrency: float
    average_in_flight: float
    request_count: int
    requests_per_second: float

    def to_json(self) -> dict:
        return asdict(self)


class LoadAverager:
    """Integrates concurrency over time between :meth:`report` calls."""

    def __init__(self, now: float):
        self._start = now
        self._last = now
        self._inside = 0
        self._in_flight = 0
        self._inside_area = 0.0
        self._in_flight_area = 0.0
        self._arrivals = 0
        self.last: PeriodStat | None = None

    def _advance(self, now: float) -> None:
        elapsed = max(0.0, now - self._last)
        self._inside_area += self._inside * elapsed
        self._in_flight_area += self._in_flight * elapsed
        self._last = max(self._last, now)

    def arrived(self, now: float) -> None:
        """Count one request arriving in the current period."""
        self._arrivals += 1

    def update(self, now: float, waiting: int, in_flight: int) -> None:
        """Record that from ``now`` on, ``waiting`` requests wait and ``in_flight`` execute."""
        self._advance(now)
        self._inside = waiting + in_flight
        self._in_flight = in_flight

    def report(self, now: float) -> PeriodStat:
        """Close the current period at ``now``, keep it as :attr:`last`, and start the next."""
        self._advance(now)
        span = now - self._start
        if span <= 0:
            stat = PeriodStat(0.0, float(self._inside), float(self._in_flight),
                              self._arrivals, 0.0)
        else:
            stat = PeriodStat(
                period_seconds=span,
                average_concurrency=self._inside_area / span,
                average_in_flight=self._in_flight_area / span,
                request_count=self._arrivals,
                requests_per_second=self._arrivals / span,
            )
        self._start = now
        self._inside_area = 0.0
        self._in_flight_area = 0.0
        self._arrivals = 0
        self.last = stat
        return stat


class LatencyEstimate:
    """A smoothed app time and, from it, the latency a new request would see: what prequal probes.

    ``observe`` takes each request's app time (ms); :meth:`for_new_request`
    turns the current queue into an expected latency: with container
    concurrency ``c > 0`` and ``inside`` requests held (waiting plus
    executing), a new request waits for ``(inside + 1) / c`` app times, and
    never less than one.
    """

    def __init__(self, alpha: float = 0.2):
        self.alpha = alpha
        self.app_ms: float | None = None

    def observe(self, app_ms: float) -> None:
        if not app_ms >= 0:
            return
        if self.app_ms is None:
            self.app_ms = app_ms
        else:
            self.app_ms += self.alpha * (app_ms - self.app_ms)

    def for_new_request(self, inside: int, concurrency: int) -> float | None:
        """Expected ms from arrival to response head for a request arriving now; None before any sample."""
        if self.app_ms is None:
            return None
        if concurrency <= 0:
            return self.app_ms
        waves = (inside + 1) / concurrency
        return self.app_ms * (waves if waves > 1.0 else 1.0)
