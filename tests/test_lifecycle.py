"""The pod walk (katyusha.core.lifecycle) on a fake clock: timed steps, refusals, late drivers."""

from __future__ import annotations

import pytest

from katyusha.core.errors import ConfigError, IllegalTransition
from katyusha.core.lifecycle import Lifecycle
from katyusha.core.podstate import ACTIVE, COLD, NULL, WARM, WARMDISK, PodCosts

# A 3 s image pull and a 2 s container start.
COSTS = PodCosts(image_size_mb=300, pull_mbps=100, start_s=2.0)


def run_timers(pod: Lifecycle, until: float) -> list[float]:
    """Drive ``pod`` like a timer-based driver: wake at each next_deadline up to ``until``."""
    fired = []
    while (deadline := pod.next_deadline()) is not None and deadline <= until:
        pod.advance(deadline)
        fired.append(deadline)
    return fired


def test_walk_from_null_to_warm_takes_the_pull_and_the_start():
    pod = Lifecycle(NULL, COSTS)
    steps = pod.walk(WARM, 10.0)
    assert [(s.src, s.dst, s.cost_s) for s in steps] == [
        (NULL, COLD, 0.0), (COLD, WARMDISK, 3.0), (WARMDISK, WARM, 2.0)]
    # The instant step is applied and the pull is running before walk() returns.
    assert pod.state(10.0) is COLD and pod.next_deadline() == 13.0
    assert pod.walk_in_progress(10.0) == steps and pod.moving(10.0)
    assert not pod.serving(12.9)
    assert run_timers(pod, 100.0) == [13.0, 15.0]
    assert pod.state(15.0) is WARM and pod.serving(15.0)
    assert pod.walk_in_progress(15.0) is None and not pod.moving(15.0)
    assert (pod.machine.image_pulls, pod.machine.cold_starts) == (1, 1)


def test_a_late_driver_sees_the_same_walk():
    pod = Lifecycle(NULL, COSTS)
    pod.walk(WARM, 0.0)
    # Nobody woke up at 3 s: a read at 4 s finishes the pull at 3 s and the start runs from there.
    assert pod.state(4.0) is WARMDISK
    t = pod.machine.transition
    assert (t.src, t.dst, t.started_at, t.ends_at) == (WARMDISK, WARM, 3.0, 5.0)
    # A read long after finishes everything at once.
    assert pod.state(60.0) is WARM and not pod.moving(60.0)


def test_one_move_at_a_time():
    pod = Lifecycle(COLD, COSTS)
    step = pod.step(WARMDISK, 0.0)
    assert (step.src, step.dst, step.cost_s) == (COLD, WARMDISK, 3.0)
    with pytest.raises(IllegalTransition, match="in progress"):
        pod.step(NULL, 1.0)
    with pytest.raises(IllegalTransition, match="cold -> warmdisk"):
        pod.walk(WARM, 1.0)
    assert pod.state(3.0) is WARMDISK
    pod.walk(WARM, 3.0)
    with pytest.raises(IllegalTransition, match=r"a walk warmdisk -> warm is in progress"):
        pod.step(COLD, 4.0)
    with pytest.raises(IllegalTransition, match="walk"):
        pod.walk(NULL, 4.0)
    assert pod.state(5.0) is WARM


def test_instant_walk_is_over_before_it_returns():
    pod = Lifecycle(WARM, COSTS)
    steps = pod.walk(NULL, 0.0)
    assert [s.dst for s in steps] == [WARMDISK, COLD, NULL]
    assert pod.state(0.0) is NULL and not pod.moving(0.0) and pod.next_deadline() is None


def test_requests_decide_warm_or_active():
    pod = Lifecycle(WARM, COSTS)
    pod.request_started(0.0)
    assert pod.state(0.0) is ACTIVE
    assert pod.walk(WARM, 0.1) == []  # the container runs already: nothing to do
    with pytest.raises(IllegalTransition, match="executing"):
        pod.walk(WARMDISK, 0.1)
    with pytest.raises(IllegalTransition, match="executing"):
        pod.step(WARM, 0.1)
    with pytest.raises(IllegalTransition, match="entered by requests"):
        pod.walk(ACTIVE, 0.1)
    pod.request_finished(0.2)
    assert pod.state(0.2) is WARM
    assert [s.dst for s in pod.walk(WARMDISK, 0.3)] == [WARMDISK]


def test_requests_are_refused_while_not_serving():
    pod = Lifecycle(WARMDISK, COSTS)
    with pytest.raises(IllegalTransition, match="not serving"):
        pod.request_started(0.0)
    pod.step(WARM, 0.0)
    with pytest.raises(IllegalTransition, match="not serving"):
        pod.request_started(1.9)
    pod.request_started(2.0)  # the start ended at 2.0: served without any timer firing
    assert pod.state(2.0) is ACTIVE


def test_illegal_step_names_the_states_and_changes_nothing():
    pod = Lifecycle(WARM, COSTS)
    with pytest.raises(IllegalTransition, match="warm -> cold"):
        pod.step(COLD, 0.0)
    assert pod.state(0.0) is WARM and not pod.moving(0.0)
    with pytest.raises(ConfigError, match="active"):
        Lifecycle(ACTIVE)
