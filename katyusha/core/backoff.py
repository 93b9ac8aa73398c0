"""How long to wait before the next try after a failure: exponential, capped, with jitter.

Used by the Kubernetes watch when the API server is unreachable or a
request fails. Jitter (a factor drawn in [0.5, 1.0)) keeps many replicas
that lost the API server at the same moment from coming back in step. The
random source is injected, so tests get the same delays every run.
"""

from __future__ import annotations

import random

from katyusha.core.errors import ConfigError


class Backoff:
    """Delays ``base * 2**n`` capped at ``cap``, times a jitter in [0.5, 1); :meth:`reset` after a success."""

    def __init__(self, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None):
        if not 0 < base <= cap:
            raise ConfigError("backoff", f"needs 0 < base <= cap, got base={base} cap={cap}")
        self.base = base
        self.cap = cap
        self.rng = rng if rng is not None else random.Random()
        self.failures = 0

    def next(self) -> float:
        """The delay before the next try (seconds); each call counts one more failure."""
        delay = min(self.cap, self.base * 2.0 ** min(self.failures, 62))
        self.failures += 1
        return delay * (0.5 + 0.5 * self.rng.random())

    def reset(self) -> None:
        self.failures = 0
