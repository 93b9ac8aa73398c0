"""benchmarks.sim_vs_live's run-calibrated mode: the live run's arrivals replayed, its overheads read back."""

import random

import pytest

from benchmarks import lb_quality, loadgen
from benchmarks.sim_vs_live import (
    RECORD,
    arrival_times,
    calibration,
    ordered_pairs,
    pod_release_estimate,
    ranking_agrees,
    record,
    release_estimate,
    sim_scenario,
    simulate,
)
from katyusha.sim.engine import Simulation


def _heterogeneous():
    return next(s for s in lb_quality.scenarios() if s.name == "heterogeneous")


def test_the_trace_is_lb_quality_measures_arrivals_and_the_simulation_replays_it():
    rate, duration = 292.5, 2.0
    times = arrival_times(rate, duration, seed=7)
    warm = loadgen.poisson_schedule(100.0, lb_quality.WARMUP_S, random.Random(lb_quality.WARMUP_SEED))
    measured = loadgen.poisson_schedule(rate, duration, random.Random(7))
    assert times == warm + [lb_quality.WARMUP_S + t for t in measured]
    sim = Simulation(sim_scenario(_heterogeneous(), "round-robin", rate, duration, trace=times))
    sim.run()
    assert sorted(row[4] for row in sim.recorder.rows["requests"]) == sorted(times)


def test_calibration_reads_the_overheads_back_from_the_requests_and_the_simulation_holds_slots_for_them():
    # Requests as the generator records them through katyusha (with nonna's headers kept) and
    # nonna: katyusha's upstream leg 3 ms over nonna's queue and app (1.5 ms each way), 4 ms of
    # the client's own outside it, the app 2 ms over the drawn service time.
    samples = [loadgen.Sample(sent_at=i / 100, latency_ms=7.0 + (30.0 + i % 3) + 4.0, status=200, pod="pod-1",
                              lag_ms=0.1, timing=f"nonna-queue;dur={i % 3}, app;dur=27, "
                                                 f"katyusha-queue;dur=7.0, katyusha-upstream;dur={30 + i % 3}",
                              body=b'{"service_ms": 26.0, "target_ms": 25.0}') for i in range(30)]
    rows = [record(s) for s in samples]
    assert all(len(row) == len(RECORD) for row in rows)
    figures = calibration(rows)
    assert (figures["hop"], figures["client"], figures["pod"]) == (1.5, 4.0, 2.0)
    # A wake between admission and dispatch holds the slot with the pod idle: in the hop, not the client's.
    woken = calibration([row[:-1] + [1.0] for row in rows])
    assert (woken["hop"], woken["client"], woken["wake_ms"]) == (2.0, 3.0, 1.0)
    assert figures["lateness_ms"] == 1.0 and figures["nonna_to_app_ms"] == 1.0
    # Without katyusha's upstream time (nonna's headers not kept), everything outside the queues
    # and the app is folded into the hop, as --calibrate folds it.
    folded = calibration([row[:-2] for row in rows])
    assert (folded["hop"], folded["client"]) == (3.5, 0.0)
    # The simulation holds each slot for them: at 90% of the nominal capacity, 2 x 1.5 + 2 ms
    # on a 20 ms service overloads the fleet, and the waits in L1 grow.
    scenario = _heterogeneous()
    rate = scenario.capacity_rps * 0.9
    idle = simulate(scenario, "round-robin", rate, 3.0, overhead={"hop": 0.0, "pod": 0.0})
    loaded = simulate(scenario, "round-robin", rate, 3.0, overhead=figures)
    assert loaded["l1_wait_ms"] > 3 * idle["l1_wait_ms"]
    assert loaded["p50_ms"] > idle["p50_ms"] + 2 * 1.5 + 2.0 + 4.0


def test_ranking_ties_policies_whose_live_intervals_overlap():
    # a and b overlap (a tie), c is apart from both: only a pair with c is ordered.
    intervals = {"a": [100, 130], "b": [120, 150], "c": [200, 260]}
    assert ordered_pairs(intervals) == [["a", "c"], ["b", "c"]]
    assert ranking_agrees({"a": 140, "b": 110, "c": 300}, intervals) == []  # a tie swapped: agrees
    assert ranking_agrees({"a": 100, "b": 210, "c": 200}, intervals) == [["b", "c"]]
    assert ranking_agrees({"a": 150, "b": 150, "c": 150}, intervals) == []  # equal: not the other way


def test_release_estimate_finds_the_slot_time_no_timing_covers():
    # One pod, every request queued in L1: each admitted 0.4 ms after the one before it ended
    # (its head), a time katyusha's timings do not show. Request i is sent at i ms (no lag),
    # waits in L1 until the pod frees, is woken in 0.1 ms, and takes 20 ms upstream.
    rows, free = [], 0.0
    for i in range(41):
        sent = float(i)
        admitted = max(free, sent + 5.0)
        queue = admitted - sent
        free = admitted + 0.1 + 20.0 + 0.4
        rows.append([sent / 1000.0, queue + 20.1 + 1.0, 200, "pod-0", 0.0, queue, 0.0, 19.0, 18.5, 18.0,
                     20.0, 0.1])
    release, windows = release_estimate(rows, window=1)
    assert windows == 40 and abs(release - 0.4) < 1e-6
    # A window is broken by a request that did not wait (the pod may have been idle before it).
    rows[15][5] = 0.0
    assert release_estimate(rows, window=1)[1] == 38
    # Too few windows (a light load): no estimate.
    assert release_estimate(rows, window=2) == (None, 19)
    assert release_estimate([row[:5] + [0.0] + row[6:] for row in rows], window=1) == (None, 0)


def test_pod_release_estimate_finds_the_time_nonna_holds_its_slot_between_two_requests():
    # One pod, requests 1 ms apart, 0.5 ms each way to nonna, 20 ms in the app: they queue in L2,
    # and nonna starts each 0.3 ms after the one before it ended.
    rows, free = [], 0.0
    for i in range(45):
        arrive = i + 0.5
        start = max(arrive, free)
        queue = start - arrive
        free = start + 20.0 + 0.3
        rows.append([i / 1000.0, 1.0 + queue + 20.0, 200, "pod-0", 0.0, 0.0, queue, 20.0, 19.5, 19.0,
                     1.0 + queue + 20.0, 0.0])
    release, windows = pod_release_estimate(rows, window=2)
    assert windows == 21 and abs(release - 0.3) < 1e-6
    # With one replica nonna's queue stays empty: nothing to read.
    assert pod_release_estimate([row[:6] + [0.0] + row[7:] for row in rows], window=2) == (None, 0)


def test_the_machine_mode_reads_its_host_from_a_machine_calibration():
    # Busy cores on a line (0.1 + 0.8 ms a request): the section's background and cpu-per-request;
    # the lightest load's overheads divided by the stretch the model gives there.
    from benchmarks.sim_vs_live import machine_model
    from katyusha.sim.machine import stretch_at

    points = [{"load": 0.0, "rate": 0.0, "busy_cores": 0.05}]
    for rate in (100.0, 200.0, 300.0):
        points.append({"load": rate / 325, "rate": rate, "busy_cores": 0.1 + rate * 0.0008,
                       "hop": 0.2 + rate / 1000, "pod": 0.5, "client": 0.9})
    calibrated = [{"scenario": "noisy", "cores": 1, "points": points[:3]},
                  {"scenario": "heterogeneous", "cores": 2, "points": points}]
    host = machine_model(calibrated, "heterogeneous")
    machine = host["machine"]
    assert machine["cores"] == 2 and machine["background"] == pytest.approx(0.1)
    assert float(machine["cpu-per-request"].removesuffix("ms")) == pytest.approx(0.8)
    stretch = stretch_at(2, (0.1 + 100 * 0.0008) / 2)
    assert host["overhead"] == pytest.approx({"hop": 0.3 / stretch, "pod": 0.5 / stretch, "client": 0.9})
    assert machine_model(calibrated, "replicas")["machine"]["cores"] == 1  # no entry of its own: the first
    scenario = sim_scenario(_heterogeneous(), "p2c", 276.0, 2.0, overhead=host["overhead"], machine=machine)
    assert scenario.machine.cores == 2 and scenario.machine.cpu_per_request_s == pytest.approx(0.0008)
    assert sim_scenario(_heterogeneous(), "p2c", 276.0, 2.0).machine is None
    figures = simulate(_heterogeneous(), "p2c", 276.0, 2.0, overhead=host["overhead"], machine=machine)
    assert figures["machine"]["stretch_max"] > 1.0
