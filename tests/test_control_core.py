"""The control plane's decisions in the core, on a fake clock with no I/O: moves, slot phases, demand, scaling."""

from __future__ import annotations

import pytest

from katyusha.core.actuation import (
    PHASE_AFTER,
    STEPS,
    Drain,
    Event,
    Failed,
    Finished,
    Join,
    Look,
    Phase,
    PodMove,
    SlotPhases,
    Step,
    Walk,
    WalkAnswer,
    in_service,
    steps_to,
)
from katyusha.core.autoscaler_config import KPAConfig
from katyusha.core.errors import BadInput, IllegalTransition
from katyusha.core.podstate import ACTIVE, COLD, NULL, WARM, WARMDISK, PodState
from katyusha.core.scaling import Demand, ScaleController, merge_replicas, parse_demand

# -- the steps of a move -----------------------------------------------------------------


def test_a_pod_leaving_service_is_drained_before_it_walks_and_one_joining_walks_first():
    for state in PodState:
        steps = steps_to(state)
        if state in (WARM, ACTIVE):
            assert steps == (Step.WALK, Step.JOIN)
        else:
            assert steps == (Step.DRAIN, Step.WALK)
    assert set(STEPS) == {True, False}


class FakePod:
    """A pod on the fake clock: walks take ``walk_s``; the test decides what it answers."""

    def __init__(self, state: PodState, walk_s: float = 1.0):
        self.state = state
        self.walk_s = walk_s
        self.target: PodState | None = None
        self.until = 0.0

    def look(self, now: float) -> tuple[PodState, bool]:
        if self.target is not None and now >= self.until:
            self.state, self.target = self.target, None
        return self.state, self.target is not None

    def walk(self, now: float, target: PodState) -> WalkAnswer:
        self.target, self.until = target, now + self.walk_s
        return WalkAnswer.STARTED


def drive(move: PodMove, pod: FakePod, clock: list[float], log: list) -> Finished | Failed:
    """Carry out the move's commands against ``pod``, time moving only when a Look asks for later."""
    for _ in range(1000):
        command = move.next(clock[0])
        if isinstance(command, Finished | Failed):
            return command
        log.append(type(command).__name__)
        if isinstance(command, Look):
            clock[0] = max(clock[0], command.at)
            move.observed(clock[0], *pod.look(clock[0]))
        elif isinstance(command, Walk):
            move.walked(clock[0], pod.walk(clock[0], command.target))
        else:
            move.done(clock[0])
    raise AssertionError("the move never ended")


def test_a_wake_walks_to_warm_then_joins():
    pod, clock, log = FakePod(NULL, walk_s=2.0), [10.0], []
    end = drive(PodMove("pod-1", WARM, 10.0, timeout_s=30, poll_s=0.5), pod, clock, log)
    assert end == Finished("pod-1", WARM)
    assert log[:2] == ["Look", "Walk"] and log[-1] == "Join" and "Drain" not in log
    # It joined only once the pod was warm: 2 s after the walk began, not before.
    assert clock[0] == pytest.approx(12.0)


def test_a_retirement_drains_before_the_walk_down():
    pod, clock, log = FakePod(WARM, walk_s=0.0), [0.0], []
    move = PodMove("pod-1", WARMDISK, 0.0, timeout_s=30)
    assert move.next(0.0) == Drain("pod-1")
    end = drive(move, pod, clock, log)
    assert end == Finished("pod-1", WARMDISK)
    assert log[0] == "Drain" and log.index("Drain") < log.index("Walk") and "Join" not in log


def test_a_busy_pod_is_asked_again_and_one_that_refuses_fails_the_move():
    move = PodMove("pod-1", WARMDISK, 0.0, timeout_s=30, poll_s=0.25)
    move.done(0.0)  # drained
    move.observed(0.0, ACTIVE, False)
    assert move.next(0.0) == Walk("pod-1", WARMDISK)
    # 409: requests from outside katyusha still execute. Ask again after poll_s, not before.
    move.walked(0.0, WalkAnswer.BUSY)
    assert move.next(0.1) == Look("pod-1", 0.1)
    move.observed(0.1, ACTIVE, False)
    assert move.next(0.1) == Look("pod-1", 0.25)
    move.observed(0.25, WARM, False)
    assert move.next(0.25) == Walk("pod-1", WARMDISK)
    move.walked(0.25, WalkAnswer.REFUSED, "HTTP 400: unknown state")
    end = move.next(0.3)
    assert isinstance(end, Failed) and "unknown state" in end.reason


def test_a_walk_that_ends_short_is_asked_again_and_a_pod_never_warm_fails_at_the_deadline():
    move = PodMove("pod-1", WARM, 0.0, timeout_s=5, poll_s=1)
    move.observed(0.0, NULL, False)
    assert move.next(0.0) == Walk("pod-1", WARM)
    move.walked(0.0, WalkAnswer.STARTED)
    move.observed(1.0, COLD, True)
    assert move.next(1.0) == Look("pod-1", 2.0)
    # The pod restarted: its walk is gone and it is null again. Ask again.
    move.observed(2.0, NULL, False)
    assert move.next(2.0) == Walk("pod-1", WARM)
    move.walked(2.0, WalkAnswer.STARTED)
    move.observed(6.0, None, False)  # and now it does not answer at all
    end = move.next(6.0)
    assert isinstance(end, Failed) and "not warm after 5s" in end.reason and "unreachable" in end.reason


def test_a_pod_already_there_moves_straight_to_its_membership_step():
    move = PodMove("pod-1", WARM, 0.0, timeout_s=5)
    move.observed(0.0, ACTIVE, False)  # active serves: nothing to walk
    assert move.next(0.0) == Join("pod-1")
    move.done(0.0)
    assert move.next(0.0) == Finished("pod-1", ACTIVE)


def test_only_a_serving_pod_not_on_its_way_out_belongs_in_the_sets():
    assert in_service(WARM, None) and in_service(ACTIVE, None) and in_service(WARM, ACTIVE)
    assert not in_service(WARM, WARMDISK) and not in_service(WARMDISK, WARM) and not in_service(None, None)


# -- slot phases --------------------------------------------------------------------------


def test_slot_phases_follow_the_table_and_refuse_what_it_does_not_list():
    phases = SlotPhases()
    assert phases.of("a") is Phase.FREE
    assert phases.apply("a", Event.WAKE) is Phase.WAKING
    assert phases.asked_for(["a", "b"]) == 1
    assert phases.apply("a", Event.DONE) is Phase.SERVING
    with pytest.raises(IllegalTransition, match="serving on wake"):
        phases.apply("a", Event.WAKE)
    assert phases.apply("a", Event.RETIRE) is Phase.RETIRING
    assert phases.asked_for(["a"]) == 0  # on its way out
    assert phases.apply("a", Event.FAILED) is Phase.FREE
    assert phases.counts(["a", "b"]) == {"free": 2, "waking": 0, "serving": 0, "retiring": 0, "slots": 2}
    # A pod found warm (adopted) or moved by an operator takes the phase of its state.
    assert phases.settle("b", WARM) is Phase.SERVING and phases.settle("b", COLD) is Phase.FREE
    # Free is only left by a wake: nothing else starts a pod.
    assert [event for (phase, event) in PHASE_AFTER if phase is Phase.FREE] == [Event.WAKE]


# -- demand per service -------------------------------------------------------------------


def test_demand_documents_give_each_service_its_demand():
    single = parse_demand({"waiting": 2, "in_flight": 3, "ready_pods": 1})
    assert single == {None: Demand(2, 3, 1)}
    many = parse_demand({"waiting": 1, "in_flight": 0, "ready_pods": 0,
                         "services": {"default": {"waiting": 1, "in_flight": 0, "ready_pods": 0},
                                      "web": {"waiting": 4, "in_flight": 5, "ready_pods": 2}}})  # fmt: skip
    assert many == {None: Demand(1, 0, 0), "web": Demand(4, 5, 2)}
    # A push names its service; the default service may be named or not.
    assert parse_demand({"waiting": 1, "service": "web"}) == {"web": Demand(1, 0, 0)}
    assert parse_demand({"waiting": 1, "service": "default"}) == {None: Demand(1, 0, 0)}
    for bad, field in [({"waiting": -1}, "waiting"), ({"in_flight": "3"}, "in_flight"), ([1], "JSON object"),
                       ({"service": ""}, "service"), ({"services": {"web": {"ready_pods": True}}}, "services.web")]:
        with pytest.raises(BadInput, match=field):
            parse_demand(bad)


def test_replicas_demand_adds_up_and_ready_pods_is_the_most_any_has():
    merged = merge_replicas([{None: Demand(1, 2, 3), "web": Demand(0, 1, 1)}, {None: Demand(4, 0, 2)}])
    assert merged == {None: Demand(5, 2, 3), "web": Demand(0, 1, 1)}


def test_the_controller_decides_each_service_with_its_own_settings():
    web = KPAConfig().with_annotations({"autoscaling.knative.dev/metric": "rps", "autoscaling.knative.dev/target": "200",
                                        "autoscaling.knative.dev/window": "6s", "autoscaling.knative.dev/max-scale": "10"})
    core = ScaleController({None: KPAConfig(), "web": web}, now=0.0, ready={None: 1, "web": 1})
    # web: 700 rps over its 6 s window at 140 per pod wants 5 pods; the default service, idle, keeps its 1.
    commands = []
    for second in range(7):
        commands = core.tick(float(second), {None: Demand(0, 0, 1), "web": Demand(0, 2, 1)},
                             {"web": 700.0}, {None: 1, "web": 1})
    assert [(c.service, c.count) for c in commands] == [("web", 5)]
    assert core.last["web"].target == pytest.approx(140.0) and core.last[None].desired == 1
    # max-scale 10 bounds it.
    commands = core.tick(7.0, {"web": Demand(0, 2, 5)}, {"web": 100_000.0}, {None: 1, "web": 5})
    assert [(c.service, c.count) for c in commands] == [("web", 10)]


def test_a_poke_at_zero_asks_for_activation_scale_at_once():
    core = ScaleController({None: KPAConfig(activation_scale=2)}, now=0.0)
    command = core.poke(100.0, None, Demand(waiting=1), current=0)
    assert command is not None and (command.service, command.count) == (None, 2)
    assert core.poke(100.0, None, Demand(waiting=1), current=2) is None
    with pytest.raises(KeyError):
        core.poke(100.0, "web", Demand(waiting=1), current=0)
