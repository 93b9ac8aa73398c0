"""The service balancer: every decision katyusha takes for one service, sync and sans-IO.

One :class:`ServiceBalancer` per service owns the L1 queue, the load table,
the policy, the response pool, per-pod capacity and hold. A driver (the live
proxy, a simulator) does the I/O and calls it. A request's life::

    ticket = service.offer(now)              # QueueFull (503) when the queue is full
    # ticket.admitted, or wait until a call below returns it (wake it then)
    handle = service.dispatch(ticket, now)   # None: no pod is ready, the ticket waits again
    ticket = service.offer_dispatch(now)     # or both at once: handle in ticket.dispatch (or None)
    handle.on_head(now, feedback, status)    # the response head came back
    handle.on_failure(now, retryable, sent_nothing=...)  # or: no response; True: dispatch again
    service.end(ticket, now)                 # the request ended (also: handle.done(now))
    service.complete(handle, now, feedback, status)  # or both at once: a whole response

``end``, ``done`` and ``complete`` are the one exit of a request whatever happened (it was
never admitted, the client left, it failed, it succeeded): they end the open
try, if any, and give the L1 slot back, once. Each try counts one request
in ``PodEntry.in_flight`` from ``dispatch`` until it ends (``on_failure``,
``end``/``done``), exactly once however many times and in whatever order the
driver calls them. Retries are further dispatches of the same ticket, which
avoid the pods it already failed on. A try that provably sent nothing (the
pod refused, or its nonna could not reach its app) is retried whatever the
method; one that may have reached the app only for an idempotent request; both
within the service's retry budget (:mod:`katyusha.core.retrybudget`).
``ticket.maybe_executed`` tells the driver whether a failed request may have
run on some pod.

Pod health (:mod:`katyusha.core.health`) decides which pods are in the ready
set: every response and failure feeds it, and the driver runs the probes
:meth:`ServiceBalancer.health_due` names and reports them with
:meth:`ServiceBalancer.probe_result`, which returns the tickets a pod's return
lets in.

Calls that can let waiting tickets in (``end``, ``change_pods``) return them;
the driver wakes each. Deadlines are data: the driver keeps one timer at
:meth:`ServiceBalancer.next_deadline` and calls :meth:`ServiceBalancer.expire`,
which says why each ticket expired (503 no pod was ready, 504 the queue was
full of work). Membership changes of every kind come through one call,
:meth:`ServiceBalancer.change_pods`; while no pod is ready the queue is held,
and the change that brings one returns the tickets it admits (no polling).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from katyusha.core.capacity import PodCapacity
from katyusha.core.errors import DeadlineExceeded, KatyushaError, NoReadyPod
from katyusha.core.feedback import Feedback
from katyusha.core.health import HealthEvent, HealthSettings, PodHealth, Probe
from katyusha.core.hedge import Hedger, HedgeSettings
from katyusha.core.loadtable import LoadTable, PodEntry
from katyusha.core.membership import ChangeResult, PodChange, PodSpec
from katyusha.core.picktrace import PickTrace
from katyusha.core.policies import DEFAULT_POLICY, make_policy
from katyusha.core.queue import ADMITTED, DONE, WAITING, L1Queue, Ticket
from katyusha.core.responsepool import ResponsePool
from katyusha.core.retrybudget import RetryBudget

# Dispatch states: sent, response head seen, ended (counted out).
_OPEN = 0
_HEAD = 1
_ENDED = 2


@dataclass(frozen=True)
class ServiceSettings:
    """What one service decides with; every field as in force (switches already applied).

    ``l1_limit`` None: no L1 limit. ``capacity_extra``: requests a pod may
    hold beyond ``capacity_factor`` x its concurrency. ``slow_hold`` (0: off)
    keeps a much slower pod out while the L1 queue is short
    (:mod:`katyusha.core.capacity`). ``capacity_factor`` 0: no per-pod
    capacity (it is off whatever the factor when ``l1_limit`` is None).
    ``retries``: extra tries of a request on another pod (see the module
    docstring for which failures are retried), within ``retry_budget`` (a
    share of requests) plus ``retry_budget_min`` retries a second.
    ``trace_picks``: how many picks ``/trace`` keeps (0: none). ``health``:
    probes, active checks and outlier ejection. ``hedge``: hedged requests
    (:mod:`katyusha.core.hedge`).
    """

    name: str = "default"
    policy: str = DEFAULT_POLICY
    l1_limit: int | None = 1000
    queue_length: int = 10_000
    request_timeout: float = 30.0
    capacity_factor: float = 1.0
    capacity_extra: int = 1
    slow_hold: float = 0.5
    share_pods: bool = True
    uses_feedback: bool = True
    stale_after: float = 2.0
    retries: int = 2
    retry_budget: float = 0.2
    retry_budget_min: float = 10.0
    priority_classes: int = 1
    trace_picks: int = 0
    health: HealthSettings = HealthSettings()
    hedge: HedgeSettings = HedgeSettings()


class ServiceTicket(Ticket):
    """A request's place in the L1 queue, and what its tries so far have taught."""

    __slots__ = ("tries_left", "tried", "dispatch", "idempotent", "maybe_executed", "hedge", "hedged")

    def __init__(self, payload, enqueued_at: float, deadline: float, priority: int):
        # Ticket.__init__'s fields set here, not through super(): one call less per request.
        self.payload = payload
        self.enqueued_at = enqueued_at
        self.deadline = deadline
        self.priority = priority
        self.state = WAITING
        self.admitted_at: float | None = None
        self._heap_seq = -1
        self.tries_left = 0
        self.tried: list[PodEntry] | None = None
        self.dispatch: Dispatch | None = None
        # The hedge of the current try (a second try running beside it), and whether one was sent.
        self.hedge: Dispatch | None = None
        self.hedged = False
        self.idempotent = True
        # A try failed in a way that may have reached the app.
        self.maybe_executed = False

    @property
    def l1_wait(self) -> float:
        """Seconds from the offer to the (last) admission; 0 while not admitted."""
        admitted_at = self.admitted_at
        return 0.0 if admitted_at is None else admitted_at - self.enqueued_at


class Dispatch:
    """One try of a request on one pod: the per-request handle (see the module docstring)."""

    __slots__ = ("service", "ticket", "entry", "sent_at", "state", "alone")

    def __init__(self, service: ServiceBalancer, ticket: ServiceTicket, entry: PodEntry, sent_at: float):
        self.service = service
        self.ticket = ticket
        self.entry = entry
        self.sent_at = sent_at
        self.state = _OPEN
        # The pod had no other request of ours: this one's latency is the pod's speed.
        self.alone = entry.in_flight == 1

    def on_head(self, now: float, feedback: Feedback | None, status: int, pod_error: str | None = None) -> float:
        """The pod's response head: feeds the table, the policy, the response pool and health once.

        ``pod_error`` is the response's ``Nonna-Error`` (nonna's own answers
        name why). Returns the latency (seconds since dispatch). The request
        stays counted until it ends. A second call, or one after the try
        ended, records nothing.
        """
        if self.state is _OPEN:
            self.state = _HEAD
            self.service._headed(self, now, feedback, status, pod_error)
        return now - self.sent_at

    def on_failure(self, now: float, retryable: bool = False, *, sent_nothing: bool = False) -> bool:
        """The try got no response (or broke off): end it; True when the ticket may be dispatched again.

        ``sent_nothing``: the pod provably never got the request (refused,
        nonna's ``upstream-unreachable``); it then leaves the ready set at
        once. Otherwise the request may have run there
        (``ticket.maybe_executed``). A failure before the head is recorded
        against the pod. True only when ``retryable`` (nothing reached the
        client, the body can be sent again), no head was seen, the request has
        tries left and still holds its slot, it is idempotent or nothing was
        sent, and the retry budget allows; the pod is then avoided by the next
        dispatch (which may find no ready pod: the ticket then waits for one).
        Calling it again, or after the try ended, returns False; so does a
        failure while the other try of a hedged pair is still open (it carries on).
        """
        if self.state is _ENDED:
            return False
        headed = self.state is _HEAD
        service = self.service
        service._end_try(self, now)
        if headed:
            return False
        ticket = self.ticket
        other = self._other()
        if not sent_nothing:
            ticket.maybe_executed = True
        if service.health.failure(self.entry, now, sent_nothing):
            service._health_changed(self.entry, now)
        if other is not None and other.state is not _ENDED:
            # The other try carries on; a retry after it fails too avoids this pod as well.
            if ticket.tried is None:
                ticket.tried = [self.entry]
            else:
                ticket.tried.append(self.entry)
            return False
        if (not retryable or ticket.tries_left <= 0 or ticket.state is not ADMITTED
                or not (sent_nothing or ticket.idempotent) or not service.budget.allow(now)):
            return False
        ticket.tries_left -= 1
        if ticket.tried is None:
            ticket.tried = [self.entry]
        else:
            ticket.tried.append(self.entry)
        return True

    def abandon(self, now: float) -> None:
        """The driver cancelled this try (the other try of a hedged pair answered first): end it.

        Counted out like any end, but not held against the pod (it did not fail).
        Calling it again, or after the try ended, changes nothing.
        """
        if self.state is not _ENDED:
            self.service._end_try(self, now, failed=False)

    def _other(self) -> Dispatch | None:
        """The other try of this one's hedged pair, if any."""
        ticket = self.ticket
        hedge = ticket.hedge
        if hedge is None:
            return None
        return ticket.dispatch if hedge is self else hedge

    def done(self, now: float) -> list[ServiceTicket]:
        """The request ended: :meth:`ServiceBalancer.end` of its ticket."""
        return self.service.end(self.ticket, now)

    @property
    def ended(self) -> bool:
        return self.state is _ENDED

    def __repr__(self) -> str:
        return f"Dispatch({self.entry.name!r}, state={self.state})"


class ServiceBalancer:
    """Admission, picking and the pod set of one service; see the module docstring."""

    # Slots: read on every request (as the core's other per-service objects).
    __slots__ = ("settings", "name", "table", "policy", "_observes", "queue", "pool", "capacity", "health",
                 "budget", "hedger", "_admitted", "specs", "on_idle", "trace", "_leaving")

    def __init__(
        self,
        settings: ServiceSettings,
        *,
        rng: random.Random,
        on_idle: Callable[[PodEntry], None] | None = None,
    ):
        """``on_idle(entry)`` is called when the last request to a removed pod ends (its drain is over).

        Raises ConfigError for bad settings (naming the setting).
        """
        self.settings = settings
        self.name = settings.name
        self.table = LoadTable(stale_after_s=settings.stale_after)
        self.policy = make_policy(settings.policy, rng=rng, table=self.table)
        # Most policies learn nothing from a response: skip the call (two, through a metric).
        self._observes = self.policy.learns
        self.queue = L1Queue(
            limit=settings.l1_limit,
            max_length=settings.queue_length,
            default_timeout_s=settings.request_timeout,
            priority_classes=settings.priority_classes,
            ticket_class=ServiceTicket,
        )
        self.pool = ResponsePool() if settings.uses_feedback else None
        factor = settings.capacity_factor if settings.l1_limit is not None else 0.0
        self.capacity = PodCapacity(factor, learn=settings.uses_feedback, extra=settings.capacity_extra,
                                    hold=settings.slow_hold,
                                    shared=self.table.reported_load if settings.share_pods else None)
        self.health = PodHealth(settings.health)
        self.budget = RetryBudget(settings.retry_budget, settings.retry_budget_min)
        self.hedger = Hedger(settings.hedge)
        # Tickets a change of health let in where no caller could take them (the driver's
        # next health call returns them).
        self._admitted: list[ServiceTicket] = []
        self.specs: dict[str, PodSpec] = {}
        self.on_idle = on_idle
        self.trace = (PickTrace(settings.name, settings.trace_picks, self.policy, self.table)
                      if settings.trace_picks else None)
        # Removed pods whose requests have not all ended.
        self._leaving: set[PodEntry] = set()
        self.queue.hold()

    # -- a request's life ----------------------------------------------------

    def offer(self, now: float, *, priority: int = 0, idempotent: bool = True) -> ServiceTicket:
        """Offer one request to the L1 queue; returns its ticket (``ticket.admitted`` or waiting).

        A request may be tried ``retries`` more times on other pods; one that
        is not ``idempotent`` only after tries that sent nothing. Raises
        QueueFull (503) when the queue is full, BadInput (400) for a priority
        out of range.
        """
        return self.offer_dispatch(now, idempotent=idempotent, priority=priority, dispatch=False)

    @property
    def needs_pods(self) -> bool:
        """True while requests wait because no pod is ready (the control plane should hear of it)."""
        return self.queue.held

    def dispatch(self, ticket: ServiceTicket, now: float, avoid: Sequence[PodEntry] = ()) -> Dispatch | None:
        """Send an admitted ticket's request (or its next try) to a pod the policy picks.

        Pods the ticket failed on, and ``avoid``, are avoided while another is
        ready; then pods at their capacity while another has room. Returns the
        try's handle; None when no pod is ready: the ticket then waits again
        (at the front, with its deadline) and the membership change that
        brings a pod returns it. Raises ValueError for a ticket that holds no
        slot or whose last try has not ended.
        """
        if ticket.state is not ADMITTED:
            raise ValueError(f"dispatch of a ticket that holds no L1 slot: {ticket!r}")
        last = ticket.dispatch
        if last is not None and last.state is not _ENDED:
            raise ValueError(f"dispatch while the ticket's last try is still open: {last!r}")
        hedge = ticket.hedge
        if hedge is not None:
            if hedge.state is not _ENDED:
                raise ValueError(f"dispatch while the ticket's hedge is still open: {hedge!r}")
            ticket.hedge = None
        return self._send(ticket, now, avoid)

    def offer_dispatch(self, now: float, *, idempotent: bool = True, priority: int = 0,
                       dispatch: bool = True) -> ServiceTicket:
        """:meth:`offer` of a request and, when it is admitted at once, :meth:`dispatch` of it,
        in one call: ``ticket.dispatch`` is then the try's handle. It is None when the ticket
        waits: not admitted, or admitted while no pod is ready (it then waits again at the
        front, as after ``dispatch``). ``dispatch`` False: :meth:`offer` alone. Raises as
        :meth:`offer` does."""
        ticket: ServiceTicket = self.queue.offer(None, now, priority=priority)  # type: ignore[assignment]
        self.budget.on_request(now)
        if self.hedger.enabled:
            self.hedger.on_request()
        ticket.tries_left = self.settings.retries
        ticket.idempotent = idempotent
        if dispatch and ticket.state is ADMITTED:
            # dispatch()'s checks hold for a ticket just made: no try yet, no hedge.
            self._send(ticket, now, ())
        return ticket

    def _send(self, ticket: ServiceTicket, now: float, avoid: Sequence[PodEntry]) -> Dispatch | None:
        """The rest of :meth:`dispatch` once its checks passed: the pick and the try's handle."""
        ready = self.table.ready()
        if not ready:
            self.queue.hold()
            self.queue.requeue(ticket, now)
            return None
        tried = ticket.tried
        trace = self.trace
        capacity = self.capacity
        if tried or avoid:
            candidates = self._avoiding(ready, tried or (), avoid)
        elif not capacity.full:
            candidates = ready  # capacity.candidates(ready)'s answer, without its call
        else:
            candidates = capacity.candidates(ready)
            if candidates is capacity.open and capacity.built_from is ready:
                # Ready pods but the full ones: the policy may serve that from
                # its index over ready, leaving the full out, rather than scan.
                entry = (self.policy.pick_except(candidates, ready, capacity.full, capacity.order,
                                                 now)
                         if trace is None else
                         trace.pick_except(candidates, ready, capacity.full, capacity.order, now))
                candidates = None
        if candidates is not None:
            entry = (self.policy.pick(candidates, now) if trace is None
                     else trace.pick(candidates, now))
        self.table.on_dispatch(entry, now)
        self.capacity.started(entry)
        handle = ticket.dispatch = Dispatch(self, ticket, entry, now)
        return handle

    def end(self, ticket: ServiceTicket, now: float) -> list[ServiceTicket]:
        """The request ended, however: end its open try and give its L1 slot back, once.

        A waiting ticket is cancelled (the client left). Returns the tickets
        admitted in its place. Calling it again changes nothing.
        """
        handle = ticket.dispatch
        if handle is not None:
            if handle.state is not _ENDED:
                self._end_try(handle, now)
            # Each try points back at its ticket: without this the cycle is
            # garbage for the collector, one per request (full collections of
            # 15-20 ms about every second at 256 connections).
            ticket.dispatch = None
        hedge = ticket.hedge
        if hedge is not None:
            if hedge.state is not _ENDED:
                self._end_try(hedge, now)
            ticket.hedge = None
        return self._release(ticket, now)

    def _release(self, ticket: ServiceTicket, now: float) -> list[ServiceTicket]:
        """The rest of :meth:`end` once the ticket's tries ended: its L1 slot (or place) given back."""
        state = ticket.state
        if state is ADMITTED:
            admitted = self.queue.release(ticket, now)
        elif state is WAITING:
            admitted = self.queue.cancel(ticket, now)
        else:
            admitted = []
        capacity = self.capacity
        if capacity.stale or capacity.slow or capacity.moved or self._admitted:
            return self._settle(admitted, now)  # type: ignore[arg-type]
        return admitted  # type: ignore[return-value]

    def _settle(self, admitted: list[ServiceTicket], now: float) -> list[ServiceTicket]:
        """The rest of a request's end once its slot is given back (``admitted``: the tickets
        let in for it), when capacity may have moved or health let tickets in: what follows."""
        capacity = self.capacity
        if capacity.stale:
            admitted += self._resync(now)
        # review() visits the pods with a threshold and the held ones: with neither (two
        # request ends in three at 100 pods a service) it would change nothing.
        elif ((capacity.slow and capacity.hold and (capacity.thresholds or capacity.held)
               and capacity.review(self.queue.waiting, now))
              or capacity.moved):
            admitted += self.queue.set_limit(capacity.limit(self.settings.l1_limit), now)
        if self._admitted:
            admitted += self.take_admitted()
        return admitted

    def complete(self, handle: Dispatch, now: float, feedback: Feedback | None, status: int,
                 pod_error: str | None = None) -> list[ServiceTicket]:
        """A whole response came back for ``handle``'s try and the request ended with it:
        ``handle.on_head(now, feedback, status, pod_error)`` then ``end(handle.ticket, now)``,
        in one call (what a driver does for a response that arrived whole). Returns the
        tickets admitted in its place."""
        ticket = handle.ticket
        if (handle.state is not _OPEN or ticket.hedge is not None or ticket.dispatch is not handle
                or ticket.state is not ADMITTED):
            handle.on_head(now, feedback, status, pod_error)
            return self.end(ticket, now)
        # The common case (one open try, no hedge, the ticket holds its slot): on_head's and
        # end's steps in _headed, the table told of the head and the end in one call.
        handle.state = _HEAD
        return self._headed(handle, now, feedback, status, pod_error, True)  # type: ignore[return-value]

    def hedge_delay(self, method: str, body: bool | int | None) -> float | None:
        """Seconds after which a request of this kind is hedged (:meth:`hedge`); None: never.

        ``body``: the request body's length (0: none; None or True: unknown).
        None while hedging is off, for a method that is not idempotent or a
        body that is not known to be small (:func:`katyusha.core.hedge.is_hedgeable`),
        (delay ``auto``) until the service's latencies are known, and while a
        hedge would not be affordable now (near capacity, or no budget:
        :meth:`katyusha.core.hedge.Hedger.may_afford`), so such a request costs
        the driver no hedge timer.
        """
        hedger = self.hedger
        if not hedger.enabled:  # what delay() answers first, without the call
            return None
        delay = hedger.delay(method, body)
        if delay is None:
            return None
        queue = self.queue
        return delay if hedger.may_afford(queue.waiting, queue.active, self._hedge_limit()) else None

    def _hedge_limit(self) -> int | None:
        """The L1 limit without the pods' extra slots: a hedge is for a pod that starts it at once."""
        return self.capacity.slots_limit(self.settings.l1_limit)

    def hedge(self, ticket: ServiceTicket, now: float) -> Dispatch | None:
        """A second try of the ticket's open try, on another pod, if one is affordable now.

        The first response head of the two wins: the driver calls
        :meth:`Dispatch.abandon` on the other try and goes on with the winner
        (its handle is ``ticket.dispatch`` again after :meth:`Dispatch.on_head`).
        None (no hedge) when the first try has answered or ended, the ticket
        was hedged already, the service is near capacity or out of hedge budget,
        or no other ready pod has a free slot of its concurrency (an extra slot
        would leave the hedge waiting in nonna; the L1 limit it is judged against
        leaves the extras out too).
        """
        first = ticket.dispatch
        hedger = self.hedger
        if (not hedger.enabled or ticket.hedged or first is None or first.state is not _OPEN
                or ticket.state is not ADMITTED):
            return None
        capacity = self.capacity
        others = [entry for entry in capacity.candidates(self.table.ready())
                  if entry is not first.entry and entry not in capacity.full and capacity.idle_slot(entry)]
        if not others:
            hedger.skipped_no_pod += 1
            return None
        queue = self.queue
        if not hedger.affordable(queue.waiting, queue.active, self._hedge_limit()):
            return None
        trace = self.trace
        entry = self.policy.pick(others, now) if trace is None else trace.pick(others, now)
        self.table.on_dispatch(entry, now)
        self.capacity.started(entry)
        handle = ticket.hedge = Dispatch(self, ticket, entry, now)
        ticket.hedged = True
        hedger.sent += 1
        return handle

    def next_deadline(self) -> float | None:
        """The earliest deadline among waiting tickets (the driver's one timer), or None."""
        return self.queue.next_deadline()

    def expire(self, now: float) -> list[tuple[ServiceTicket, KatyushaError]]:
        """The waiting tickets whose deadline passed, each with the error to answer it with.

        NoReadyPod (503) while no pod is ready, else DeadlineExceeded (504)
        naming the L1 limit.
        """
        expired = self.queue.expire(now)
        if not expired:
            return []
        timeout = self.settings.request_timeout
        if self.queue.held:
            return [(t, NoReadyPod(f"no pod was ready within {timeout:g}s")) for t in expired]  # type: ignore[misc]
        limit = self.queue.limit
        return [(t, DeadlineExceeded(f"waited {timeout:g}s in the L1 queue (limit {limit}) "  # type: ignore[misc]
                                     f"without being admitted")) for t in expired]

    def fail_waiting(self, message: str) -> list[tuple[ServiceTicket, KatyushaError]]:
        """Take every waiting ticket out (shutting down), each with NoReadyPod(``message``)."""
        return [(t, NoReadyPod(message)) for t in self.queue.expire(float("inf"))]  # type: ignore[misc]

    # -- the handle's calls --------------------------------------------------

    def _headed(self, handle: Dispatch, now: float, feedback: Feedback | None, status: int,
                pod_error: str | None, ending: bool = False) -> list[ServiceTicket] | None:
        """The head's steps of :meth:`Dispatch.on_head` (returns None). ``ending``: the request
        ends with this head (:meth:`complete`'s common case: the try open and alone, the ticket
        admitted): then also :meth:`_end_try`'s and :meth:`_release`'s steps, without their
        calls, and returns the tickets admitted in its place."""
        entry = handle.entry
        if self.health.response(entry, now, status, pod_error):
            self._health_changed(entry, now)
        latency = now - handle.sent_at
        ticket = handle.ticket
        admitted_at = ticket.admitted_at  # ticket.l1_wait, without the property's call
        if ticket.hedge is not None:
            first = ticket.dispatch
            if ticket.hedge is handle and first.state is not _HEAD:
                # The hedge answered first: it is the request's try from now on.
                self.hedger.won += 1
                ticket.dispatch, ticket.hedge = handle, first
        if self.hedger.enabled:
            self.hedger.observe(latency)
        if self._observes:
            # A learning policy reads the pod's in_flight as it was before the end.
            self.table.record_response(entry, now, latency, feedback, handle.alone)
            self.policy.observe(entry, now, latency, feedback)
            if ending:
                self.table.on_end(entry)
        else:
            # Ending: the table counts the try out here, the listeners called once for both.
            self.table.record_response(entry, now, latency, feedback, handle.alone, ending)
        pool = self.pool
        if pool is not None:
            # By position (l1 wait, l2 wait, app, latency, status): a call with keywords costs more.
            pool.record(
                entry.name, entry.node, now,
                0.0 if admitted_at is None else (admitted_at - ticket.enqueued_at) * 1000.0,
                feedback.queue_ms if feedback is not None else None,
                feedback.app_ms if feedback is not None else None,
                latency * 1000.0,
                status,
            )
        if not ending:
            return None
        # The try ends with its head (no failure: _end_try's steps), then the request
        # (_release's, for a ticket that holds its slot: L1Queue.release's steps).
        handle.state = _ENDED
        ticket.dispatch = None  # see end(): the cycle between the ticket and its try
        self.capacity.ended(entry, now)
        if self._leaving:
            self._drained(entry)
        ticket.state = DONE
        queue = self.queue
        queue.active -= 1
        admitted = queue.admit(now) if queue.waiting and not queue.held else []
        capacity = self.capacity
        if capacity.stale or capacity.slow or capacity.moved or self._admitted:
            return self._settle(admitted, now)
        return admitted

    def _end_try(self, handle: Dispatch, now: float, failed: bool = True, counted: bool = False) -> None:
        """Count the try out once; a try that saw no head is a failure of its pod (unless not ``failed``).
        ``counted``: the table counted it out already (:meth:`_headed`, ending)."""
        entry = handle.entry
        if handle.state is _OPEN and failed:
            self.table.record_failure(entry, now)
        handle.state = _ENDED
        if not counted:
            self.table.on_end(entry)
        self.capacity.ended(entry, now)
        if self._leaving:
            self._drained(entry)

    def _drained(self, entry: PodEntry) -> None:
        """A try to ``entry`` ended: ``on_idle`` when it was a removed pod's last request."""
        if entry.in_flight == 0 and entry in self._leaving:
            self._leaving.discard(entry)
            if self.on_idle is not None:
                self.on_idle(entry)

    def _avoiding(self, ready: list[PodEntry], tried: Sequence[PodEntry],
                  avoid: Sequence[PodEntry]) -> list[PodEntry]:
        """Ready pods not tried nor avoided (all when none is left), then those with room (if any)."""
        others = [entry for entry in ready if entry not in tried and entry not in avoid] or ready
        full = self.capacity.full
        if full:
            room = [entry for entry in others if entry not in full]
            if room:
                return room
        return others

    # -- membership ----------------------------------------------------------

    def change_pods(self, change: PodChange, now: float) -> ChangeResult:
        """Apply one membership change (add, update, replace, remove); see :class:`PodChange`.

        Removed pods leave picking at once; their requests finish, and
        ``on_idle`` tells when the last one ended. Returns what changed,
        with the tickets the change admitted (the driver wakes them).
        """
        result = ChangeResult()
        table = self.table
        if change.replace:
            keep = {spec.name for spec in change.upsert}
            for entry in table.pods():
                if entry.name not in keep:
                    self._remove(entry, result)
        for name in change.remove:
            entry = table.get(name)
            if entry is None:
                result.unknown.append(name)
            else:
                self._remove(entry, result)
        for spec in change.upsert:
            self._register(spec, now)
        result.admitted = self._resync(now)
        return result

    def _register(self, spec: PodSpec, now: float) -> None:
        table = self.table
        entry = table.get(spec.name)
        new = entry is None
        if new:
            entry = table.upsert(spec.name, spec.url, spec.node, ready=True)
            self.health.add(entry, spec.name, spec.url, spec.admin, now)
        else:
            # A pod given again keeps its health verdict, unless it moved (a new address starts afresh).
            self.health.readdress(entry, spec.name, spec.url, spec.admin, now)
            table.upsert(spec.name, spec.url, spec.node, ready=self.health.serving(entry))
        old = self.specs.get(spec.name)
        if spec.concurrency is None and old is not None and old.concurrency is not None:
            spec = replace(spec, concurrency=old.concurrency)
        self.specs[spec.name] = spec
        self.capacity.register(entry, spec.concurrency, new=new)

    def _remove(self, entry: PodEntry, result: ChangeResult) -> None:
        self.table.remove(entry.name)
        self.specs.pop(entry.name, None)
        self.capacity.forget(entry)
        self.health.remove(entry)
        if entry.in_flight > 0:
            self._leaving.add(entry)
        result.removed.append(entry)

    def _resync(self, now: float) -> list[ServiceTicket]:
        """After a change of pods or capacity: capacities, the L1 limit, hold or unhold."""
        table = self.table
        ready = table.ready()
        self.capacity.rebuild(table.pods(), ready)
        queue = self.queue
        admitted: list[Ticket] = []
        limit = self.capacity.limit(self.settings.l1_limit)
        if limit != queue.limit:
            admitted += queue.set_limit(limit, now)
        if not ready:
            queue.hold()
        elif queue.held:
            admitted += queue.unhold(now)
        return admitted  # type: ignore[return-value]

    # -- health --------------------------------------------------------------

    def _health_changed(self, entry: PodEntry, now: float) -> None:
        """A pod's health verdict flipped: the ready set, capacities and the L1 limit follow."""
        self.table.set_ready(entry.name, self.health.serving(entry))
        self._admitted += self._resync(now)

    def health_due(self, now: float) -> list[tuple[PodEntry, Probe]]:
        """The probes to run now, each with the pod it is for (give both back to :meth:`probe_result`)."""
        return self.health.due(now)  # type: ignore[return-value]

    def probe_result(self, entry: PodEntry, now: float, ok: bool, why: str = "") -> list[ServiceTicket]:
        """A probe of ``entry`` succeeded (``ok``) or failed; returns the tickets a pod's return let in."""
        if self.health.probe_result(entry, now, ok, why):
            self._health_changed(entry, now)
        return self.take_admitted()

    def take_admitted(self) -> list[ServiceTicket]:
        """Tickets let in by health changes on the request path, not yet handed to the driver."""
        admitted, self._admitted = self._admitted, []
        return admitted

    def next_health_deadline(self) -> float | None:
        """When :meth:`health_due` next has a probe to start or an ejection to end (the driver's timer)."""
        return self.health.next_deadline()

    def take_health_events(self) -> list[HealthEvent]:
        """Health changes since the last call (for log lines; counts are in :meth:`pod_row`)."""
        return self.health.take_events()

    # -- views ---------------------------------------------------------------

    def admin_url(self, name: str) -> str | None:
        spec = self.specs.get(name)
        return spec.admin if spec is not None else None

    def draining(self) -> list[PodEntry]:
        """Removed pods whose requests have not all ended."""
        return list(self._leaving)

    def demand(self) -> dict:
        """What the autoscaler reads: requests waiting, in flight (admitted), and ready pods."""
        return {
            "waiting": self.queue.waiting,
            "in_flight": self.queue.active,
            "ready_pods": len(self.table.ready()),
        }

    def queue_counters(self) -> dict:
        q = self.queue
        return {
            "waiting": q.waiting,
            "active": q.active,
            "held": q.held,
            "limit": q.limit,
            "configured_limit": self.settings.l1_limit,
            "max_length": q.max_length,
            "admitted_total": q.admitted_total,
            "rejected_total": q.rejected_total,
            "expired_total": q.expired_total,
            "cancelled_total": q.cancelled_total,
        }

    def pod_row(self, entry: PodEntry, now: float) -> dict:
        """One load-table row with the pod's admin URL, given concurrency and capacity in force."""
        row = self.table.row(entry, now)
        spec = self.specs.get(entry.name)
        row["admin"] = spec.admin if spec is not None else None
        row["concurrency"] = spec.concurrency if spec is not None else None
        capacity = self.capacity
        row["capacity"] = capacity.caps.get(entry)
        row["held"] = entry in capacity.held
        row["slow"] = entry in capacity.slow
        row["others"] = capacity.others.get(entry, 0)
        row["room"] = capacity.room(entry)
        row.update(self.health.row(entry, now))
        return row

    def state(self, now: float) -> dict:
        """The load table, policy and queue as JSON (admin ``GET /pods``, metrics)."""
        return {
            "service": self.name,
            "policy": self.policy.name,
            "pod_capacity_factor": self.capacity.factor,
            "queue": self.queue_counters(),
            "ready_pods": len(self.table.ready()),
            "retry_budget": self.budget.state(),
            "hedge": self.hedger.state(),
            "pods": [self.pod_row(entry, now) for entry in self.table.pods()],
        }
