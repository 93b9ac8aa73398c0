"""The pod walk, sans-IO: one pod's state machine and the walk it is on, stepped on ``now``.

:class:`Lifecycle` carries out what an operator or the control plane asks of
one pod: a single step of :data:`~katyusha.core.podstate.TRANSITIONS`, or a
walk along :func:`~katyusha.core.podstate.plan`'s shortest legal path, each
timed step taking its cost. It adds to :class:`~katyusha.core.podstate.PodMachine`
the rules of a walk: one move at a time (a step or walk asked while another
runs is refused, naming it), a walk from active to warm is a no-op (the
container runs already; requests decide warm or active), and a pod with
requests executing does not leave.

No timers: the driver asks :meth:`Lifecycle.next_deadline`, waits until then
(a real timer in sim_backend, simulated time in a simulator) and calls
:meth:`Lifecycle.advance`; every read advances first, so a late timer never
shows a stale state. A step that follows a timed one starts when that one
ended, not when ``advance`` happened to be called, so a walk takes the same
time whatever the driver's granularity.
"""

from __future__ import annotations

from collections import deque

from katyusha.core.errors import IllegalTransition
from katyusha.core.podstate import ACTIVE, NULL, WARM, PodCosts, PodMachine, PodState, Step, plan

__all__ = ["Lifecycle"]


class Lifecycle:
    """One pod's state, its timed step in progress and the walk it is on, driven by ``now``."""

    # Slots: one per pod, read on every request's start and end (see Sidecar).
    __slots__ = ("machine", "_walk", "_pending")

    def __init__(self, state: PodState = NULL, costs: PodCosts | None = None):
        """Raises ConfigError when ``state`` is active (requests make a pod active)."""
        self.machine = PodMachine(state, costs)
        self._walk: list[Step] = []
        self._pending: deque[Step] = deque()

    # -- time ----------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the running timed step ends (call :meth:`advance` then), or None when none runs."""
        t = self.machine.transition
        return None if t is None else t.ends_at

    def advance(self, now: float) -> None:
        """Finish every step due by ``now`` and begin the walk's next ones, each at the end of the last.

        Raises IllegalTransition if a planned step is refused on the way (the
        walk is then abandoned where it stands).
        """
        machine = self.machine
        pending = self._pending
        t = machine.transition
        if t is None:
            if not pending:
                return  # the common case: nothing under way
            at = now
        else:
            if now < t.ends_at:
                return
            machine.complete(t.ends_at)
            at = t.ends_at
        while pending:
            step = pending.popleft()
            try:
                machine.begin(step.dst, at)
            except IllegalTransition:
                self._abandon()
                raise
            t = machine.transition
            if t is not None:
                if now < t.ends_at:
                    return
                machine.complete(t.ends_at)
                at = t.ends_at
        self._walk = []

    def _abandon(self) -> None:
        self._pending.clear()
        self._walk = []

    # -- reads (each advances to ``now`` first) ------------------------------------------

    def state(self, now: float) -> PodState:
        self.advance(now)
        return self.machine.state

    def serving(self, now: float) -> bool:
        """True when the pod answers requests (warm or active, no step in progress)."""
        self.advance(now)
        return self.machine.serving

    def walk_in_progress(self, now: float) -> list[Step] | None:
        """Every step of the walk under way (done ones included), or None when no walk runs."""
        self.advance(now)
        return list(self._walk) if self._walk else None

    def moving(self, now: float) -> bool:
        """True while a timed step or a walk is under way."""
        self.advance(now)
        return bool(self._walk) or self.machine.transition is not None

    # -- moves -----------------------------------------------------------------------

    def step(self, target: PodState, now: float) -> Step:
        """Begin one allowed step to ``target``; instant steps apply at once.

        Raises IllegalTransition when a walk or timed step runs, when the step
        is not in the table, when ``target`` is active, or when the pod is
        active (requests executing).
        """
        self.advance(now)
        self._refuse_if_walking(target)
        src = self.machine.state
        ends_at = self.machine.begin(target, now)
        return Step(src, target, ends_at - now)

    def walk(self, target: PodState, now: float) -> list[Step]:
        """Walk the shortest legal path to ``target``; return its steps (their costs in seconds).

        Instant steps, and the start of the first timed one, happen before
        returning. Walking to warm from active is a no-op ([]): the container
        runs already and requests decide warm or active. Raises
        IllegalTransition when a walk or timed step runs, when ``target`` is
        active or unreachable, or when the pod is active and must leave warm.
        """
        self.advance(now)
        self._refuse_if_walking(target)
        machine = self.machine
        if machine.transition is not None:
            machine.begin(target, now)  # raises, naming the step in progress
        src = machine.state
        if src is ACTIVE and target is WARM:
            return []
        steps = plan(src, target, machine.costs)
        if steps and src is ACTIVE:
            machine.begin(steps[0].dst, now)  # raises: requests are executing
        self._walk = steps
        self._pending = deque(steps)
        self.advance(now)
        return steps

    def _refuse_if_walking(self, target: PodState) -> None:
        if self._walk:
            path = " -> ".join([self._walk[0].src.value, *(s.dst.value for s in self._walk)])
            raise IllegalTransition(
                f"a walk {path} is in progress; cannot start {self.machine.state.value} -> {target.value}"
            )

    # -- requests ----------------------------------------------------------------------

    def request_started(self, now: float) -> None:
        """Count one executing request (warm becomes active); raises IllegalTransition when not serving."""
        machine = self.machine
        if machine.transition is not None or self._pending:  # advance()'s own first test (per request)
            self.advance(now)
        machine.request_started()

    def request_finished(self, now: float) -> None:
        """Count one request done; the pod is warm again when none is left."""
        machine = self.machine
        if machine.transition is not None or self._pending:
            self.advance(now)
        machine.request_finished()
