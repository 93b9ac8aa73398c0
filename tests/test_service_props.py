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
        assert cap.full == {e for e, c in cap.caps.items() if e.in_flight >= c}
        assert set(cap.open) == {e for e in ready if e not in cap.full}
        assert len(cap.open) == len(set(cap.open))
        if not cap.stale:
            # The configured 6, lowered to the ready pods' total capacity when each has one.
            caps = [cap.caps.get(e) for e in ready]
            total = sum(caps) if caps and None not in caps else None
            assert q.limit == (min(6, total) if cap.caps and total else 6)
            # Work-conserving: nothing waits while a slot is free and a pod is ready.
            if q.waiting and not q.held:
                assert q.limit is not None and q.active >= q.limit


TestServiceMachine = ServiceMachine.TestCase
TestServiceMachine.settings = settings(max_examples=150, stateful_step_count=60, deadline=None)
