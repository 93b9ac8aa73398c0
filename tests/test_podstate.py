"""The pod lifecycle table, its costs, the auto path and the time-driven machine."""

import itertools

import pytest

from katyusha.core.errors import ConfigError, IllegalTransition
from katyusha.core.podstate import (
    ACTIVE,
    COLD,
    NULL,
    TRANSITIONS,
    WARM,
    WARMDISK,
    PodCosts,
    PodMachine,
    PodState,
    check_transition,
    plan,
    shortest_path,
    step_cost,
)

ALLOWED = {
    (NULL, COLD),
    (COLD, NULL),
    (COLD, WARMDISK),
    (WARMDISK, WARM),
    (WARMDISK, COLD),
    (WARM, WARMDISK),
    (WARM, ACTIVE),
    (ACTIVE, WARM),
}
COSTS = PodCosts(image_size_mb=300, pull_mbps=100, start_s=2.5)


def test_table_is_exactly_the_lifecycle():
    table = {(src, dst) for src, targets in TRANSITIONS.items() for dst in targets}
    assert table == ALLOWED


@pytest.mark.parametrize("src,dst", sorted(ALLOWED))
def test_allowed_steps_pass(src, dst):
    check_transition(src, dst)


FORBIDDEN = sorted(set(itertools.product(PodState, PodState)) - ALLOWED)


@pytest.mark.parametrize("src,dst", FORBIDDEN)
def test_forbidden_steps_name_from_target_and_allowed(src, dst):
    with pytest.raises(IllegalTransition) as info:
        check_transition(src, dst)
    message = str(info.value)
    assert f"{src.value} -> {dst.value}" in message
    for allowed in TRANSITIONS[src]:
        assert allowed.value in message
    assert info.value.status_hint == 409


def test_step_costs():
    assert step_cost(COLD, WARMDISK, COSTS) == pytest.approx(3.0)
    assert step_cost(WARMDISK, WARM, COSTS) == pytest.approx(2.5)
    for src, dst in ALLOWED - {(COLD, WARMDISK), (WARMDISK, WARM)}:
        assert step_cost(src, dst, COSTS) == 0.0
    with pytest.raises(IllegalTransition):
        step_cost(NULL, WARM, COSTS)


@pytest.mark.parametrize(
    "kwargs,key",
    [({"image_size_mb": -1}, "image-size-mb"), ({"pull_mbps": 0}, "pull-mbps"), ({"start_s": -0.1}, "start-s")],
)
def test_costs_are_validated(kwargs, key):
    with pytest.raises(ConfigError) as info:
        PodCosts(**kwargs)
    assert info.value.key == key


def test_auto_paths():
    assert shortest_path(NULL, WARM) == [COLD, WARMDISK, WARM]
    assert shortest_path(WARM, NULL) == [WARMDISK, COLD, NULL]
    assert shortest_path(ACTIVE, COLD) == [WARM, WARMDISK, COLD]
    assert shortest_path(WARMDISK, WARMDISK) == []
    steps = plan(NULL, WARM, COSTS)
    assert [(s.src, s.dst) for s in steps] == [(NULL, COLD), (COLD, WARMDISK), (WARMDISK, WARM)]
    assert sum(s.cost_s for s in steps) == pytest.approx(5.5)


def test_auto_path_never_targets_active():
    with pytest.raises(IllegalTransition, match="active"):
        shortest_path(WARM, ACTIVE)


def test_every_auto_path_is_legal_and_shortest():
    for src, dst in itertools.product(PodState, PodState):
        if dst is ACTIVE:
            continue
        path = shortest_path(src, dst)
        here = src
        for nxt in path:
            check_transition(here, nxt)
            assert nxt is not ACTIVE
            here = nxt
        assert here == dst


def test_machine_timed_step_stays_in_source_until_complete():
    machine = PodMachine(COLD, COSTS)
    ends = machine.begin(WARMDISK, now=10.0)
    assert ends == pytest.approx(13.0)
    assert machine.in_transition and machine.state is COLD
    assert not machine.complete(now=12.9)
    assert machine.state is COLD
    assert machine.complete(now=13.0)
    assert machine.state is WARMDISK and not machine.in_transition
    assert machine.image_pulls == 1


def test_machine_instant_step_applies_at_once():
    machine = PodMachine(NULL, COSTS)
    assert machine.begin(COLD, now=1.0) == 1.0
    assert machine.state is COLD and not machine.in_transition


def test_machine_refuses_a_second_transition_while_one_runs():
    machine = PodMachine(WARMDISK, COSTS)
    machine.begin(WARM, now=0.0)
    with pytest.raises(IllegalTransition, match="in progress"):
        machine.begin(COLD, now=1.0)
    machine.complete(now=2.5)
    assert machine.state is WARM and machine.cold_starts == 1


def test_machine_refuses_illegal_step():
    machine = PodMachine(NULL, COSTS)
    with pytest.raises(IllegalTransition, match="null -> warm"):
        machine.begin(WARM, now=0.0)
    assert machine.state is NULL


def test_requests_flip_warm_and_active():
    machine = PodMachine(WARM, COSTS)
    machine.request_started()
    machine.request_started()
    assert machine.state is ACTIVE and machine.in_flight == 2
    with pytest.raises(IllegalTransition, match="executing"):
        machine.begin(WARMDISK, now=0.0)
    machine.request_finished()
    assert machine.state is ACTIVE
    machine.request_finished()
    assert machine.state is WARM
    with pytest.raises(IllegalTransition):
        machine.begin(ACTIVE, now=0.0)


def test_requests_refused_when_not_serving():
    machine = PodMachine(WARMDISK, COSTS)
    with pytest.raises(IllegalTransition, match="warmdisk"):
        machine.request_started()
    machine.begin(WARM, now=0.0)
    with pytest.raises(IllegalTransition):
        machine.request_started()


def test_machine_cannot_start_active():
    with pytest.raises(ConfigError):
        PodMachine(ACTIVE)
