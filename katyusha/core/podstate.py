"""The pod lifecycle: states, the transitions allowed between them and what each costs.

Everything that decides whether a pod may change state lives here, as data:
:data:`TRANSITIONS` is the whole table, and a change it does not list is an
:class:`~katyusha.core.errors.IllegalTransition`, never a silent no-op. The
emulated pod (sim_backend), the simulator and the autoscaler share these rules.

Sans-IO: time comes in as ``now`` (seconds on any monotonic clock the caller
picks) and nothing here sleeps; the caller waits until ``ends_at`` and calls
:meth:`PodMachine.complete`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from katyusha.core.errors import ConfigError, IllegalTransition


class PodState(StrEnum):
    """Where a pod is in its lifecycle (values are the names used on the wire)."""

    NULL = "null"  # nothing on the node
    COLD = "cold"  # placed on a node, image not on its disk
    WARMDISK = "warmdisk"  # image on the node's disk, no container running
    WARM = "warm"  # container running, idle
    ACTIVE = "active"  # container running, at least one request executing

    @classmethod
    def parse(cls, name: object) -> PodState:
        """The state called ``name``; raises ConfigError (400) naming the known states."""
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(s.value for s in cls)
            raise ConfigError("state", f"unknown state {name!r} (known: {known})") from None


NULL, COLD, WARMDISK, WARM, ACTIVE = (
    PodState.NULL,
    PodState.COLD,
    PodState.WARMDISK,
    PodState.WARM,
    PodState.ACTIVE,
)

# The whole transition table: from -> the targets it may move to in one step.
TRANSITIONS: dict[PodState, frozenset[PodState]] = {
    NULL: frozenset({COLD}),
    COLD: frozenset({NULL, WARMDISK}),
    WARMDISK: frozenset({WARM, COLD}),
    WARM: frozenset({WARMDISK, ACTIVE}),
    ACTIVE: frozenset({WARM}),
}

# Every named set of states: the rest of the project takes its sets from here.

# States that answer requests.
SERVING = frozenset({WARM, ACTIVE})
# States that do not: a pod here is out of every balancer's set (the actuator calls it free).
NOT_SERVING = frozenset(PodState) - SERVING
# States whose node holds the pod's image on disk (a start needs no pull).
IMAGE_ON_DISK = frozenset({WARMDISK, WARM, ACTIVE})
# Active is entered and left by requests starting and finishing, so a walk
# ordered by an operator or autoscaler never goes through it or ends in it.
_AUTO_EXCLUDED = frozenset({ACTIVE})
# States a walk may end in: where an operator may move a pod and where a pod may start.
WALK_TARGETS = frozenset(PodState) - _AUTO_EXCLUDED
# States a retired pod may be walked down to.
RETIRE_TARGETS = NOT_SERVING


def in_order(states: frozenset[PodState]) -> tuple[PodState, ...]:
    """``states`` in lifecycle order (null first), for messages and command-line choices."""
    return tuple(s for s in PodState if s in states)


def names(states: frozenset[PodState]) -> str:
    """``states`` as "null, cold, warmdisk", in lifecycle order, for error messages."""
    return ", ".join(s.value for s in in_order(states))


def _names(states) -> str:
    return ", ".join(sorted(s.value for s in states)) or "none"


@dataclass(frozen=True)
class PodCosts:
    """What the timed steps cost: image pull (size / bandwidth) and container start."""

    image_size_mb: float = 200.0
    pull_mbps: float = 100.0
    start_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.image_size_mb >= 0:
            raise ConfigError("image-size-mb", f"must be >= 0, got {self.image_size_mb!r}")
        if not self.pull_mbps > 0:
            raise ConfigError("pull-mbps", f"must be > 0, got {self.pull_mbps!r}")
        if not self.start_s >= 0:
            raise ConfigError("start-s", f"must be >= 0, got {self.start_s!r}")

    @property
    def pull_s(self) -> float:
        """Seconds to pull the image onto the node's disk."""
        return self.image_size_mb / self.pull_mbps


def check_transition(src: PodState, dst: PodState) -> None:
    """Return when ``src -> dst`` is one allowed step; raise IllegalTransition naming both and the allowed targets."""
    allowed = TRANSITIONS[src]
    if dst not in allowed:
        raise IllegalTransition(
            f"illegal transition {src.value} -> {dst.value}: "
            f"from {src.value} the allowed targets are {_names(allowed)}"
        )


def step_cost(src: PodState, dst: PodState, costs: PodCosts) -> float:
    """Seconds one allowed step takes (0 for instant ones); raises IllegalTransition for others."""
    check_transition(src, dst)
    if (src, dst) == (COLD, WARMDISK):
        return costs.pull_s
    if (src, dst) == (WARMDISK, WARM):
        return costs.start_s
    return 0.0


def shortest_path(src: PodState, dst: PodState) -> list[PodState]:
    """The states visited from ``src`` to ``dst`` (``src`` excluded) by the fewest allowed steps.

    Active is never an intermediate state nor a target. Leaving active goes
    through warm first. Returns [] when ``src == dst``. Raises
    IllegalTransition when ``dst`` is active or not reachable.
    """
    if dst in _AUTO_EXCLUDED:
        raise IllegalTransition(
            f"no path {src.value} -> {dst.value}: {dst.value} is entered by requests, not by a walk"
        )
    if src == dst:
        return []
    parents: dict[PodState, PodState] = {}
    frontier = deque([src])
    seen = {src}
    while frontier:
        here = frontier.popleft()
        for nxt in sorted(TRANSITIONS[here], key=lambda s: s.value):
            if nxt in seen or nxt in _AUTO_EXCLUDED:
                continue
            seen.add(nxt)
            parents[nxt] = here
            if nxt == dst:
                path = [nxt]
                while path[-1] in parents and parents[path[-1]] != src:
                    path.append(parents[path[-1]])
                return path[::-1]
            frontier.append(nxt)
    raise IllegalTransition(f"no path {src.value} -> {dst.value}")


def steps_to_serve(state: PodState) -> int:
    """How many steps of the table a pod in ``state`` is from serving (0 when warm or active).

    The placement adapter wakes the slots nearest to serving first: warmdisk
    (a start) before cold (a pull and a start) before null.
    """
    return 0 if state in SERVING else len(shortest_path(state, WARM))


@dataclass(frozen=True)
class Step:
    """One planned step and its cost in seconds."""

    src: PodState
    dst: PodState
    cost_s: float

    def to_dict(self) -> dict:
        return {"from": self.src.value, "to": self.dst.value, "cost_s": self.cost_s}


def plan(src: PodState, dst: PodState, costs: PodCosts) -> list[Step]:
    """The steps of :func:`shortest_path` with their costs; raises IllegalTransition like it."""
    steps = []
    here = src
    for nxt in shortest_path(src, dst):
        steps.append(Step(here, nxt, step_cost(here, nxt, costs)))
        here = nxt
    return steps


@dataclass(frozen=True)
class Transition:
    """A timed step in progress: the pod stays in ``src`` until ``ends_at``."""

    src: PodState
    dst: PodState
    started_at: float
    ends_at: float

    def remaining(self, now: float) -> float:
        return max(0.0, self.ends_at - now)


class PodMachine:
    """One pod's state, its transition in progress and its executing requests, driven by ``now``.

    A timed step leaves the pod in its source state until :meth:`complete` is
    called at or after ``ends_at``; instant steps apply at once. Warm and active
    follow the requests: active while at least one executes.
    """

    # Slots: one per pod, read on every request's start and end (see katyusha.core.sidecar.Sidecar).
    __slots__ = ("state", "costs", "transition", "in_flight", "image_pulls", "cold_starts", "transitions")

    def __init__(self, state: PodState = NULL, costs: PodCosts | None = None):
        if state is ACTIVE:
            raise ConfigError("state", "a pod cannot start active (active means requests are executing)")
        self.state = state
        self.costs = costs or PodCosts()
        self.transition: Transition | None = None
        self.in_flight = 0
        # Counters, for monitoring.
        self.image_pulls = 0
        self.cold_starts = 0
        self.transitions = 0

    @property
    def in_transition(self) -> bool:
        return self.transition is not None

    @property
    def serving(self) -> bool:
        return self.state in SERVING and self.transition is None

    def begin(self, target: PodState, now: float) -> float:
        """Start the step to ``target``; return when it ends (``now`` for instant steps, already applied).

        Raises IllegalTransition when a transition is running, when the step is
        not in the table, when ``target`` is active (requests make a pod active)
        or when the pod is active (requests are executing).
        """
        if self.transition is not None:
            t = self.transition
            raise IllegalTransition(
                f"transition {t.src.value} -> {t.dst.value} in progress "
                f"({t.remaining(now):.3f}s left); cannot start {self.state.value} -> {target.value}"
            )
        if target is ACTIVE:
            raise IllegalTransition(
                f"illegal transition {self.state.value} -> active: a pod becomes active "
                "only while requests execute"
            )
        if self.state is ACTIVE:
            raise IllegalTransition(
                f"illegal transition active -> {target.value}: {self.in_flight} request(s) "
                "executing; the pod leaves active when they finish"
            )
        cost = step_cost(self.state, target, self.costs)
        if cost <= 0:
            self._apply(target)
            return now
        self.transition = Transition(self.state, target, now, now + cost)
        return self.transition.ends_at

    def complete(self, now: float) -> bool:
        """Finish the running transition if ``now`` has reached its end; True when it did."""
        t = self.transition
        if t is None or now < t.ends_at:
            return False
        self.transition = None
        self._apply(t.dst)
        return True

    def _apply(self, target: PodState) -> None:
        if (self.state, target) == (COLD, WARMDISK):
            self.image_pulls += 1
        elif (self.state, target) == (WARMDISK, WARM):
            self.cold_starts += 1
        self.state = target
        self.transitions += 1

    def request_started(self) -> None:
        """Count one executing request (warm becomes active); raises IllegalTransition when not serving."""
        if not self.serving:
            raise IllegalTransition(f"pod is {self.state.value}, not serving")
        self.in_flight += 1
        self.state = ACTIVE

    def request_finished(self) -> None:
        """Count one request done; the pod goes back to warm when none is left."""
        if self.in_flight <= 0:
            raise IllegalTransition("request_finished without a request executing")
        self.in_flight -= 1
        if self.in_flight == 0:
            self.state = WARM
