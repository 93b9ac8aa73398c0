"""The asyncio adapter around the sans-IO core: L1 queue admission, pod picking, pod membership.

The core decides; this module only turns its answers into futures and
timers. One timer follows ``L1Queue.next_deadline()``; futures of waiting
requests are resolved from what ``release``/``unhold``/``expire`` return. The
queue is held whenever no pod is ready, so requests wait (scale from zero)
instead of failing, and ``on_demand`` tells the control plane at once.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence

from katyusha.core.errors import DeadlineExceeded, NoReadyPod
from katyusha.core.loadtable import LoadTable, PodEntry
from katyusha.core.policies import make_policy
from katyusha.core.queue import L1Queue, Ticket
from katyusha.core.responsepool import ResponsePool
from katyusha.proxy.config import PodSpec, ProxyConfig


class Balancer:
    """Admission, picking and the pod set of one katyusha process (one event loop)."""

    def __init__(self, config: ProxyConfig, *, on_demand: Callable[[], None] | None = None):
        self.config = config
        self.table = LoadTable(stale_after_s=config.stale_after)
        self.policy = make_policy(
            config.effective_policy, rng=random.Random(config.seed), table=self.table
        )
        self.queue = L1Queue(
            limit=config.l1_limit,
            max_length=config.queue_length,
            default_timeout_s=config.request_timeout,
        )
        self.pool = ResponsePool() if config.uses_feedback else None
        self.admin_urls: dict[str, str | None] = {}
        self.on_demand = on_demand
        self.draining = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._busy: dict[PodEntry, int] = {}
        self._idle: dict[PodEntry, asyncio.Event] = {}
        for pod in config.pods:
            self.upsert(pod)
        self._sync_hold()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    # -- admission -------------------------------------------------------

    def offer(self, now: float) -> Ticket:
        """Offer one request to the L1 queue. Raises QueueFull (503)."""
        ticket = self.queue.offer(None, now)
        if not ticket.admitted:
            ticket.payload = self.loop.create_future()
            if self._timer_at is None or ticket.deadline < self._timer_at:
                self._arm_timer()
            if self.queue.held and self.on_demand is not None:
                self.on_demand()
        return ticket

    async def wait(self, ticket: Ticket) -> None:
        """Wait until ``ticket`` is admitted. Raises NoReadyPod or DeadlineExceeded when its deadline passes.

        Cancelling the caller gives the ticket's place back.
        """
        future: asyncio.Future = ticket.payload
        try:
            await future
        except asyncio.CancelledError:
            self.cancel(ticket)
            raise

    def release(self, ticket: Ticket) -> None:
        """The request of an admitted ticket finished: let the next ones in."""
        admitted = self.queue.release(ticket, self.now())
        if admitted:
            _wake(admitted)

    def cancel(self, ticket: Ticket) -> None:
        """The client left: drop the ticket wherever it is."""
        admitted = self.queue.cancel(ticket, self.now())
        if admitted:
            _wake(admitted)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.queue.next_deadline()
        self._timer_at = deadline
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        expired = self.queue.expire(self.now())
        held = self.queue.held
        for ticket in expired:
            future: asyncio.Future = ticket.payload
            if not future.done():
                if held:
                    future.set_exception(
                        NoReadyPod(
                            f"no pod was ready within {self.config.request_timeout:g}s"
                        )
                    )
                else:
                    future.set_exception(
                        DeadlineExceeded(
                            f"waited {self.config.request_timeout:g}s in the L1 queue "
                            f"(limit {self.queue.limit}) without being admitted"
                        )
                    )
        self._arm_timer()

    def fail_waiting(self, error: Exception) -> int:
        """Answer every waiting request with ``error`` (shutdown with no pod left); returns how many."""
        tickets = self.queue.expire(float("inf"))
        for ticket in tickets:
            future: asyncio.Future = ticket.payload
            if not future.done():
                future.set_exception(error)
        self._arm_timer()
        return len(tickets)

    # -- picking ---------------------------------------------------------

    def pick(self, now: float, exclude: Sequence[PodEntry] = ()) -> PodEntry | None:
        """A ready pod chosen by the policy, avoiding ``exclude`` when another is ready; None when none is."""
        candidates = self.table.ready()
        if not candidates:
            return None
        if exclude:
            others = [entry for entry in candidates if entry not in exclude]
            if others:
                candidates = others
        return self.policy.pick(candidates, now)

    def dispatched(self, entry: PodEntry) -> None:
        """A request to ``entry`` started; counted until :meth:`undispatched`, body included."""
        self._busy[entry] = self._busy.get(entry, 0) + 1

    def undispatched(self, entry: PodEntry) -> None:
        """A request to ``entry`` ended (response fully relayed, or failed)."""
        left = self._busy.get(entry, 0) - 1
        if left > 0:
            self._busy[entry] = left
            return
        self._busy.pop(entry, None)
        event = self._idle.get(entry)
        if event is not None:
            event.set()

    def busy(self, entry: PodEntry) -> int:
        """katyusha's requests to ``entry`` not yet finished, response bodies included."""
        return self._busy.get(entry, 0)

    # -- membership ------------------------------------------------------

    def upsert(self, pod: PodSpec) -> PodEntry:
        """Add or update a pod; it is ready for picking at once."""
        entry = self.table.upsert(pod.name, pod.url, pod.node, ready=True)
        self.admin_urls[pod.name] = pod.admin
        self._sync_hold()
        return entry

    def replace(self, pods: Sequence[PodSpec]) -> list[str]:
        """Make the pod set exactly ``pods``; returns the names removed (their requests finish)."""
        keep = {pod.name for pod in pods}
        removed = [entry.name for entry in self.table.pods() if entry.name not in keep]
        for name in removed:
            self.table.remove(name)
            self.admin_urls.pop(name, None)
        for pod in pods:
            self.table.upsert(pod.name, pod.url, pod.node, ready=True)
            self.admin_urls[pod.name] = pod.admin
        self._sync_hold()
        return removed

    def remove(self, name: str) -> PodEntry | None:
        """Take a pod out of picking at once; returns its entry (for draining) or None if unknown."""
        entry = self.table.remove(name)
        self.admin_urls.pop(name, None)
        self._sync_hold()
        return entry

    async def drain(self, entry: PodEntry, timeout: float) -> bool:
        """Wait until katyusha's own requests to ``entry`` have finished; False on timeout."""
        if self.busy(entry) == 0:
            return True
        event = self._idle.setdefault(entry, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):
                while self.busy(entry) > 0:
                    event.clear()
                    await event.wait()
        except TimeoutError:
            return False
        finally:
            if self._idle.get(entry) is event and self.busy(entry) == 0:
                del self._idle[entry]
        return True

    def _sync_hold(self) -> None:
        if not self.table.ready():
            self.queue.hold()
        elif self.queue.held:
            if self._loop is None:
                self.queue.unhold(0.0)
            else:
                _wake(self.queue.unhold(self.now()))

    # -- views -----------------------------------------------------------

    def queue_counters(self) -> dict:
        q = self.queue
        return {
            "waiting": q.waiting,
            "active": q.active,
            "held": q.held,
            "limit": q.limit,
            "max_length": q.max_length,
            "admitted_total": q.admitted_total,
            "rejected_total": q.rejected_total,
            "expired_total": q.expired_total,
            "cancelled_total": q.cancelled_total,
        }

    def demand(self) -> dict:
        """What the autoscaler reads: requests waiting, in flight, and the ready pod count."""
        return {
            "waiting": self.queue.waiting,
            "in_flight": self.queue.active,
            "ready_pods": len(self.table.ready()),
        }

    def state(self) -> dict:
        """The load table, policy and queue as JSON (admin ``GET /pods``, metrics)."""
        now = self.now()
        pods = self.table.snapshot(now)
        for row in pods:
            row["admin"] = self.admin_urls.get(row["name"])
        return {
            "policy": self.policy.name,
            "queue": self.queue_counters(),
            "ready_pods": len(self.table.ready()),
            "pods": pods,
        }


def _wake(tickets: list[Ticket]) -> None:
    for ticket in tickets:
        future = ticket.payload
        if future is not None and not future.done():
            future.set_result(None)
