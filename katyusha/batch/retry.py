"""What an answer means for its record, and how long to wait before trying again.

As Benthos's ``http`` processor: statuses in ``retry-on`` (default 429, 502,
503, 504) and connection errors are tried again with exponential backoff up to
``max-retries``; any other status that is not 2xx, and a 2xx whose body cannot
be used, sends the record to the dead letter at once. 429, 503 and 504 (when
in ``retry-on``) and connection errors also tell the window the service is
overloaded, so a service that is down is not hammered by every record at once.
"""

from __future__ import annotations

import enum
import random

from katyusha.batch.config import RetryConfig

OVERLOAD = frozenset({429, 503, 504})


class Verdict(enum.Enum):
    OK = "ok"
    RETRY = "retry"  # try again later, the window stays
    OVERLOADED = "overloaded"  # try again later and cut the window
    DEAD = "dead"  # to the dead letter now


def classify(status: int | None, retry_on: frozenset[int]) -> Verdict:
    """The verdict for one answer; ``status`` None is a connection error or a timeout."""
    if status is None:
        return Verdict.OVERLOADED
    if 200 <= status < 300:
        return Verdict.OK
    if status in retry_on:
        return Verdict.OVERLOADED if status in OVERLOAD else Verdict.RETRY
    return Verdict.DEAD


def backoff(config: RetryConfig, retry: int, rng: random.Random, retry_after: float | None = None) -> float:
    """Seconds to wait before retry number ``retry`` (1, 2, ...).

    ``backoff`` doubled each time up to ``max-backoff``, times a random factor
    in [0.5, 1] so records that failed together do not come back together;
    at least the server's Retry-After (up to ``max-backoff``) when it sent one.
    """
    base = min(config.max_backoff, config.backoff * 2.0 ** (retry - 1))
    delay = base * rng.uniform(0.5, 1.0)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, config.max_backoff))
    return delay
