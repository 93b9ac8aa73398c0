"""How the control plane moves one pod, as tables over PodState: the steps of a move and the slot phases.

Rule 1: every rule about the order in which a pod leaves or joins service
lives here, so the live control plane (katyusha.control) and a simulator take
the same steps. Sans-IO: the driver observes, carries out commands and
reports back; time comes in as ``now``.

**A move** takes a pod to a target state. Its steps depend only on whether
the target serves (:data:`STEPS`):

- into service (warm): ``WALK`` to warm (the pod walks the transition table
  with its real delays), then ``JOIN`` every balancer's set. A pod joins only
  once it can serve, so no request meets a pod that is still starting.
- out of service (warmdisk, cold, null): ``DRAIN`` it out of every balancer's
  set first (a balancer answers once its own requests to the pod have
  finished), then ``WALK`` down. Drain before retire: no request is cut off.

:class:`PodMove` follows one move. :meth:`PodMove.next` says what to do now
(a :class:`Walk`, :class:`Drain`, :class:`Join` or :class:`Look` command, or
that the move :class:`Finished` or :class:`Failed`); the driver carries it
out and reports with :meth:`PodMove.observed`, :meth:`PodMove.walked` or
:meth:`PodMove.done`.

**A slot** is one pod the autoscaler may move; it is in one :class:`Phase`.
:data:`PHASE_AFTER` is the whole table of phase changes; a change it does not
list raises :class:`~katyusha.core.errors.IllegalTransition`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from katyusha.core.errors import IllegalTransition
from katyusha.core.podstate import SERVING, WARM, PodState


class Step(StrEnum):
    """One step of a move."""

    DRAIN = "drain"  # out of every balancer's set, answered once its requests there finished
    WALK = "walk"  # the pod walks the transition table to the target, with its real delays
    JOIN = "join"  # into every balancer's set


# The steps of a move, keyed by whether the target state serves.
STEPS: dict[bool, tuple[Step, ...]] = {
    True: (Step.WALK, Step.JOIN),
    False: (Step.DRAIN, Step.WALK),
}


# Where the autoscaler's wakes go.
WAKE_TARGET = WARM


def steps_to(target: PodState) -> tuple[Step, ...]:
    """The steps that take a pod to ``target`` (see :data:`STEPS`)."""
    return STEPS[target in SERVING]


def reached(state: PodState | None, target: PodState) -> bool:
    """Whether a pod in ``state`` is where a move to ``target`` wants it (warm or active both serve)."""
    if state is None:
        return False
    return state in SERVING if target in SERVING else state is target


def in_service(state: PodState | None, heading: PodState | None) -> bool:
    """Whether a pod belongs in the balancers' sets: it serves and is not on its way elsewhere.

    ``heading`` is where a running walk or transition ends (None: staying).
    """
    return state in SERVING and (heading is None or heading in SERVING)


class WalkAnswer(StrEnum):
    """What the pod answered when asked to walk."""

    DONE = "done"  # already there (an instant walk, or nothing to do)
    STARTED = "started"  # walking; look again later
    BUSY = "busy"  # refused for now (a walk runs, or requests execute): ask again later
    REFUSED = "refused"  # refused for good: the move fails


@dataclass(frozen=True)
class Walk:
    """Ask ``pod`` to walk to ``target`` along the table (sim-backend: ``PUT /state``, path auto)."""

    pod: str
    target: PodState


@dataclass(frozen=True)
class Drain:
    """Take ``pod`` out of every balancer's set; report done once each answered that it drained."""

    pod: str


@dataclass(frozen=True)
class Join:
    """Put ``pod`` into every balancer's set; report done once it is."""

    pod: str


@dataclass(frozen=True)
class Look:
    """Read ``pod``'s state at ``at`` (seconds on the move's clock) and report it."""

    pod: str
    at: float


@dataclass(frozen=True)
class Finished:
    """The move is over: ``pod`` is in ``state``."""

    pod: str
    state: PodState


@dataclass(frozen=True)
class Failed:
    """The move is over without reaching its target; ``reason`` says why."""

    pod: str
    reason: str


Command = Walk | Drain | Join | Look | Finished | Failed


class PodMove:
    """One pod on its way to ``target``: the steps of :func:`steps_to`, driven by observations.

    The walk step asks once and then watches; a walk that ends short of the
    target (the pod restarted) is asked again; a busy answer is retried. The
    move fails when it has not finished by ``now + timeout_s``.
    """

    def __init__(self, pod: str, target: PodState, now: float, *, timeout_s: float, poll_s: float = 0.05):
        self.pod = pod
        self.target = target
        self.steps = steps_to(target)
        self.started_at = now
        self.deadline = now + timeout_s
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        self.index = 0
        self.state: PodState | None = None
        self.moving = False
        self._fresh = False  # an observation came after the last command
        self._retry_at: float | None = None
        self._end: Finished | Failed | None = None

    @property
    def step(self) -> Step | None:
        """The step in progress; None once every step is done."""
        return self.steps[self.index] if self.index < len(self.steps) else None

    def next(self, now: float) -> Command:
        """What to do at ``now``."""
        if self._end is not None:
            return self._end
        step = self.step
        if step is None:
            self._end = Finished(self.pod, self.state if self.state is not None else self.target)
            return self._end
        if step is Step.DRAIN:
            return Drain(self.pod)
        if step is Step.JOIN:
            return Join(self.pod)
        return self._walk_step(now)

    def _walk_step(self, now: float) -> Command:
        if self._fresh and not self.moving and reached(self.state, self.target):
            self._advance()
            return self.next(now)
        if now > self.deadline:
            where = self.state.value if self.state is not None else "unreachable"
            self._end = Failed(self.pod, f"not {self.target.value} after {self.timeout_s:g}s (still {where})")
            return self._end
        if not self._fresh:
            return Look(self.pod, now)
        if self._retry_at is not None and now < self._retry_at:
            return Look(self.pod, self._retry_at)
        if self.state is None or self.moving:
            return Look(self.pod, now + self.poll_s)
        # Not moving and not there: ask (again, when an earlier walk ended short: the pod restarted).
        return Walk(self.pod, self.target)

    def observed(self, now: float, state: PodState | None, moving: bool) -> None:
        """The pod's state read at ``now`` (None: it did not answer) and whether it walks or transitions."""
        self.state, self.moving, self._fresh = state, moving, True

    def walked(self, now: float, answer: WalkAnswer, detail: str = "") -> None:
        """The pod's answer to a :class:`Walk`."""
        self._fresh = False
        if answer is WalkAnswer.REFUSED:
            self._end = Failed(self.pod, f"refused {self.target.value}: {detail}" if detail else "refused")
        elif answer is WalkAnswer.BUSY:
            self._retry_at = now + self.poll_s
        else:
            self._retry_at = None if answer is WalkAnswer.DONE else now + self.poll_s

    def done(self, now: float) -> None:
        """The :class:`Drain` or :class:`Join` in progress is done."""
        if self.step in (Step.DRAIN, Step.JOIN):
            self._advance()

    def fail(self, reason: str) -> None:
        """End the move as failed (the driver could not carry out a step)."""
        self._end = Failed(self.pod, reason)

    def _advance(self) -> None:
        self.index += 1
        self._fresh = False
        self._retry_at = None


class Phase(StrEnum):
    """Where a slot is in the actuator's hands."""

    FREE = "free"  # not serving, not moving: may be woken
    WAKING = "waking"  # on its way to warm, then into every balancer's set
    SERVING = "serving"  # warm or active, in every balancer's set
    RETIRING = "retiring"  # drained out of the sets, then walked down


class Event(StrEnum):
    WAKE = "wake"
    RETIRE = "retire"
    DONE = "done"
    FAILED = "failed"


# The whole table of phase changes: (phase, event) -> next phase.
PHASE_AFTER: dict[tuple[Phase, Event], Phase] = {
    (Phase.FREE, Event.WAKE): Phase.WAKING,
    (Phase.WAKING, Event.DONE): Phase.SERVING,
    (Phase.WAKING, Event.FAILED): Phase.FREE,
    (Phase.SERVING, Event.RETIRE): Phase.RETIRING,
    # A retirement that failed leaves the pod out of the sets: it is free to be woken again.
    (Phase.RETIRING, Event.DONE): Phase.FREE,
    (Phase.RETIRING, Event.FAILED): Phase.FREE,
}

# Phases the autoscaler counts as asked for (retiring pods are on their way out).
ASKED_FOR = frozenset({Phase.WAKING, Phase.SERVING})


def phase_of(state: PodState | None) -> Phase:
    """The phase of a slot found in ``state`` with no move running (adopting a running fleet)."""
    return Phase.SERVING if state in SERVING else Phase.FREE


class SlotPhases:
    """Every slot's phase; slots not listed are free."""

    def __init__(self) -> None:
        self._phase: dict[str, Phase] = {}

    def of(self, name: str) -> Phase:
        return self._phase.get(name, Phase.FREE)

    def apply(self, name: str, event: Event) -> Phase:
        """Change ``name``'s phase by ``event``; raises IllegalTransition when the table has no such change."""
        here = self.of(name)
        after = PHASE_AFTER.get((here, event))
        if after is None:
            raise IllegalTransition(f"slot {name}: no phase change {here.value} on {event.value}")
        self._set(name, after)
        return after

    def settle(self, name: str, state: PodState | None) -> Phase:
        """Set ``name``'s phase from a state reached outside the actuator (adopted, or moved by an operator)."""
        phase = phase_of(state)
        self._set(name, phase)
        return phase

    def asked_for(self, names: Iterable[str]) -> int:
        """How many of ``names`` are waking or serving."""
        # of() for each, in C: a name not listed is free (None here), not asked for.
        return sum(map(ASKED_FOR.__contains__, map(self._phase.get, names)))

    def counts(self, names: Iterable[str]) -> dict[str, int]:
        """How many of ``names`` are in each phase, plus ``slots``, their number."""
        out = {phase.value: 0 for phase in Phase}
        total = 0
        for name in names:
            out[self.of(name).value] += 1
            total += 1
        out["slots"] = total
        return out

    def _set(self, name: str, phase: Phase) -> None:
        if phase is Phase.FREE:
            self._phase.pop(name, None)
        else:
            self._phase[name] = phase

