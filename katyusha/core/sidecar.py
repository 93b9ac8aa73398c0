"""The sidecar (nonna) core, sans-IO: the L2 queue and the load report piggybacked on responses.

:class:`Sidecar` decides everything nonna decides about a request: whether it
runs at once, waits or is refused (the L2 queue is an
:class:`~katyusha.core.queue.L1Queue` with limit = container concurrency,
max length = queue depth and deadline = the request timeout), when it times
out, and what the response reports (``Nonna-Queue-Length``,
``Nonna-In-Flight``, the ``Server-Timing`` durations, the expected latency and
the per-period averages of ``/stats``). :class:`Piggyback` writes a report as
the headers of docs/protocol.md.

A request's life, every call taking ``now`` (seconds, any monotonic origin)::

    ticket = sidecar.offer(now)            # QueueFull: answer 503 at once
    # not ticket.admitted: wait until finish/cancel of another returns it, or
    # until next_deadline(); then expire(now) lists the tickets that ran out (504)
    budget = sidecar.start(ticket, now)    # seconds left for the app's response head
    report = sidecar.head(ticket, now)     # the response head leaves: its report
    woken = sidecar.finish(ticket, now)    # tickets admitted in its place

No timers and no I/O: the driver keeps one timer at :meth:`Sidecar.next_deadline`.
The same object runs in nonna on a real clock and in a simulator on simulated time.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Any

from katyusha.core import protocol
from katyusha.core.delay import expected_delay_ms
from katyusha.core.errors import ConfigError, DeadlineExceeded, QueueFull
from katyusha.core.queue import ADMITTED, L1Queue, Ticket

__all__ = ["LoadAverager", "PeriodStat", "Piggyback", "Report", "Sidecar", "Ticket"]

# L1Queue wants a whole number; with no container-concurrency limit nothing ever waits.
_UNBOUNDED = sys.maxsize


class Report:
    """What one response reports: the load it leaves behind and this request's two durations.

    ``in_flight`` never counts the request answered (the load the next request
    finds); ``queue_s`` is its wait for a slot, ``app_s`` the time from
    forwarding it to the application's response head (0 when never forwarded).
    """

    __slots__ = ("queue_length", "in_flight", "queue_s", "app_s")

    def __init__(self, queue_length: int, in_flight: int, queue_s: float, app_s: float):
        self.queue_length = queue_length
        self.in_flight = in_flight
        self.queue_s = queue_s
        self.app_s = app_s

    def __repr__(self) -> str:
        return (f"Report(queue_length={self.queue_length}, in_flight={self.in_flight}, "
                f"queue_s={self.queue_s:.6f}, app_s={self.app_s:.6f})")


class Sidecar:
    """One pod's L2 queue and load report; see the module docstring for a request's life."""

    # Slots, not a __dict__: one per pod, read on every request (a fleet of thousands of
    # pods is far larger than the CPU's caches; an attribute in the object itself is one
    # memory access less than one in its dict's values).
    __slots__ = ("concurrency", "queue_depth", "timeout_s", "queue", "draining", "averager", "latency_alpha",
                 "app_ewma_ms")

    def __init__(self, *, concurrency: int, queue_depth: int | None, timeout_s: float,
                 now: float, latency_alpha: float = 0.2):
        """``concurrency`` 0 is unlimited, ``queue_depth`` None unbounded.

        Raises ConfigError naming the setting (concurrency, queue-depth, timeout).
        """
        if not _whole(concurrency) or concurrency < 0:
            raise ConfigError("concurrency", f"must be a whole number >= 0, got {concurrency!r}")
        if queue_depth is not None and (not _whole(queue_depth) or queue_depth < 0):
            raise ConfigError("queue-depth", f"must be a whole number >= 0, got {queue_depth!r}")
        if not isinstance(timeout_s, int | float) or not timeout_s > 0:
            raise ConfigError("timeout", f"must be a positive number of seconds, got {timeout_s!r}")
        self.concurrency = concurrency
        self.queue_depth = queue_depth
        self.timeout_s = float(timeout_s)
        self.queue = L1Queue(
            limit=concurrency or None,
            max_length=_UNBOUNDED if queue_depth is None else queue_depth,
            default_timeout_s=self.timeout_s,
        )
        self.draining = False
        self.averager = LoadAverager(now)
        self.latency_alpha = latency_alpha
        self.app_ewma_ms: float | None = None

    # -- counts ----------------------------------------------------------------

    @property
    def queue_length(self) -> int:
        """Requests waiting for a slot."""
        return self.queue.waiting

    @property
    def in_flight(self) -> int:
        """Requests holding a slot (forwarded to the application and not finished)."""
        return self.queue.active

    def _moved(self, now: float) -> None:
        queue = self.queue
        self.averager.update(now, queue.waiting, queue.active)

    # -- a request's life ----------------------------------------------------------

    def offer(self, now: float, payload: Any = None) -> Ticket:
        """Admit a request at once (``ticket.admitted``) or queue it behind the others.

        A newcomer never overtakes a waiting request. Raises QueueFull (503)
        when ``queue_depth`` requests already wait.
        """
        self.averager.arrivals += 1
        try:
            ticket = self.queue.offer(payload, now)
        except QueueFull:
            queue = self.queue
            raise QueueFull(
                f"queue full: {queue.waiting} requests waiting (queue depth {self.queue_depth}), "
                f"{queue.active} in flight (concurrency {self.concurrency})"
            ) from None
        queue = self.queue
        self.averager.update(now, queue.waiting, queue.active)  # _moved, inline (per request)
        return ticket

    def start(self, ticket: Ticket, now: float) -> float:
        """Seconds an admitted request has left for the application's response head.

        Raises DeadlineExceeded (504) when its deadline has passed already; it
        still holds its slot, which :meth:`finish` gives back.
        """
        left = ticket.deadline - now
        if left <= 0:
            raise DeadlineExceeded(f"request spent its {self.timeout_s:g}s timeout in the queue")
        return left

    def head(self, ticket: Ticket, now: float) -> Report:
        """The application's response head for ``ticket`` leaves now: learn its app time, report."""
        report = self.report(ticket, now)
        app_ms = report.app_s * 1000.0
        if self.app_ewma_ms is None:
            self.app_ewma_ms = app_ms
        else:
            self.app_ewma_ms += self.latency_alpha * (app_ms - self.app_ewma_ms)
        return report

    def finish(self, ticket: Ticket, now: float) -> list[Ticket]:
        """The request is over (response relayed, or failed): free its slot.

        Returns the waiting tickets admitted in its place, oldest first. A
        ticket that holds no slot changes nothing and returns [].
        """
        queue = self.queue
        admitted = queue.release(ticket, now)
        self.averager.update(now, queue.waiting, queue.active)  # _moved, inline (per request)
        return admitted

    def cancel(self, ticket: Ticket, now: float) -> list[Ticket]:
        """The client left: drop the ticket, waiting or admitted; returns tickets admitted in its place.

        Nobody else loses a place or a slot. Cancelling twice, or after
        finish or expiry, changes nothing.
        """
        admitted = self.queue.cancel(ticket, now)
        self._moved(now)
        return admitted

    def next_deadline(self) -> float | None:
        """When the oldest waiting request times out, or None when nothing waits."""
        return self.queue.next_deadline()

    def expire(self, now: float) -> list[Ticket]:
        """Remove and return the waiting tickets whose deadline is at or before ``now`` (answer 504)."""
        expired = self.queue.expire(now)
        if expired:
            self._moved(now)
        return expired

    def expired_error(self) -> DeadlineExceeded:
        """The error an expired ticket is answered with."""
        return DeadlineExceeded(
            f"request waited {self.timeout_s:.3f}s in the queue without a free slot "
            f"(concurrency {self.concurrency})"
        )

    # -- the report ------------------------------------------------------------------

    def report(self, ticket: Ticket | None, now: float) -> Report:
        """The load and durations a response for ``ticket`` reports at ``now``.

        ``ticket`` None is a request refused at once (queue full): it waited 0.
        A ticket still holding its slot is left out of ``in_flight``.
        """
        queue = self.queue
        in_flight = queue.active
        if ticket is None:
            return Report(queue.waiting, in_flight, 0.0, 0.0)
        if ticket.state is ADMITTED:  # ticket.admitted, without the property's call (per request)
            in_flight -= 1
        admitted_at = ticket.admitted_at
        if admitted_at is None:
            return Report(queue.waiting, in_flight, now - ticket.enqueued_at, 0.0)
        return Report(queue.waiting, in_flight, admitted_at - ticket.enqueued_at, now - admitted_at)

    def latency_ms(self) -> float | None:
        """Expected ms from arrival to response head for a request arriving now; None before any sample.

        The "waves" formula over the requests inside (waiting plus executing);
        with unlimited concurrency nothing waits, so one app time.
        """
        app_ms = self.app_ewma_ms
        if app_ms is None:
            return None
        if self.concurrency == 0:
            return app_ms
        return expected_delay_ms(app_ms, self.queue.waiting + self.queue.active, self.concurrency)

    def drain(self) -> None:
        """Shutting down: health reports unavailable; queued and in-flight requests still finish."""
        self.draining = True

    def close_period(self, now: float) -> PeriodStat:
        """Close the current reporting period at ``now`` and start the next (see LoadAverager)."""
        return self.averager.report(now)

    def stats(self) -> dict:
        """The load part of nonna's ``/stats``: counts now, latency estimate, last period."""
        last = self.averager.last
        return {
            "concurrency": self.concurrency,
            "queue_depth": self.queue_depth,
            "queue_length": self.queue.waiting,
            "in_flight": self.queue.active,
            # What prequal probes: the smoothed app time and the latency a
            # request arriving now would see behind the current queue.
            "app_ewma_ms": _rounded(self.app_ewma_ms),
            "latency_ms": _rounded(self.latency_ms()),
            "draining": self.draining,
            "last_period": last.to_json() if last is not None else None,
        }


class Piggyback:
    """Writes a :class:`Report` as the response headers of docs/protocol.md."""

    def __init__(self, concurrency: int, pod: str, node: str):
        self._static = [
            (_CONCURRENCY, str(concurrency).encode()),
            (_POD, pod.encode()),
            (_NODE, node.encode()),
        ]

    @staticmethod
    def timing(report: Report) -> bytes:
        """This request's ``Server-Timing`` metrics, milliseconds with three decimals."""
        return b"%b;dur=%.3f, %b;dur=%.3f" % (
            _TIMING_QUEUE, report.queue_s * 1000.0, _TIMING_APP, report.app_s * 1000.0)

    def load(self, report: Report) -> list[tuple[bytes, bytes]]:
        """The ``Nonna-*`` headers of ``report``."""
        return [
            (_QUEUE_LENGTH, str(report.queue_length).encode()),
            (_IN_FLIGHT, str(report.in_flight).encode()),
            *self._static,
        ]

    def response(self, report: Report, upstream: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The application's headers with the piggyback added.

        Any ``Nonna-*`` header the application sent is dropped first: a
        balancer believes a report only from nonna. The application's own
        ``Server-Timing`` values come first, ours after them, all in one header.
        """
        out = []
        timings = []
        for item in upstream:
            name = item[0]
            if name == _SERVER_TIMING:
                timings.append(item[1])
            elif not name.startswith(_NONNA_PREFIX):
                out.append(item)
        timings.append(self.timing(report))
        out.append((_SERVER_TIMING, b", ".join(timings)))
        out.extend(self.load(report))
        return out

    def error(self, report: Report) -> list[tuple[bytes, bytes]]:
        """The piggyback for one of nonna's own error responses."""
        return [(_SERVER_TIMING, self.timing(report)), *self.load(report)]


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
    """Time-weighted average concurrency and arrivals per reporting period, in O(1) per event.

    In the spirit of Knative queue-proxy's ``Stat``: a period closes with the
    average number of requests inside (waiting plus executing) and executing
    only, each count weighted by how long it lasted, and the arrivals.
    """

    __slots__ = ("_start", "_last", "_inside", "_in_flight", "_inside_area", "_in_flight_area", "arrivals", "last")

    def __init__(self, now: float):
        self._start = now
        self._last = now
        self._inside = 0
        self._in_flight = 0
        self._inside_area = 0.0
        self._in_flight_area = 0.0
        self.arrivals = 0
        self.last: PeriodStat | None = None

    def _advance(self, now: float) -> None:
        elapsed = now - self._last
        if elapsed > 0:
            self._inside_area += self._inside * elapsed
            self._in_flight_area += self._in_flight * elapsed
            self._last = now

    def update(self, now: float, waiting: int, in_flight: int) -> None:
        """Record that from ``now`` on, ``waiting`` requests wait and ``in_flight`` execute."""
        # _advance inline: this runs twice per request.
        elapsed = now - self._last
        if elapsed > 0:
            self._inside_area += self._inside * elapsed
            self._in_flight_area += self._in_flight * elapsed
            self._last = now
        self._inside = waiting + in_flight
        self._in_flight = in_flight

    def report(self, now: float) -> PeriodStat:
        """Close the current period at ``now``, keep it as :attr:`last`, and start the next."""
        self._advance(now)
        span = now - self._start
        if span <= 0:
            stat = PeriodStat(0.0, float(self._inside), float(self._in_flight), self.arrivals, 0.0)
        else:
            stat = PeriodStat(
                period_seconds=span,
                average_concurrency=self._inside_area / span,
                average_in_flight=self._in_flight_area / span,
                request_count=self.arrivals,
                requests_per_second=self.arrivals / span,
            )
        self._start = now
        self._inside_area = 0.0
        self._in_flight_area = 0.0
        self.arrivals = 0
        self.last = stat
        return stat


_QUEUE_LENGTH = protocol.QUEUE_LENGTH.encode()
_IN_FLIGHT = protocol.IN_FLIGHT.encode()
_CONCURRENCY = protocol.CONCURRENCY.encode()
_POD = protocol.POD.encode()
_NODE = protocol.NODE.encode()
_SERVER_TIMING = protocol.SERVER_TIMING.encode()
_TIMING_QUEUE = protocol.TIMING_NONNA_QUEUE.encode()
_TIMING_APP = protocol.TIMING_APP.encode()
_NONNA_PREFIX = protocol.NONNA_PREFIX.encode()


def _whole(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
