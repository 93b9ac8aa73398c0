"""The simulator's machine section: the overheads stretched by how busy the host's cores are."""

from __future__ import annotations

import pytest

from katyusha.core.errors import ConfigError
from katyusha.sim import Simulation, parse
from katyusha.sim.machine import MAX_UTILISATION, Machine, erlang_c, stretch_at

HOP, POD, WORK = 0.001, 0.002, 0.010


def run(times, machine=None, pods=2, **overhead):
    """One service of ``pods`` pods on one node, each request 10 ms of work at ``times``: its rows
    (t1 to t4 and its end in seconds, its latency in ms), and the summary."""
    document = {"duration": 5, "nodes": [{"name": "n", "max-pods": pods}],
                "services": [{"name": "s", "pods": pods, "autoscale": False, "service-time": "const:10ms",
                              "workload": {"kind": "trace", "times": list(times)}}],
                "autoscaler": {"enabled": False},
                "overhead": {"hop": f"{HOP * 1000}ms", "pod": f"{POD * 1000}ms", **overhead}}
    if machine is not None:
        document["machine"] = machine
    sim = Simulation(parse(document))
    summary = sim.run()
    return sorted(sim.recorder.rows["requests"], key=lambda row: row[4]), summary


def test_the_stretch_is_the_mm_c_queues_time_in_system_over_its_service_time():
    # One core: 1 / (1 - rho); two: 1 / (1 - rho^2) (Erlang C of two servers is 2 rho^2 / (1 + rho)).
    for rho in (0.1, 0.5, 0.8):
        assert stretch_at(1, rho) == pytest.approx(1 / (1 - rho))
        assert stretch_at(2, rho) == pytest.approx(1 / (1 - rho ** 2))
        assert erlang_c(2, 2 * rho) == pytest.approx(2 * rho ** 2 / (1 + rho))
    assert stretch_at(4, 0.0) == 1.0
    assert stretch_at(8, 0.3) < stretch_at(2, 0.3) < stretch_at(1, 0.3)  # more cores, less waiting
    # Held at MAX_UTILISATION: a saturated machine has no mean.
    assert stretch_at(2, 1.5) == stretch_at(2, MAX_UTILISATION) == pytest.approx(1 / (1 - MAX_UTILISATION ** 2))
    assert Machine(cores=2, cpu_per_request_s=0.004, background=0.2).utilisation(100) == pytest.approx(0.3)


def test_two_pods_on_busy_cores_have_every_overhead_stretched_by_the_closed_form():
    # Background work keeps one core of two busy (rho 0.5, no request costs any CPU): the hops and
    # the pod's overhead take 1 / (1 - 0.25) = 4/3 as long; the app's 10 ms does not stretch.
    rows, _ = run([0.5, 0.5], {"cores": 2, "cpu-per-request": 0, "background": 1})
    assert len({row[2] for row in rows}) == 2  # one request on each pod
    for row in rows:
        _, _, _, _, t1, t2, t3, t4, done, latency, _, _ = row
        assert t3 - t2 == pytest.approx(HOP * 4 / 3) and done - t4 == pytest.approx(HOP * 4 / 3)
        assert t4 - t3 == pytest.approx(WORK + POD * 4 / 3)
        assert latency / 1000 == pytest.approx(WORK + (2 * HOP + POD) * 4 / 3)
    # One core half busy: twice as long.
    rows, summary = run([0.5, 0.5], {"cores": 1, "cpu-per-request": 0, "background": 0.5})
    assert [row[9] / 1000 for row in rows] == pytest.approx([WORK + 2 * (2 * HOP + POD)] * 2)
    assert summary["machine"]["stretch_mean"] == pytest.approx(2.0)


def test_the_requests_own_cpu_stretches_the_overheads_from_the_next_window():
    # 100 requests a second at 5 ms of CPU each keep one core half busy: from the first window's
    # end on, each request's overheads (and the releases) take twice as long; in the first
    # window (no rate measured yet) they are as given. (A request on its way at the window's edge
    # takes each part at the stretch of when it starts: 15 ms, its hop back already stretched.)
    times = [0.005 + i * 0.01 for i in range(300)]
    machine = {"cores": 1, "cpu-per-request": "5ms", "window": "1s"}
    rows, summary = run(times, machine, **{"release": "0.5ms"})
    idle = WORK + 2 * HOP + POD
    stretched = WORK + 2 * (2 * HOP + POD)
    for row in rows:
        if row[8] < 1.0 or row[4] >= 1.0:
            assert row[9] / 1000 == pytest.approx(idle if row[4] < 1.0 else stretched)
        else:
            assert row[9] / 1000 == pytest.approx(idle + HOP)
    assert summary["machine"]["busy_cores_max"] == pytest.approx(0.5)
    assert summary["machine"]["stretch_max"] == pytest.approx(2.0)


def test_without_the_section_or_with_idle_cores_nothing_changes():
    times = [0.005 + i * 0.003 for i in range(600)]
    plain, summary = run(times, pods=1)
    assert "machine" not in summary
    idle, with_machine = run(times, {"cores": 2, "cpu-per-request": 0}, pods=1)
    assert idle == plain
    assert with_machine["machine"]["stretch_max"] == 1.0
    busy, _ = run(times, {"cores": 2, "cpu-per-request": "2ms"}, pods=1)
    assert busy != plain


@pytest.mark.parametrize(("machine", "field"), [
    ({"cores": 0, "cpu-per-request": "1ms"}, "machine.cores"),
    ({"cores": "two", "cpu-per-request": "1ms"}, "machine.cores"),
    ({"cores": 2, "cpu-per-request": "soon"}, "machine.cpu-per-request"),
    ({"cores": 2, "cpu-per-request": "-1ms"}, "machine.cpu-per-request"),
    ({"cores": 2, "cpu-per-request": "1ms", "background": 2}, "machine.background"),
    ({"cores": 2, "cpu-per-request": "1ms", "background": -0.5}, "machine.background"),
    ({"cores": 2, "cpu-per-request": "1ms", "window": 0}, "machine.window"),
    ({"cores": 2, "cpu-per-request": "1ms", "threads": 4}, "machine.threads"),
    ({"cores": 2}, "machine"),
    ("two cores", "machine"),
])
def test_a_bad_machine_section_names_its_field(machine, field):
    document = {"nodes": [{"name": "n"}], "services": [{"name": "s", "workload": {"kind": "poisson", "rate": 1}}],
                "machine": machine}
    with pytest.raises(ConfigError) as caught:
        parse(document)
    assert caught.value.key == field
