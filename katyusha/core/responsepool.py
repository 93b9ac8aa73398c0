"""The response pool (outoushuugou): recent response timings per pod, per node and for the fleet.

Each response adds one sample of four timings: L1 wait (in katyusha's queue),
L2 wait (in nonna's queue, from ``Server-Timing``), app time and end-to-end
latency. Samples (one tuple each) go into rings of at most ``capacity``, one
per pod, one per node and one for the whole fleet, so recording is one list
store per ring and memory is bounded by ``capacity`` samples per key and
``max_keys`` keys. A response's sample is put aside as given, and the samples
put aside are written to their rings a batch at a time (one extend of each
ring a batch touches), by a summary or every ``_BATCH`` responses; timings
that are no timing (None, negative, NaN) are left out when a summary reads
them: recording costs the response path one append. Only samples younger than ``window_s`` count in a summary; quantiles are computed there, not on record.

A summary keeps only the samples it counted: it is asked at a ``now`` no
earlier than the last (the driver's clock does not go back), so the older
ones would never count again. While someone reads the pool, its memory
follows one window of responses rather than ``capacity`` samples a key (at
10,000 pods no ring fills in minutes). The response path does not trim:
dropping a sample costs about what keeping it does (docs/simulator.md,
"Scale").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import groupby
from operator import itemgetter

from katyusha.core.errors import ConfigError

METRICS = ("l1_wait_ms", "l2_wait_ms", "app_ms", "latency_ms")
FLEET = "*"
_INF = math.inf
# Samples put aside before they are written to the rings (fewer when the rings are smaller):
# a summary, or this many more responses, writes them.
_BATCH = 256
# A sample's time, pod and node.
_TIME = itemgetter(0)
_POD = itemgetter(6)
_NODE = itemgetter(7)


class _Ring:
    """The last ``capacity`` samples of one key, oldest dropped first (``last``: the newest time).

    Each sample is the tuple :meth:`ResponsePool.record` made, timings as given;
    the summary leaves out the ones that are no timing (:func:`_clean`). A key
    heard from a few times holds a few samples, not ``capacity`` empty slots.
    """

    __slots__ = ("samples", "capacity", "last")

    def __init__(self, capacity: int):
        self.samples: list[tuple] = []
        self.capacity = capacity
        self.last = -math.inf

    @property
    def size(self) -> int:
        return len(self.samples)

    def add(self, samples: Sequence[tuple]) -> None:
        """Add ``samples`` (in the order recorded), dropping the oldest beyond ``capacity``."""
        kept = self.samples
        kept += samples
        excess = len(kept) - self.capacity
        if excess > 0:
            del kept[:excess]
        newest = max(map(_TIME, samples))
        if newest > self.last:
            self.last = newest

    def summary(self, since: float) -> dict:
        """Statistics of the samples from ``since`` on; the older ones are dropped (see the module)."""
        self.samples = live = [sample for sample in self.samples if sample[0] >= since]
        errors = sum(1 for sample in live if sample[5] >= 500)
        result: dict = {"count": len(live), "errors": errors}
        for index, metric in enumerate(METRICS, start=1):
            values = [_clean(sample[index]) for sample in live]
            result[metric] = describe([value for value in values if value is not None])
        return result


def quantile(ordered: list[float], q: float) -> float:
    """The ``q`` quantile of sorted, non-empty ``ordered``, by linear interpolation between ranks."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def describe(values: list[float]) -> dict:
    """``{"count", "mean", "p50", "p99"}`` of ``values``; the statistics are None when it is empty."""
    if not values:
        return {"count": 0, "mean": None, "p50": None, "p99": None}
    values.sort()
    return {
        "count": len(values),
        "mean": sum(values) / len(values),
        "p50": quantile(values, 0.50),
        "p99": quantile(values, 0.99),
    }


def _clean(value: float | None) -> float | None:
    # A missing, negative or NaN timing is no timing: it must not skew the means.
    if value is None or not value >= 0 or value == math.inf:
        return None
    return value if type(value) is float else float(value)


class ResponsePool:
    """Rolling windows of response timings; see the module docstring."""

    __slots__ = ("window_s", "capacity", "max_keys", "recorded_total", "_pending", "_batch", "_pods", "_nodes",
                 "_fleet")

    def __init__(self, *, window_s: float = 60.0, capacity: int = 1024, max_keys: int = 4096):
        """Raises ConfigError for a non-positive ``window_s``, ``capacity`` or ``max_keys``."""
        if not isinstance(window_s, int | float) or not window_s > 0 or window_s == math.inf:
            raise ConfigError("window_s", f"must be a positive number of seconds, got {window_s!r}")
        for key, value in (("capacity", capacity), ("max_keys", max_keys)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(key, f"must be an integer >= 1, got {value!r}")
        self.window_s = float(window_s)
        self.capacity = capacity
        self.max_keys = max_keys
        self.recorded_total = 0
        # Samples recorded and not yet in the rings: at most _batch of them.
        self._pending: list[tuple] = []
        self._batch = min(capacity, _BATCH)
        self._pods: dict[str, _Ring] = {}
        self._nodes: dict[str, _Ring] = {}
        self._fleet = _Ring(capacity)

    def record(
        self,
        pod: str,
        node: str,
        now: float,
        l1_wait_ms: float | None,
        l2_wait_ms: float | None,
        app_ms: float | None,
        latency_ms: float | None,
        status: int,
    ) -> None:
        """Add one response's timings (None for a timing not known). An empty ``node`` is kept per pod only."""
        # Put aside as given; _flush writes a batch to the rings (and the summary leaves out
        # what is no timing): the response path pays one append.
        self.recorded_total += 1
        pending = self._pending
        pending.append((now, l1_wait_ms, l2_wait_ms, app_ms, latency_ms, status, pod, node))
        if len(pending) >= self._batch:
            self._flush()

    def _flush(self) -> None:
        """Write the samples put aside to their rings: each ring gets them in the order recorded,
        and new keys come in the order first heard, as one sample at a time would have it."""
        pending, self._pending = self._pending, []
        self._fleet.add(pending)
        for rings, key_of in ((self._pods, _POD), (self._nodes, _NODE)):
            keys = dict.fromkeys(map(key_of, pending))
            samples = pending
            if key_of is _NODE and not all(keys):  # a sample without a node is kept per pod only
                keys = {key: None for key in keys if key}
                samples = [sample for sample in pending if sample[7]]
            new = [key for key in keys if key not in rings]
            if len(rings) + len(new) > self.max_keys:
                # A key makes room for another: which one goes depends on when each was heard
                # from, so one sample at a time.
                for sample in samples:
                    self._ring(rings, key_of(sample)).add([sample])
                continue
            for key in new:
                rings[key] = _Ring(self.capacity)
            if len(keys) == 1:
                for key in keys:
                    rings[key].add(samples)
            elif 4 * len(keys) > len(samples):
                # Most samples have a ring of their own in this batch (a large fleet): each added
                # on its own rather than the batch sorted into groups.
                for sample in samples:
                    rings[key_of(sample)].add((sample,))
            elif keys:
                for key, group in groupby(sorted(samples, key=key_of), key_of):
                    rings[key].add(list(group))

    def _ring(self, rings: dict[str, _Ring], key: str) -> _Ring:
        ring = rings.get(key)
        if ring is None:
            if len(rings) >= self.max_keys:
                # Pods come and go; the one heard from least recently makes room.
                del rings[min(rings, key=lambda k: rings[k].last)]
            ring = rings[key] = _Ring(self.capacity)
        return ring

    def summary(self, now: float) -> dict:
        """JSON-able statistics of the samples younger than ``window_s``, per pod, per node and fleet-wide.

        ``{"window_s", "fleet", "pods": {name: stats}, "nodes": {name: stats}}``,
        where stats is ``{"count", "errors" (status >= 500), and per timing
        {"count", "mean", "p50", "p99"}}``. Keys with no sample in the window
        are dropped from the pool, and so are the samples older than the
        window: ``now`` must not go back from one summary to the next.
        """
        if self._pending:
            self._flush()
        since = now - self.window_s
        result = {"window_s": self.window_s, "fleet": self._fleet.summary(since)}
        for label, rings in (("pods", self._pods), ("nodes", self._nodes)):
            out = {}
            for key in list(rings):
                stats = rings[key].summary(since)
                if not stats["count"]:
                    del rings[key]
                else:
                    out[key] = stats
            result[label] = out
        return result
