"""Random sequences of requests and membership changes keep the service balancer's counts consistent."""

from __future__ import annotations

import random

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from katyusha.core.errors import QueueFull
from katyusha.core.feedback import Feedback
from katyusha.core.membership import PodChange, PodSpec
from katyusha.core.queue import ADMITTED, WAITING
from katyusha.core.service import ServiceBalancer, ServiceSettings

NAMES = [f"pod-{i}" for i in range(4)]


class ServiceMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.idle: list = []
        self.s = ServiceBalancer(
            ServiceSettings(l1_limit=6, queue_length=8, request_timeout=5.0, retries=1,
                            priority_classes=2),
            rng=random.Random(3), on_idle=self.idle.append)
        self.now = 0.0
        self.tickets: list = []
        self.handles: list = []
        self.entries: set = set()

    def _tick(self) -> float:
        self.now += 0.01
        return self.now

    @rule(priority=st.integers(0, 1), idempotent=st.booleans())
    def offer(self, priority, idempotent):
        try:
            self.tickets.append(self.s.offer(self._tick(), priority=priority, idempotent=idempotent))
        except QueueFull:
            # Full: its max length, or more when admitted tickets that lost their pod were
            # put back in front (they are never dropped for it).
            assert self.s.queue.waiting >= 8

    @precondition(lambda self: self.tickets)
    @rule(data=st.data())
    def dispatch(self, data):
        ticket = data.draw(st.sampled_from(self.tickets))
        if ticket.state is not ADMITTED or (ticket.dispatch is not None and not ticket.dispatch.ended):
            return
        handle = self.s.dispatch(ticket, self._tick())
        if handle is None:
            assert ticket.state is WAITING and self.s.queue.held
        else:
            self.handles.append(handle)
            self.entries.add(handle.entry)

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), concurrency=st.sampled_from([None, 0, 1, 2]), status=st.sampled_from([200, 500]))
    def head(self, data, concurrency, status):
        handle = data.draw(st.sampled_from(self.handles))
        handle.on_head(self._tick(), Feedback(0, 1, concurrency, None, 1.0, None, None), status)
        self._admitted(self.s.take_admitted())

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), retryable=st.booleans(), sent_nothing=st.booleans())
    def failure(self, data, retryable, sent_nothing):
        handle = data.draw(st.sampled_from(self.handles))
        again = handle.on_failure(self._tick(), retryable, sent_nothing=sent_nothing)
        self._admitted(self.s.take_admitted())
        if again:
            # May be sent again: it still holds its slot (with no pod ready, the next
            # dispatch puts it back to wait for one).
            assert handle.ticket.state is ADMITTED

    @precondition(lambda self: self.tickets)
    @rule(data=st.data())
    def end(self, data):
        ticket = data.draw(st.sampled_from(self.tickets))
        self._admitted(self.s.end(ticket, self._tick()))

    @rule(names=st.lists(st.sampled_from(NAMES), max_size=3, unique=True),
          concurrency=st.sampled_from([None, 0, 1, 2]), replace=st.booleans())
    def upsert(self, names, concurrency, replace):
        pods = tuple(PodSpec(n, f"http://127.0.0.1:{9000 + i}", "", None, concurrency)
                     for i, n in enumerate(names))
        self._admitted(self.s.change_pods(PodChange(upsert=pods, replace=replace), self._tick()).admitted)

    @rule(name=st.sampled_from(NAMES))
    def remove(self, name):
        result = self.s.change_pods(PodChange(remove=(name,)), self._tick())
        self._admitted(result.admitted)

    @rule(healthy=st.booleans())
    def probes(self, healthy):
        now = self._tick()
        for entry, _ in self.s.health_due(now):
            self._admitted(self.s.probe_result(entry, now, healthy))

    @rule(step=st.floats(0.0, 3.0))
    def time_passes(self, step):
        self.now += step
        for ticket, error in self.s.expire(self.now):
            assert ticket.state is not WAITING and error.status_hint in (503, 504)

    def _admitted(self, tickets):
        for ticket in tickets:
            assert ticket.state is ADMITTED

    @invariant()
    def counts_are_consistent(self):
        s = self.s
        q = s.queue
        states = [t.state for t in self.tickets]
        assert q.waiting == states.count(WAITING) >= 0
        assert q.active == states.count(ADMITTED) >= 0
        # One count per pod: its open tries, never negative, whether it is still in the set or not.
        entries = self.entries | set(s.table.pods())
        for entry in entries:
            open_tries = sum(1 for h in self.handles if h.entry is entry and not h.ended)
            assert entry.in_flight == open_tries >= 0
        # Removed pods are idle exactly once, when their last try ended.
        assert len(self.idle) == len(set(self.idle))
        for entry in self.idle:
            assert entry.in_flight == 0 and s.table.get(entry.name) is not entry
        ready = s.table.ready()
        assert q.held == (not ready)
        cap = s.capacity
        # A ready pod's room is cut by what other balancers hold there by its report (by half its
        # slots of concurrency at most); nothing here is slow (every app time is the same).
        cuts = {e: min(cap.others[e], (c - cap.extra) // 2) for e, c in cap.caps.items()
                if e in cap.others and e.ready}
        assert cap.full == {e for e, c in cap.caps.items() if e.in_flight >= c - cuts.get(e, 0)}
        assert set(cap.open) == {e for e in ready if e not in cap.full}
        assert len(cap.open) == len(set(cap.open))
        if not cap.stale and not cap.moved:
            # The configured 6, lowered to the ready pods' total room when each has a capacity
            # (a change of room from a try that ended apart from its ticket, a failure, is
            # given to the L1 queue when the ticket ends).
            caps = [cap.caps.get(e) for e in ready]
            total = sum(caps) if caps and None not in caps else None
            assert q.limit == (min(6, max(1, total - sum(cuts.values()))) if cap.caps and total else 6)
            # Work-conserving: nothing waits while a slot is free and a pod is ready.
            if q.waiting and not q.held:
                assert q.limit is not None and q.active >= q.limit


TestServiceMachine = ServiceMachine.TestCase
TestServiceMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)


class CompleteTwins(RuleBasedStateMachine):
    """Two balancers fed the same calls, except that a whole response is ``complete`` on one
    and ``on_head`` then ``end`` on the other: every answer and every view stays the same."""

    policy = "jsq-piggyback"

    def __init__(self):
        super().__init__()
        self.idle: tuple[list, list] = ([], [])
        self.twins = tuple(ServiceBalancer(
            ServiceSettings(policy=self.policy, l1_limit=4, queue_length=8, request_timeout=5.0,
                            retries=1, slow_hold=0.5),
            rng=random.Random(5), on_idle=idle.append) for idle in self.idle)
        self.now = 0.0
        self.tickets: list[tuple] = []
        self.handles: list[tuple] = []
        for s in self.twins:
            s.change_pods(PodChange(upsert=tuple(
                PodSpec(n, f"http://127.0.0.1:{9000 + i}", f"node-{i % 2}", None, 2)
                for i, n in enumerate(NAMES[:3]))), 0.0)

    def _tick(self) -> float:
        self.now += 0.01
        return self.now

    def _same(self, answers) -> None:
        a, b = answers
        assert [self.index(t) for t in a] == [self.index(t) for t in b]

    def index(self, ticket) -> int:
        for i, pair in enumerate(self.tickets):
            if ticket in pair:
                return i
        raise AssertionError("an unknown ticket")

    @rule()
    def offer(self):
        now = self._tick()
        pair = []
        for s in self.twins:
            try:
                pair.append(s.offer(now))
            except QueueFull:
                pair.append(None)
        assert (pair[0] is None) == (pair[1] is None)
        if pair[0] is not None:
            self.tickets.append(tuple(pair))

    @rule(idempotent=st.booleans())
    def offer_dispatch(self, idempotent):
        """One twin offers and dispatches in one call, the other in two: the same ticket, pod
        and waiting (``ticket.dispatch`` None when it waits)."""
        now = self._tick()
        a, b = self.twins
        try:
            ticket_a = a.offer_dispatch(now, idempotent=idempotent)
        except QueueFull:
            ticket_a = None
        try:
            ticket_b = b.offer(now, idempotent=idempotent)
        except QueueFull:
            assert ticket_a is None
            return
        assert ticket_a is not None
        handle_b = b.dispatch(ticket_b, now) if ticket_b.state is ADMITTED else None
        handle_a = ticket_a.dispatch
        assert ticket_a.state is ticket_b.state
        assert ticket_a.idempotent == ticket_b.idempotent == idempotent
        assert (handle_a is None) == (handle_b is None)
        self.tickets.append((ticket_a, ticket_b))
        if handle_a is not None:
            assert handle_a.entry.name == handle_b.entry.name
            self.handles.append((handle_a, handle_b))

    @precondition(lambda self: self.tickets)
    @rule(data=st.data())
    def dispatch(self, data):
        pair = data.draw(st.sampled_from(self.tickets))
        if pair[0].state is not ADMITTED or (pair[0].dispatch is not None and not pair[0].dispatch.ended):
            return
        now = self._tick()
        handles = tuple(s.dispatch(t, now) for s, t in zip(self.twins, pair, strict=True))
        assert (handles[0] is None) == (handles[1] is None)
        if handles[0] is not None:
            assert handles[0].entry.name == handles[1].entry.name
            self.handles.append(handles)

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), queue=st.integers(0, 3), app_ms=st.sampled_from([None, 1.0, 40.0]),
          status=st.sampled_from([200, 404, 500, 503]), early=st.booleans(), report=st.booleans())
    def whole_response(self, data, queue, app_ms, status, early, report):
        open_ = [pair for pair in self.handles if not pair[0].ended]
        a, b = data.draw(st.sampled_from(open_ or self.handles))
        if early:  # a head already seen: complete falls back to the two calls
            now = self._tick()
            a.on_head(now, None, 200)
            b.on_head(now, None, 200)
        now = self._tick()
        feedback = Feedback(queue, 1, 2, 0.5, app_ms, None, None) if report else None
        admitted_a = a.service.complete(a, now, feedback, status)
        b.on_head(now, feedback, status)
        admitted_b = b.service.end(b.ticket, now)
        self._same((admitted_a, admitted_b))

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), retryable=st.booleans())
    def failure(self, data, retryable):
        now = self._tick()
        a, b = data.draw(st.sampled_from(self.handles))
        assert a.on_failure(now, retryable) == b.on_failure(now, retryable)
        self._same(tuple(s.take_admitted() for s in self.twins))

    @precondition(lambda self: self.tickets)
    @rule(data=st.data())
    def end(self, data):
        now = self._tick()
        pair = data.draw(st.sampled_from(self.tickets))
        self._same(tuple(s.end(t, now) for s, t in zip(self.twins, pair, strict=True)))

    @rule(names=st.lists(st.sampled_from(NAMES), min_size=1, max_size=3, unique=True))
    def upsert(self, names):
        now = self._tick()
        pods = tuple(PodSpec(n, f"http://127.0.0.1:{9000 + NAMES.index(n)}", "node-0", None, 2)
                     for n in names)
        self._same(tuple(s.change_pods(PodChange(upsert=pods), now).admitted for s in self.twins))

    @rule(name=st.sampled_from(NAMES))
    def remove(self, name):
        now = self._tick()
        self._same(tuple(s.change_pods(PodChange(remove=(name,)), now).admitted for s in self.twins))

    @rule(step=st.floats(0.0, 3.0))
    def time_passes(self, step):
        self.now += step
        expired = [s.expire(self.now) for s in self.twins]
        self._same(tuple([t for t, _ in e] for e in expired))

    @invariant()
    def the_same_views(self):
        a, b = self.twins
        assert a.state(self.now) == b.state(self.now)
        assert a.pool.summary(self.now) == b.pool.summary(self.now)
        assert a.pool.recorded_total == b.pool.recorded_total
        assert [e.name for e in self.idle[0]] == [e.name for e in self.idle[1]]
        assert self.learned(a) == self.learned(b)

    def learned(self, service) -> dict:
        return {}


class CompleteTwinsLearning(CompleteTwins):
    policy = "prequal"  # learns from each response (Policy.learns), reading in_flight

    def learned(self, service) -> dict:
        return {entry.name: (probe.rif, probe.latency_ms, probe.step_ms, probe.at)
                for entry, probe in service.policy._pool.items()}


TestCompleteTwins = CompleteTwins.TestCase
TestCompleteTwins.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
TestCompleteTwinsLearning = CompleteTwinsLearning.TestCase
TestCompleteTwinsLearning.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
