"""The asyncio side of one service: futures for waiting tickets, one deadline timer, drain events.

:class:`LiveService` decides nothing. It hands every call to the service's
:class:`~katyusha.core.service.ServiceBalancer` and turns the answers into
asyncio: a waiting ticket gets a future (its ``payload``), resolved when a
call returns the ticket as admitted, or failed with the error ``expire``
gives; one timer follows ``next_deadline()``; a removed pod's drain is an
event the core's ``on_idle`` sets. ``on_demand`` is called whenever a
request waits because no pod is ready. After anything that may change a pod's
health, :meth:`LiveService.health_changed` wakes the tickets a returning pod
let in, logs the core's health events and re-arms the health timer
(``on_health``, set by katyusha.proxy.background.HealthChecker).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from katyusha.core.loadtable import PodEntry
from katyusha.core.membership import ChangeResult, PodChange
from katyusha.core.queue import ADMITTED
from katyusha.core.service import Dispatch, ServiceBalancer, ServiceSettings, ServiceTicket
from katyusha.proxy.metrics import ProxyStats

log = logging.getLogger("katyusha")


class LiveService:
    """One service in the live proxy: its core balancer, its stats and the asyncio plumbing."""

    def __init__(self, settings: ServiceSettings, *, rng: random.Random,
                 hosts: tuple[str, ...] = (), path_prefix: str = "/"):
        self.name = settings.name
        self.hosts = hosts
        self.path_prefix = path_prefix
        self.core = ServiceBalancer(settings, rng=rng, on_idle=self._on_idle)
        self.stats = ProxyStats()
        self.on_demand: Callable[[], None] | None = None
        self.on_health: Callable[[], None] | None = None
        self._health_seen = -1
        # Set on shutdown: a change that leaves no pod answers the waiting at once.
        self.stopping = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._idle: dict[PodEntry, asyncio.Event] = {}

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    # -- a request's life ----------------------------------------------------

    def offer(self, now: float, priority: int, idempotent: bool) -> ServiceTicket:
        """``core.offer``; a ticket that must wait gets its future. Raises QueueFull, BadInput."""
        ticket = self.core.offer(now, priority=priority, idempotent=idempotent)
        if ticket.state is not ADMITTED:
            self.waits(ticket)
        return ticket

    def dispatch(self, ticket: ServiceTicket, now: float) -> Dispatch | None:
        """``core.dispatch``; when no pod is ready the ticket waits again on a new future."""
        handle = self.core.dispatch(ticket, now)
        if handle is None:
            self.waits(ticket)
        return handle

    def end(self, ticket: ServiceTicket) -> None:
        """``core.end``: the request is over; the tickets let in after it are woken."""
        loop = self._loop or self.loop
        admitted = self.core.end(ticket, loop.time())
        if admitted:
            wake(admitted)

    def waits(self, ticket: ServiceTicket) -> None:
        """The ticket waits (for admission, or for a pod): it gets a future, resolved or failed
        by the call that lets it in or expires it. (The fast path calls ``core.offer_dispatch``
        and ``core.complete`` itself, then this or :func:`wake`: a frame less a request each.)"""
        ticket.payload = self.loop.create_future()
        if self._timer_at is None or ticket.deadline < self._timer_at:
            self._arm_timer()
        if self.core.needs_pods and self.on_demand is not None:
            self.on_demand()

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.core.next_deadline()
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        _fail(self.core.expire(self.now()))
        self._arm_timer()

    def fail_waiting(self, message: str) -> int:
        """Answer every waiting request with 503 ``message`` (shutting down); returns how many."""
        failed = self.core.fail_waiting(message)
        _fail(failed)
        if self._loop is not None:
            self._arm_timer()
        return len(failed)

    # -- health --------------------------------------------------------------

    def health_changed(self, rearm: bool = False) -> None:
        """A try failed or a pod answered 5xx (or a probe answered): wake, log, and re-arm the
        health timer when a pod's state changed (or ``rearm``)."""
        core = self.core
        admitted = core.take_admitted()
        if admitted:
            wake(admitted)
        if core.health.events:
            for event in core.take_health_events():
                log_health_event(self.name, event, self.now())
        version = core.health.version
        if self.on_health is not None and (rearm or version != self._health_seen):
            self._health_seen = version
            self.on_health()

    def probe_result(self, entry: PodEntry, ok: bool, why: str) -> None:
        """A probe of ``entry`` answered: the core decides; a returning pod's tickets are woken."""
        wake(self.core.probe_result(entry, self.now(), ok, why))
        self.health_changed(rearm=True)

    # -- membership ----------------------------------------------------------

    def apply(self, change: PodChange) -> ChangeResult:
        """``core.change_pods``; the tickets it admits are woken."""
        result = self.core.change_pods(change, _loop_time())
        wake(result.admitted)
        if self.on_health is not None:
            self.on_health()  # new pods may have checks to schedule
        if self.stopping and not self.core.table.ready():
            self.fail_waiting("katyusha is shutting down and no pod is ready")
        return result

    async def drained(self, entry: PodEntry, timeout: float) -> bool:
        """Wait until every request to the removed ``entry`` has ended; False on timeout."""
        if entry.in_flight == 0:
            return True
        event = self._idle.setdefault(entry, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):
                await event.wait()
        except TimeoutError:
            return False
        finally:
            if self._idle.get(entry) is event and entry.in_flight == 0:
                del self._idle[entry]
        return True

    def _on_idle(self, entry: PodEntry) -> None:
        event = self._idle.pop(entry, None)
        if event is not None:
            event.set()

    # -- views ---------------------------------------------------------------

    def demand(self) -> dict:
        return self.core.demand()

    def state(self) -> dict:
        return self.core.state(self.now())

    def summary(self) -> dict:
        """This service in ``GET /services``."""
        core = self.core
        return {
            "name": self.name,
            "hosts": list(self.hosts),
            "path_prefix": self.path_prefix,
            "policy": core.policy.name,
            "ready_pods": len(core.table.ready()),
            "pods": len(core.table),
            "draining_pods": [entry.name for entry in core.draining()],
            "queue": core.queue_counters(),
        }


def log_health_event(service: str, event, now: float) -> None:
    """One log line per change of a pod's health (the metrics count them too)."""
    if event.what == "ejected":
        log.warning("katyusha: service %s: pod %s ejected for %.1fs: %s", service, event.pod,
                    event.until - event.at, event.why)
    elif event.what == "down":
        log.warning("katyusha: service %s: pod %s left the ready set: %s; probing it", service,
                    event.pod, event.why)
    elif event.what == "back":
        log.warning("katyusha: service %s: pod %s is back in the ready set: %s", service, event.pod,
                    event.why)
    else:
        log.warning("katyusha: service %s: pod %s not ejected: %s", service, event.pod, event.why)


def _loop_time() -> float:
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        # Before the loop runs (the static pods at start): nothing waits yet.
        return 0.0


def wake(tickets) -> None:
    """Resolve the futures of the tickets a core call let in (the waiting requests go on)."""
    for ticket in tickets:
        future = ticket.payload
        if future is not None and not future.done():
            future.set_result(None)


def _fail(expired) -> None:
    for ticket, error in expired:
        future = ticket.payload
        if future is not None and not future.done():
            future.set_exception(error)

