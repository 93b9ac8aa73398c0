"""The retry budget of one service, sans-IO: retries may add only a share of the requests.

As Finagle's ``RetryBudget`` and Envoy's retry budget: over the last
``window_s`` seconds, retries may number at most ``ratio`` times the requests
plus ``min_per_s`` per second of the window. While every pod fails, each
request would otherwise be sent ``1 + retries`` times, multiplying the load on
a fleet that is already failing; the budget bounds that to ``1 + ratio``
(plus the small minimum that lets a quiet service retry at all).

Counts are kept in one-second buckets of a ring, moved on by ``now``.
"""

from __future__ import annotations

import math

from katyusha.core.errors import ConfigError


class RetryBudget:
    """Allows a retry while retries in the window stay within ``ratio`` x requests + ``min_per_s`` x window."""

    __slots__ = ("ratio", "min_per_s", "window_s", "_requests", "_retries", "_second", "_slot", "_from", "_until",
                 "requests_in_window", "retries_in_window", "exhausted")

    def __init__(self, ratio: float = 0.2, min_per_s: float = 10.0, window_s: int = 10):
        """Raises ConfigError naming ``retry-budget`` or ``retry-budget-min`` for a bad value."""
        if not _number(ratio) or ratio < 0:
            raise ConfigError("retry-budget", f"must be a number >= 0 (a share of requests), got {ratio!r}")
        if not _number(min_per_s) or min_per_s < 0:
            raise ConfigError("retry-budget-min", f"must be a number >= 0 (retries a second), got {min_per_s!r}")
        if not isinstance(window_s, int) or window_s < 1:
            raise ConfigError("window_s", f"must be a whole number of seconds >= 1, got {window_s!r}")
        self.ratio = float(ratio)
        self.min_per_s = float(min_per_s)
        self.window_s = window_s
        self._requests = [0] * window_s
        self._retries = [0] * window_s
        self._second = None
        # The current second's slot, and the times that fall in that second: [_from, _until).
        self._slot = 0
        self._from = math.inf
        self._until = -math.inf
        self.requests_in_window = 0
        self.retries_in_window = 0
        self.exhausted = 0

    def _advance(self, now: float) -> int:
        second = math.floor(now)
        last = self._second
        if last is None:
            self._second = second
        elif second > last:
            size = self.window_s
            for past in range(last + 1, min(second, last + size) + 1):
                slot = past % size
                self.requests_in_window -= self._requests[slot]
                self.retries_in_window -= self._retries[slot]
                self._requests[slot] = 0
                self._retries[slot] = 0
            self._second = second
        second = self._second
        self._from = second
        self._until = second + 1
        self._slot = slot = second % self.window_s
        return slot

    def on_request(self, now: float) -> None:
        """A request arrived (it may earn retries)."""
        # Within the second of the last call (most calls): its slot, without _advance.
        slot = self._slot if self._from <= now < self._until else self._advance(now)
        self._requests[slot] += 1
        self.requests_in_window += 1

    def allow(self, now: float) -> bool:
        """True (and the retry is counted) when one more retry fits the budget; else counts it refused."""
        slot = self._advance(now)
        limit = self.ratio * self.requests_in_window + self.min_per_s * self.window_s
        if self.retries_in_window + 1 > limit:
            self.exhausted += 1
            return False
        self._retries[slot] += 1
        self.retries_in_window += 1
        return True

    def state(self) -> dict:
        return {"ratio": self.ratio, "min_per_s": self.min_per_s, "window_s": self.window_s,
                "requests_in_window": self.requests_in_window, "retries_in_window": self.retries_in_window,
                "exhausted_total": self.exhausted}


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
