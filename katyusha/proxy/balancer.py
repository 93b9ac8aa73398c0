"""The asyncio adapter around the sans-IO core: L1 queue admission, pod picking, pod membership.

The core decides; this module only turns its answers into futures and
timers. One timer follows ``L1Queue.next_deadline()``; futures of waiting
requests are resolved from what ``release``/``unhold``/``expire`` return. The
queue is held whenever no pod is ready, so requests wait (scale from zero)
instead of failing, and ``on_demand`` tells the control plane at once.

Per-pod capacity, as Knative's activator sizes its per-pod breakers: a pod
may hold ``pod-capacity-factor`` times its container concurrency of this
process's requests (at least 1). The concurrency is the one given when the pod
was registered, else the pod's last ``Nonna-Concurrency`` report (0:
unlimited); a pod registered without one, whose capacity will be learned from
reports, takes a single request until its first one ends. When every ready
pod's capacity is known and finite, the L1 limit in force is the smaller of the
configured one and their sum, so a burst held while no pod was ready goes out
no faster than pods can take it; picking skips pods that are full. The bound is
per process: several katyusha replicas (or workers) each enforce it on their
own requests only.
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

# Markers in Balancer._watch: a pod not learning its capacity from reports, and
# one whose first request has not ended yet.
_UNWATCHED = object()
_UNPROVEN = object()


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
        # Per-pod capacity; all empty when no pod is capped, so the hot path tests one dict.
        self.capacity_factor = config.pod_capacity_factor if config.l1_limit is not None else 0.0
        self._given: dict[PodEntry, int] = {}
        self._watch: dict[PodEntry, object] = {}
        self._caps: dict[PodEntry, int] = {}
        self._full: set[PodEntry] = set()
        self._open: list[PodEntry] | None = None
        self._open_version = -1
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
        """A ready pod chosen by the policy, avoiding ``exclude`` when another is ready; None when none is.

        Pods holding their capacity are skipped while another candidate has
        room; avoiding ``exclude`` (pods that just failed) comes first.
        """
        candidates = self.table.ready()
        if not candidates:
            return None
        if exclude:
            others = [entry for entry in candidates if entry not in exclude]
            if others:
                candidates = others
            full = self._full
            if full:
                room = [entry for entry in candidates if entry not in full]
                if room:
                    candidates = room
        elif self._full:
            candidates = self._with_room(candidates)
        return self.policy.pick(candidates, now)

    def dispatched(self, entry: PodEntry) -> None:
        """A request to ``entry`` started; counted until :meth:`undispatched`, body included."""
        busy = self._busy.get(entry, 0) + 1
        self._busy[entry] = busy
        caps = self._caps
        if caps:
            cap = caps.get(entry)
            if cap is not None and busy >= cap and entry not in self._full:
                self._full.add(entry)
                self._open = None

    def undispatched(self, entry: PodEntry) -> None:
        """A request to ``entry`` ended (response fully relayed, or failed)."""
        left = self._busy.get(entry, 0) - 1
        if left > 0:
            self._busy[entry] = left
        else:
            self._busy.pop(entry, None)
            event = self._idle.get(entry)
            if event is not None:
                event.set()
        full = self._full
        if full and entry in full and left < self._caps[entry]:
            full.discard(entry)
            self._open = None
        watch = self._watch
        if watch:
            seen = watch.get(entry, _UNWATCHED)
            if seen is not _UNWATCHED and seen != entry.reported_concurrency:
                # The pod told its concurrency (or its first request ended): capacity changed.
                watch[entry] = entry.reported_concurrency
                self._sync_hold()

    def busy(self, entry: PodEntry) -> int:
        """katyusha's requests to ``entry`` not yet finished, response bodies included."""
        return self._busy.get(entry, 0)

    # -- membership ------------------------------------------------------

    def upsert(self, pod: PodSpec) -> PodEntry:
        """Add or update a pod; it is ready for picking at once.

        A concurrency given before is kept when ``pod.concurrency`` is None.
        """
        entry = self._register(pod)
        self._sync_hold()
        return entry

    def _register(self, pod: PodSpec) -> PodEntry:
        new = self.table.get(pod.name) is None
        entry = self.table.upsert(pod.name, pod.url, pod.node, ready=True)
        self.admin_urls[pod.name] = pod.admin
        if pod.concurrency is not None:
            self._given[entry] = pod.concurrency
            self._watch.pop(entry, None)
        elif entry not in self._given and self.capacity_factor and self.config.uses_feedback:
            first = _UNPROVEN if new and entry.reported_concurrency is None else entry.reported_concurrency
            self._watch.setdefault(entry, first)
        return entry

    def _forget(self, entry: PodEntry) -> None:
        self.admin_urls.pop(entry.name, None)
        self._given.pop(entry, None)
        self._watch.pop(entry, None)

    def replace(self, pods: Sequence[PodSpec]) -> list[str]:
        """Make the pod set exactly ``pods``; returns the names removed (their requests finish)."""
        keep = {pod.name for pod in pods}
        removed = [entry.name for entry in self.table.pods() if entry.name not in keep]
        for name in removed:
            entry = self.table.remove(name)
            if entry is not None:
                self._forget(entry)
        for pod in pods:
            self._register(pod)
        self._sync_hold()
        return removed

    def remove(self, name: str) -> PodEntry | None:
        """Take a pod out of picking at once; returns its entry (for draining) or None if unknown."""
        entry = self.table.remove(name)
        if entry is not None:
            self._forget(entry)
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
        """After a change of pods, readiness or capacity: capacities, the L1 limit, hold or unhold."""
        caps: dict[PodEntry, int] = {}
        if self.capacity_factor:
            for entry in self.table.pods():
                cap = self._capacity(entry)
                if cap is not None:
                    caps[entry] = cap
        self._caps = caps
        self._full = {entry for entry, cap in caps.items() if self._busy.get(entry, 0) >= cap}
        self._open = None
        now = 0.0 if self._loop is None else self.now()
        woken: list[Ticket] = []
        limit = self._limit()
        if limit != self.queue.limit:
            woken += self.queue.set_limit(limit, now)
        if not self.table.ready():
            self.queue.hold()
        elif self.queue.held:
            woken += self.queue.unhold(now)
        _wake(woken)

    def _capacity(self, entry: PodEntry) -> int | None:
        """Requests ``entry`` may hold from this process; None when uncapped (unknown or unlimited)."""
        concurrency = self._given.get(entry)
        if concurrency is None:
            concurrency = entry.reported_concurrency
        if concurrency is None:
            return 1 if self._watch.get(entry) is _UNPROVEN else None
        if concurrency == 0:
            return None
        return max(1, int(concurrency * self.capacity_factor))

    def _limit(self) -> int | None:
        """The configured L1 limit, lowered to the ready pods' total capacity when each has one."""
        configured = self.config.l1_limit
        caps = self._caps
        if not caps or configured is None:
            return configured
        total = 0
        for entry in self.table.ready():
            cap = caps.get(entry)
            if cap is None:
                return configured
            total += cap
        return min(configured, total) if total else configured

    def _with_room(self, ready: list[PodEntry]) -> list[PodEntry]:
        """The ready pods below their capacity; all of them when none is (a lowered limit, a race)."""
        version = self.table.version
        if self._open is None or self._open_version != version:
            full = self._full
            self._open = [entry for entry in ready if entry not in full]
            self._open_version = version
        return self._open or ready

    def capacity(self, entry: PodEntry) -> int | None:
        """Requests ``entry`` may hold from this process now; None when it is not capped."""
        return self._caps.get(entry)

    # -- views -----------------------------------------------------------

    def queue_counters(self) -> dict:
        q = self.queue
        return {
            "waiting": q.waiting,
            "active": q.active,
            "held": q.held,
            "limit": q.limit,
            "configured_limit": self.config.l1_limit,
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
            entry = self.table.get(row["name"])
            row["concurrency"] = self._given.get(entry) if entry is not None else None
            row["capacity"] = self._caps.get(entry) if entry is not None else None
            row["busy"] = self._busy.get(entry, 0) if entry is not None else 0
        return {
            "policy": self.policy.name,
            "pod_capacity_factor": self.capacity_factor,
            "queue": self.queue_counters(),
            "ready_pods": len(self.table.ready()),
            "pods": pods,
        }


def _wake(tickets: list[Ticket]) -> None:
    for ticket in tickets:
        future = ticket.payload
        if future is not None and not future.done():
            future.set_result(None)
