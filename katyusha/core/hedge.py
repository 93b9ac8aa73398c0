"""Hedged requests, sans-IO: which requests may be hedged, when, and whether a hedge is affordable now.

As in "The Tail at Scale" (Dean and Barroso) and gRPC's hedging policy: when
the first try of a request has not answered after a delay, a second try goes
to another pod; the first response head wins and the other try is cancelled.
A hedge costs load, so it is bounded three ways:

- only requests that are safe to send twice and cheap to copy are hedged:
  idempotent methods with no body or a body of a known length of at most
  ``HEDGE_BODY_LIMIT`` bytes, which the driver reads whole before the first
  try so both tries send it (:func:`is_hedgeable`);
- a token bucket lets hedges add at most ``budget`` times the requests
  (each request earns ``budget`` tokens, a hedge spends one; the bucket holds
  at most ``max(1, burst * budget)``, so over any stretch hedges number at
  most ``budget`` x requests + that burst) (:class:`HedgeBudget`);
- no hedge while the service is near its capacity: requests wait in the L1
  queue, or the admitted ones fill ``max_utilisation`` of the L1 limit in
  force (the pods' total capacity when it is known), its extra slots left
  out. The balancer also requires another ready pod with a free slot of its
  concurrency (an extra slot would leave the hedge waiting in nonna).

The delay is either set (``delay``) or ``auto``: the service's recent p95 of
dispatch-to-head latency, from :class:`LatencySketch` (the last ``window``
latencies; none until ``min_samples`` were seen, so a new service hedges
nothing until it knows its own tail).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from katyusha.core.errors import ConfigError

# Methods a second copy of cannot change the outcome of (RFC 9110, 9.2.2).
HEDGEABLE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Bodies up to this many bytes are kept in memory so both tries can send them.
HEDGE_BODY_LIMIT = 64 * 1024


def is_hedgeable(method: str, body: bool | int | None) -> bool:
    """True for a request that may be sent twice: an idempotent method, and no body or a small one.

    ``body``: the body's length in bytes (0 or False: no body); True or None: a
    body of unknown length (chunked), never hedged.
    """
    if method not in HEDGEABLE_METHODS:
        return False
    if body is False or body == 0:
        return True
    if body is True or body is None:
        return False
    return body <= HEDGE_BODY_LIMIT


@dataclass(frozen=True)
class HedgeSettings:
    """``enabled``: hedging on; ``delay`` seconds, None for ``auto`` (the recent p95);
    ``budget``: hedges as a share of requests. Raises ConfigError naming the key."""

    enabled: bool = False
    delay: float | None = None
    budget: float = 0.05
    quantile: float = 0.95
    window: int = 512
    min_samples: int = 64
    burst: float = 100.0
    max_utilisation: float = 0.9

    def __post_init__(self) -> None:
        if self.delay is not None and (not _number(self.delay) or self.delay < 0):
            raise ConfigError("hedge-delay", f"must be auto or a time >= 0, got {self.delay!r}")
        if not _number(self.budget) or not 0 <= self.budget <= 1:
            raise ConfigError("hedge-budget", f"must be a share from 0 to 1 (0.05 is 5%), got {self.budget!r}")
        if not 0 < self.quantile < 1:
            raise ConfigError("quantile", f"must be between 0 and 1, got {self.quantile!r}")
        if self.window < 1 or not 1 <= self.min_samples <= self.window:
            raise ConfigError("window", "needs window >= min_samples >= 1")


class LatencySketch:
    """The last ``window`` latencies in a ring; a quantile of them, recomputed every ``window // 8`` samples.

    Cheap on the request path: one store per sample and, now and then, one
    sort of at most ``window`` floats.
    """

    __slots__ = ("quantile", "window", "min_samples", "_ring", "_next", "count", "_value", "_since")

    def __init__(self, quantile: float = 0.95, window: int = 512, min_samples: int = 64):
        self.quantile = quantile
        self.window = window
        self.min_samples = min_samples
        self._ring: list[float] = []
        self._next = 0
        self.count = 0
        self._value: float | None = None
        self._since = 0

    def add(self, latency: float) -> None:
        ring = self._ring
        if len(ring) < self.window:
            ring.append(latency)
        else:
            ring[self._next] = latency
            self._next = (self._next + 1) % self.window
        self.count += 1
        self._since += 1
        if self._value is None:
            if len(ring) >= self.min_samples:
                self._recompute()
        elif self._since >= max(1, self.window // 8):
            self._recompute()

    def _recompute(self) -> None:
        ordered = sorted(self._ring)
        index = min(len(ordered) - 1, max(0, math.ceil(self.quantile * len(ordered)) - 1))
        self._value = ordered[index]
        self._since = 0

    @property
    def value(self) -> float | None:
        """The quantile of the recent latencies; None before ``min_samples`` were seen."""
        return self._value


class HedgeBudget:
    """A token bucket: each request earns ``ratio`` tokens, a hedge spends one (see the module docstring)."""

    __slots__ = ("ratio", "cap", "tokens", "refused")

    def __init__(self, ratio: float, burst: float = 100.0):
        self.ratio = ratio
        self.cap = max(1.0, burst * ratio) if ratio > 0 else 0.0
        self.tokens = 0.0
        self.refused = 0

    def on_request(self) -> None:
        tokens = self.tokens + self.ratio
        self.tokens = tokens if tokens < self.cap else self.cap

    def take(self) -> bool:
        """True (and a token is spent) when a hedge fits the budget."""
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.refused += 1
        return False


class Hedger:
    """One service's hedging: settings, its latency sketch, its budget and counts."""

    __slots__ = ("settings", "enabled", "sketch", "budget", "sent", "won", "skipped_busy", "skipped_no_pod")

    def __init__(self, settings: HedgeSettings):
        self.settings = settings
        self.enabled = settings.enabled
        self.sketch = LatencySketch(settings.quantile, settings.window, settings.min_samples)
        self.budget = HedgeBudget(settings.budget, settings.burst)
        self.sent = 0
        self.won = 0
        self.skipped_busy = 0
        self.skipped_no_pod = 0

    def delay(self, method: str, body: bool | int | None) -> float | None:
        """Seconds after which a request of this kind would be hedged; None: never (see the module docstring).

        ``body`` as :func:`is_hedgeable` takes it."""
        if not self.enabled or not is_hedgeable(method, body):
            return None
        set_delay = self.settings.delay
        return set_delay if set_delay is not None else self.sketch.value

    def on_request(self) -> None:
        if self.enabled:
            self.budget.on_request()

    def observe(self, latency: float) -> None:
        if self.enabled:
            self.sketch.add(latency)

    def may_afford(self, waiting: int, active: int, limit: int | None) -> bool:
        """Whether a hedge would be affordable now (:meth:`affordable`), counting and spending nothing.

        A request dispatched while this is False is not armed for a hedge, so
        a service at capacity or out of budget pays nothing for hedging
        (the proxy then serves it on its fast path, with no timer task).
        """
        return not self._busy(waiting, active, limit) and self.budget.tokens >= 1.0

    def affordable(self, waiting: int, active: int, limit: int | None) -> bool:
        """Whether the service may send a hedge now: not near capacity, and the budget has a token."""
        if self._busy(waiting, active, limit):
            self.skipped_busy += 1
            return False
        return self.budget.take()

    def _busy(self, waiting: int, active: int, limit: int | None) -> bool:
        """Near capacity: requests wait in L1, or the active ones reach ``max_utilisation`` of the limit."""
        return waiting > 0 or (limit is not None and active >= self.settings.max_utilisation * limit)

    def state(self) -> dict:
        s = self.settings
        return {"enabled": self.enabled, "delay": "auto" if s.delay is None else s.delay,
                "delay_now": s.delay if s.delay is not None else self.sketch.value,
                "budget": s.budget, "sent_total": self.sent, "won_total": self.won,
                "budget_refused_total": self.budget.refused, "busy_skipped_total": self.skipped_busy,
                "no_pod_skipped_total": self.skipped_no_pod}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
