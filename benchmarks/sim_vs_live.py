"""The simulator against the live system on benchmarks.lb_quality's scenarios: p50 and p99 per policy, side by side.

Run as ``python -m benchmarks.sim_vs_live [--quick] [--repeats N] [--raw PATH] [--sim-only]
[--json PATH]``, ``--from-raw PATH...`` to compare again against saved live runs (no processes), or
``--calibrate`` to measure the overheads the simulation models on an idle machine, or
``--calibrate-machine [--scenario S] [--burners N]`` to measure a scenario's ``machine`` section
(the machine modes read it from ``--machine PATH``).

For each scenario of :mod:`benchmarks.lb_quality` (``heterogeneous``,
``replicas``, ``noisy``: its definitions, pods, speeds, slow schedule,
replicas and load) and each katyusha policy, the live run is lb_quality's own
(real sim-backend and nonna processes, katyusha replicas, its open-loop
generator, its warm-up and slow-window alignment), ``--repeats`` times in
rounds with the same arrivals (seed 7), every request recorded with its
``Server-Timing`` (katyusha's L1 wait, nonna's L2 wait and app time) and
sim-backend's body (the service time it drew and the one it took). The
simulated run is the same fleet as a scenario for katyusha.sim: one node per
pod at the pod's speed, exponential 20 ms service, nonna's concurrency 1 and
queue depth 100, the same warm-up (1 s at up to 100 requests/s, not
measured), the same load, and for ``noisy`` the same slow windows
(sim_backend's own SlowSchedule, applied to the pod's speed by a hook at every
window edge, at the phase the live run is aligned to), in these modes:

- ``idle``: the scenario's default overheads (``overhead.hop`` and
  ``overhead.pod``, measured by ``--calibrate`` on an idle machine) and the
  simulator's own arrivals (also with 5 seeds: the simulation's own spread);
- ``machine``: the simulator alone on a model of this machine: as ``idle``, with a
  ``machine`` section and idle overheads from ``--calibrate-machine`` (the busy cores
  and the overheads at several loads, a run of its own: no data of the compared live
  runs), so the overheads stretch with the simulated load (:func:`machine_model`);
  ``machine-trace``: the same, on the arrivals the generator was given (its seeded
  schedule, :func:`arrival_times`, not read from the run);
- ``idle-trace``: the same overheads, the live run's arrivals replayed (the
  loadgen's seeded schedules, warm-up included);
- ``run-trace``: the live arrivals, and the overheads of each live run read
  from its own requests (:func:`calibration`); the median over the runs;
- ``run-replay``: as ``run-trace``, and each request's work is the service
  time the live run's pod drew for it (:func:`live_work`), not a new draw;
- ``run-release``: as ``run-replay``, and the slots are also held for the two
  releases read from the run (:func:`release_estimate`: katyusha's work on a
  response before it ends the request; :func:`pod_release_estimate`: nonna's
  before it starts the next queued request), the scenario's
  ``overhead.release`` and ``overhead.pod-release``.

Each ``run-*`` simulation is also compared with its own live run (paired errors).

Live figures are the median over the runs, with their spread ((max - min) /
median). Service times are the simulator's own draws but in ``run-replay``.

The cold-start half runs :mod:`benchmarks.coldstart`'s plan (``--quick``: its
quick plan) both ways: live, its own fleet at zero pods and its step of load
through katyusha (without the nginx peer); simulated, the same slots (each its
own node, so each pulls the image as each live pod does), image, pull rate,
start time, KPA settings and step. It compares the number of cold starts and
the time from the step's start to the first response.

JSON keys: ``live[scenario][policy]`` (median p50/p99 over the runs, each run's,
their spread, mean L1 and L2 waits, the slow pods' share), ``sim`` (the
``idle`` mode) and ``sim_modes`` (every mode), ``p50_rel_err``,
``p99_rel_err`` and ``same_ranking`` (the ``idle`` mode's: (simulated - live)
/ live), ``modes[scenario][mode]`` (the same per mode, and ``goal_met``),
``same_ranking_ci`` (the ``idle`` mode's, by the tie rule: two policies whose
live p99 95% bootstrap intervals overlap are a tie, and the simulation agrees
unless it orders a pair that live does not tie the other way round; per mode
``same_ranking_ci``, ``ranking_conflicts`` and ``goal_met_ci`` in ``modes``),
``live_p99_ci95`` and ``live_ordered_pairs`` (the pairs live orders),
``sim_spread`` (``machine_p50``/``machine_p99``: the machine mode's seeds), ``calibration``
(per run), ``machine_model`` (the machine mode's section and overheads), ``utilisation`` (the load over the
slots' capacity with the idle and the run's overheads), ``coldstart``
(``sim``, ``live``, ``same_cold_starts``, ``first_response_rel_err``,
``first_response_within_15pct``).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

from benchmarks import coldstart as coldstart_bench
from benchmarks import lb_quality, loadgen
from katyusha.core.feedback import parse_server_timing
from katyusha.sim.engine import Simulation
from katyusha.sim.machine import MAX_UTILISATION, Machine
from katyusha.sim.scenario import parse
from sim_backend.slowdown import parse_slow_schedule

WARMUP_RATE = 100.0
SCENARIOS = ("heterogeneous", "replicas", "noisy")
# The ``machine`` mode's host: what --calibrate-machine measured on this machine (docs/results/).
MACHINE_CALIBRATION = Path(__file__).resolve().parent.parent / "docs" / "results" / "sim_vs_live-machine-calibration.json"


def arrival_times(rate: float, duration: float, seed: int = 7) -> list[float]:
    """The arrivals lb_quality.measure sends, on the simulation's clock: its warm-up's schedule,
    then the measured run's from ``WARMUP_S`` (the same loadgen schedules and seeds)."""
    warm = loadgen.poisson_schedule(min(rate, WARMUP_RATE), lb_quality.WARMUP_S,
                                    random.Random(lb_quality.WARMUP_SEED))
    measured = loadgen.poisson_schedule(rate, duration, random.Random(seed))
    return warm + [lb_quality.WARMUP_S + t for t in measured]


def sim_scenario(scenario: lb_quality.Scenario, policy: str, rate: float, duration: float, seed: int = 7,
                 overhead: dict | None = None, trace: list[float] | None = None, work: list[float] | None = None,
                 machine: dict | None = None):
    """The fleet as a scenario. ``overhead``: ``{"hop": ms, "pod": ms}`` (default: the scenario
    format's defaults); ``trace``: arrival times to replay (default: the simulator's own draws);
    ``work``: with a trace, each arrival's work (seconds at speed 1; default: drawn); ``machine``:
    the scenario's ``machine`` section (default: none, the overheads constant)."""
    warm = lb_quality.WARMUP_S
    if trace is not None:
        workload = {"kind": "trace", "times": list(trace)}
        if work is not None:
            workload["work"] = list(work)
    else:
        workload = {"kind": "step", "steps": [{"at": 0, "rate": min(rate, WARMUP_RATE)},
                                              {"at": warm, "rate": rate}]}
    doc = {
        "seed": seed,
        "duration": warm + duration,
        "drain": 30,
        "nodes": [{"name": pod.name, "speed": pod.speed, "max-pods": 1} for pod in scenario.pods],
        "services": [{"name": "bench", "pods": len(scenario.pods), "autoscale": False,
                      "container-concurrency": 1, "queue-depth": 100,
                      "service-time": f"exp:{lb_quality.MEAN_SERVICE_S * 1000:g}ms",
                      "workload": workload}],
        "katyusha": {"replicas": scenario.replicas, "settings": {"policy": policy}},
        "autoscaler": {"enabled": False},
    }
    if overhead is not None:
        doc["overhead"] = {"hop": f"{overhead['hop']:.6f}ms", "pod": f"{overhead['pod']:.6f}ms"}
        for key in ("release", "pod-release"):
            if overhead.get(key):
                doc["overhead"][key] = f"{overhead[key]:.6f}ms"
    if machine is not None:
        doc["machine"] = dict(machine)
    return parse(doc)


def machine_model(calibrated: list[dict], scenario: str) -> dict:
    """The ``machine`` mode's host from a --calibrate-machine result (the entry for ``scenario``,
    else the first): the scenario's ``machine`` section and its idle overheads.

    ``cores``: the machine's; ``cpu-per-request`` and ``background``: the least-squares line of
    the busy cores over the request rate, through the points with requests; the overheads
    (``hop``, ``pod``, ``client``, ms): the lightest load's (:func:`calibration`), ``hop`` and
    ``pod`` divided by the stretch the model gives that load (the simulation stretches them back).
    """
    entry = next((e for e in calibrated if e["scenario"] == scenario), calibrated[0])
    points = [p for p in entry["points"] if p["rate"] > 0 and "hop" in p]
    slope, intercept = statistics.linear_regression([p["rate"] for p in points], [p["busy_cores"] for p in points])
    machine = {"cores": entry["cores"], "cpu-per-request": f"{max(slope, 0.0) * 1000:.6f}ms",
               "background": round(min(max(intercept, 0.0), entry["cores"] * MAX_UTILISATION), 6)}
    low = min(points, key=lambda p: p["rate"])
    stretch = Machine(machine["cores"], max(slope, 0.0), machine["background"]).stretch(low["rate"])
    return {"machine": machine, "overhead": {"hop": low["hop"] / stretch, "pod": low["pod"] / stretch,
                                             "client": low["client"]},
            "from": {"scenario": entry["scenario"], "points": len(points), "lightest_rate": low["rate"],
                     "stretch_there": round(stretch, 4)}}


def slow_phase(duration: float) -> float:
    """The slow schedules' phase at the warm-up's start: lb_quality aligns each measured run to end
    as a slow window ends."""
    return (lb_quality.SLOW_PERIOD_S - duration - lb_quality.WARMUP_S) % lb_quality.SLOW_PERIOD_S


def live_work(scenario: lb_quality.Scenario, records: list[list], trace: list[float], duration: float,
              seed: int = 7) -> list[float]:
    """Each arrival's work in a live run (seconds at speed 1), in the order of ``trace``: the
    service time sim-backend drew for it times its pod's speed then; drawn for the warm-up's
    arrivals and any request without a body."""
    speeds = {pod.name: pod.speed for pod in scenario.pods}
    schedules = {pod.name: parse_slow_schedule(pod.slow_schedule) for pod in scenario.pods if pod.slow_schedule}
    phase0 = slow_phase(duration)
    by_time = {}
    for r in records:
        row = _row(r)
        if row["target_ms"] is None or row["pod"] not in speeds:
            continue
        speed = speeds[row["pod"]]
        schedule = schedules.get(row["pod"])
        if schedule is not None:
            # The service started about after the L1 wait, half the trip to nonna and the L2 wait.
            trip = ((row["upstream_ms"] or 0.0) - (row["app_ms"] or 0.0) - (row["nonna_queue_ms"] or 0.0)) / 2
            started = row["sent_at"] + ((row["katyusha_queue_ms"] or 0.0) + trip
                                        + (row["nonna_queue_ms"] or 0.0)) / 1000.0
            speed *= schedule.factor_at(lb_quality.WARMUP_S + started + phase0)
        by_time[round(row["sent_at"], 6)] = row["target_ms"] / 1000.0 * speed
    rng = random.Random(f"{seed}:work")
    warm = lb_quality.WARMUP_S
    out = []
    for t in trace:
        got = by_time.get(round(t - warm, 6)) if t >= warm else None
        out.append(got if got is not None else rng.expovariate(1.0 / lb_quality.MEAN_SERVICE_S))
    return out


def slow_pods(scenario: lb_quality.Scenario) -> set[str]:
    """The pods slower than the rest: a lower speed, or a slow schedule."""
    return {pod.name for pod in scenario.pods if pod.speed < 1.0 or pod.slow_schedule}


def quantile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(share * len(ordered)))], 2)


def simulate(scenario: lb_quality.Scenario, policy: str, rate: float, duration: float, *, seed: int = 7,
             overhead: dict | None = None, trace: list[float] | None = None, work: list[float] | None = None,
             machine: dict | None = None) -> dict:
    """One simulated run: p50/p99/p99.9 of the measured requests, and where they waited and went.

    ``overhead``'s ``client`` (ms; default 0), when given, is added to every latency: the
    client's side, which holds no slot."""
    sim = Simulation(sim_scenario(scenario, policy, rate, duration, seed, overhead, trace, work, machine))
    warm = lb_quality.WARMUP_S
    slow = [(pod.name, parse_slow_schedule(pod.slow_schedule)) for pod in scenario.pods if pod.slow_schedule]
    if slow:
        phase0 = slow_phase(duration)

        def apply(s):
            for node_name, schedule in slow:
                for pod in s.pods.values():
                    if pod.node.name == node_name:
                        base = s.node_by_name[node_name].speed
                        pod.speed = base * schedule.factor_at(s.env.now + phase0)

        edges = set()
        for _, schedule in slow:
            t = 0.0
            while t < warm + duration + 30:
                for offset in (schedule.offset_s, schedule.offset_s + schedule.duration_s):
                    edge = (offset - phase0) % schedule.period_s + t
                    edges.add(round(edge, 9))
                t += schedule.period_s
        sim.at(0.0, apply)
        for edge in sorted(edges):
            sim.at(edge, apply)
    sim.run()
    summary = sim.summary()
    # With a machine section the hop changes every window: its mean stretch (the L2 wait approximate).
    hop = sim.scenario.hop_s * summary.get("machine", {}).get("stretch_mean", 1.0)
    rows = [row for row in sim.recorder.rows["requests"] if row[4] >= warm]
    done = [row for row in rows if row[11] is None]
    client = (overhead or {}).get("client", 0.0)
    latencies = [row[9] + client for row in done]
    slow_names = slow_pods(scenario)
    return {"p50_ms": quantile(latencies, 0.5), "p99_ms": quantile(latencies, 0.99),
            "p999_ms": quantile(latencies, 0.999), "requests": len(latencies), "drops": len(rows) - len(done),
            # Where the requests waited (katyusha's L1, nonna's L2) and how many the slow pods served.
            "l1_wait_ms": round(statistics.fmean((row[5] - row[4]) * 1000 for row in done), 3),
            "l2_wait_ms": round(statistics.fmean((row[6] - row[5] - hop) * 1000 for row in done), 3),
            "slow_share": round(sum(1 for row in done if row[3] in slow_names) / len(done), 4),
            **({"machine": summary["machine"]} if "machine" in summary else {})}


# -- the live side -----------------------------------------------------------------------------------

# One measured request: what the generator saw and what nonna and sim-backend told.
RECORD = ("sent_at", "latency_ms", "status", "pod", "lag_ms", "katyusha_queue_ms", "nonna_queue_ms", "app_ms",
          "service_ms", "target_ms", "upstream_ms", "wake_ms")


def _row(values: list) -> dict:
    """A :data:`RECORD` row as a dict (rows of older files, without the last fields, padded with None)."""
    return dict(zip(RECORD, list(values) + [None] * (len(RECORD) - len(values)), strict=True))


def record(sample: loadgen.Sample) -> list:
    """A loadgen sample (taken with ``detail``) as a :data:`RECORD` row."""
    timing = parse_server_timing(sample.timing)
    service = target = None
    if sample.body:
        try:
            body = json.loads(sample.body)
            service, target = body.get("service_ms"), body.get("target_ms")
        except (ValueError, AttributeError):
            pass
    return [round(sample.sent_at, 6), round(sample.latency_ms, 3), sample.status, sample.pod,
            round(sample.lag_ms, 3), timing.get("katyusha-queue"), timing.get("nonna-queue"), timing.get("app"),
            service, target, timing.get("katyusha-upstream"), timing.get("katyusha-wake")]


def live(scenario: lb_quality.Scenario, policies: list[str], rate: float, duration: float,
         repeats: int = 1, seed: int = 7, first_round: int = 0, save=None) -> dict:
    """Every policy ``repeats`` times on one fleet, in rounds (the order rotated each round, as
    lb_quality does; ``first_round``: rotated as that round, to split rounds over several
    invocations), each run with the same arrivals (``seed``); every request recorded.
    ``save(out)``, when given, is called after each run (a partial result survives a timeout)."""
    out: dict = {policy: [] for policy in policies}
    began = time.monotonic()
    with lb_quality.fleet(scenario) as pods:
        for round_ in range(first_round, first_round + repeats):
            shift = round_ % len(policies)
            for policy in policies[shift:] + policies[:shift]:
                samples: list = []
                # Nonna's headers kept: the pod of each request (the generator reads Nonna-Pod).
                with lb_quality.katyusha_replicas(pods, policy, scenario.replicas,
                                                  ("--keep-nonna-headers", "true")) as urls:
                    summary, _ = lb_quality.measure(urls, pods, rate, duration, 5.0, seed=seed, samples=samples)
                out[policy].append({**{k: summary[k] for k in ("p50_ms", "p99_ms", "p999_ms", "errors",
                                                               "send_lag_ms")},
                                    "per_pod": summary["per_pod"], "records": [record(x) for x in samples],
                                    # The machine's 1-minute load average as the run ended (others' jobs show).
                                    "loadavg": round(os.getloadavg()[0], 2)})
                print(f"  live {scenario.name:14s} {policy:16s} [{round_ + 1}/{first_round + repeats}] "
                      f"p50 {summary['p50_ms']:8.2f}  p99 {summary['p99_ms']:8.2f}  "
                      f"({time.monotonic() - began:.0f} s, load {os.getloadavg()[0]:.1f})", flush=True)
                if save is not None:
                    save(out)
    return out


def release_estimate(records: list[list], replicas: int = 1, min_wait_ms: float = 2.0,
                     window: int = 50) -> tuple[float | None, int]:
    """The time a pod's slot stays held after katyusha's timings end, per request (ms), and how many
    windows the estimate stands on.

    For one katyusha replica (the generator sends request ``i`` to replica ``i % replicas``) and
    one pod, a window of ``window`` + 1 consecutive dispatches whose requests all waited in L1 (at
    least ``min_wait_ms``) is a stretch in which the pod's slot was never free: each request was
    let in when the one before it on that pod ended. The time from the window's first dispatch to
    its last (on the generator's clock: the send time, its lag, the L1 wait and the wake) less
    what katyusha's timings cover (each request's upstream time but the last's, each wake but the
    first's), over ``window``, is the time per request between a response's head and the end of
    the request (katyusha's own work on the response: the slot is freed only then) that no timing
    shows. The median over the windows: a window's ends carry the client's hop to katyusha, which
    is not known and jumps while the generator opens connections (the first window of a run is
    often several ms a request over the rest). None when no window qualifies (a light load).
    """
    rows = [_row(r) for r in records]
    by_slot: dict = {}
    for index, r in enumerate(rows):
        if r["status"] != 200 or None in (r["katyusha_queue_ms"], r["upstream_ms"]) or not r["pod"]:
            continue
        dispatch = r["sent_at"] * 1000.0 + r["lag_ms"] + r["katyusha_queue_ms"] + (r["wake_ms"] or 0.0)
        by_slot.setdefault((index % replicas, r["pod"]), []).append((dispatch, r))
    return _uncovered(by_slot, "katyusha_queue_ms", min_wait_ms, window,
                      lambda chain: (sum(r["upstream_ms"] for _, r in chain[:-1])
                                     + sum(r["wake_ms"] or 0.0 for _, r in chain[1:])))


# Fewer windows than this (a light load) give no estimate: the few busy stretches of a light
# load gave estimates several times those of a saturated run, and spread widely.
MIN_WINDOWS = 20


def _uncovered(groups: dict, wait: str, min_wait_ms: float, window: int, covered) -> tuple[float | None, int]:
    """The median over windows of ``window`` + 1 consecutive (time, row) items of a group, each of
    whose ``wait`` is at least ``min_wait_ms``, of (last time - first time - ``covered(window)``)
    / ``window`` (None under :data:`MIN_WINDOWS` windows); and how many windows there were."""
    gaps = []
    for items in groups.values():
        items.sort(key=lambda x: x[0])
        chain: list = []
        for item in [*items, None]:
            if item is not None and item[1][wait] >= min_wait_ms:
                chain.append(item)
                if len(chain) == window + 1:
                    gaps.append((chain[-1][0] - chain[0][0] - covered(chain)) / window)
                    chain = [chain[-1]]
                continue
            chain = []
    return (round(statistics.median(gaps), 4) if len(gaps) >= MIN_WINDOWS else None), len(gaps)


def pod_release_estimate(records: list[list], min_wait_ms: float = 2.0, window: int = 50
                         ) -> tuple[float | None, int]:
    """As :func:`release_estimate`, on nonna's side: the time per request between the end of one
    request's app timing and the start of the next one's on the same pod, while requests wait
    in nonna's L2 queue (nonna writes the response, frees the slot, wakes the next request and
    sends it to the app: the pod's slot is busy and no timing shows it). A request's start is
    estimated on the generator's clock as its dispatch, half katyusha's round trip to nonna
    (which is not known each way) and its L2 wait. Windows of ``window`` + 1 consecutive starts
    on one pod (any replica's requests), every one of which waited at least ``min_wait_ms`` in
    L2; the median over windows; None when none qualifies (L2 never queues with one replica)."""
    rows = [_row(r) for r in records]
    by_pod: dict = {}
    for r in rows:
        if (r["status"] != 200 or None in (r["katyusha_queue_ms"], r["upstream_ms"], r["nonna_queue_ms"],
                                           r["app_ms"]) or not r["pod"]):
            continue
        dispatch = r["sent_at"] * 1000.0 + r["lag_ms"] + r["katyusha_queue_ms"] + (r["wake_ms"] or 0.0)
        trip = r["upstream_ms"] - r["nonna_queue_ms"] - r["app_ms"]
        by_pod.setdefault(r["pod"], []).append((dispatch + trip / 2 + r["nonna_queue_ms"], r))
    return _uncovered(by_pod, "nonna_queue_ms", min_wait_ms, window,
                      lambda chain: sum(r["app_ms"] for _, r in chain[:-1]))


def calibration(records: list[list], replicas: int = 1) -> dict | None:
    """The overheads of one live run, from its own requests (answered ones with every timing).

    ``hop``: half the mean of katyusha's upstream time (dispatch to the pod's head, which
    ``keep-nonna-headers`` adds to ``Server-Timing``) less nonna's L2 wait and the app time, plus
    its wake (admission to dispatch, also added): the round trip katyusha <-> nonna, each way, the
    pod's slot held. ``client``: the mean of the client's latency less katyusha's L1 wait, the wake
    and the upstream time: the generator's lag, its hops to katyusha and back, katyusha's own
    parsing and writing, which hold no slot. (katyusha's clock counts whole milliseconds under
    uvloop; the means over a run are not biased by it.) ``pod``: the mean
    of nonna's app time less the service time sim-backend drew (its event loop's lateness and
    nonna's hop to it: the slot is held for both). Means, not medians: at 90% load what matters is
    how long a slot is held in all. Without upstream times, ``hop`` is half of what is outside the
    queues and the app, and ``client`` 0 (as ``calibrate`` folds them).
    """
    rows = [_row(r) for r in records]
    rows = [r for r in rows if r["status"] == 200 and None not in (r["katyusha_queue_ms"], r["nonna_queue_ms"],
                                                                    r["app_ms"], r["target_ms"])]
    if not rows:
        return None
    mean, med = statistics.fmean, statistics.median
    outside = [r["latency_ms"] - r["katyusha_queue_ms"] - r["nonna_queue_ms"] - r["app_ms"] for r in rows]
    timed = all(r["upstream_ms"] is not None for r in rows)
    wake = [r["wake_ms"] or 0.0 for r in rows]
    if timed:
        trip = [r["upstream_ms"] - r["nonna_queue_ms"] - r["app_ms"] + w for r, w in zip(rows, wake, strict=True)]
        client = [r["latency_ms"] - r["katyusha_queue_ms"] - r["upstream_ms"] - w
                  for r, w in zip(rows, wake, strict=True)]
    else:
        trip, client = outside, [0.0]
    pod = [r["app_ms"] - r["target_ms"] for r in rows]
    release, release_windows = release_estimate(records, replicas) if timed else (None, 0)
    pod_release, pod_release_windows = pod_release_estimate(records) if timed else (None, 0)
    return {"requests": len(rows), "hop": round(mean(trip) / 2, 4), "pod": round(mean(pod), 4),
            "client": round(mean(client), 4),
            # Only the run-release mode holds slots for it (release_estimate; none found: 0).
            "release": max(0.0, release or 0.0), "release_windows": release_windows,
            "pod-release": max(0.0, pod_release or 0.0), "pod_release_windows": pod_release_windows,
            "hop_median": round(med(trip) / 2, 4), "pod_median": round(med(pod), 4),
            "client_median": round(med(client), 4), "wake_ms": round(mean(wake), 4),
            "wake_queued_ms": round(mean([w for r, w in zip(rows, wake, strict=True) if r["katyusha_queue_ms"] > 0]
                                         or [0.0]), 4),
            "outside_ms": round(mean(outside), 4), "outside_p99_ms": quantile(outside, 0.99),
            "lateness_ms": round(mean(r["service_ms"] - r["target_ms"] for r in rows), 4),
            "nonna_to_app_ms": round(mean(r["app_ms"] - r["service_ms"] for r in rows), 4),
            "lag_ms": round(mean(r["lag_ms"] for r in rows), 4),
            "l1_wait_ms": round(mean(r["katyusha_queue_ms"] for r in rows), 3),
            "l2_wait_ms": round(mean(r["nonna_queue_ms"] for r in rows), 3)}


def live_figures(runs: list[dict], slow: set[str]) -> dict:
    """The median over a policy's live runs of p50, p99 (and the spread: (max - min) / median), and
    where its requests waited and went."""
    out: dict = {"runs": len(runs)}
    for key in ("p50_ms", "p99_ms", "p999_ms"):
        values = [run[key] for run in runs]
        middle = statistics.median(values)
        out[key] = round(middle, 2)
        out[key.replace("_ms", "_runs")] = values
        out[key.replace("_ms", "_spread")] = round((max(values) - min(values)) / middle, 3) if middle else None
    rows = [_row(r) for run in runs for r in run["records"] if r[2] == 200]
    if rows and rows[0]["pod"]:
        out["slow_share"] = round(sum(1 for r in rows if r["pod"] in slow) / len(rows), 4)
    for key, field in (("l1_wait_ms", "katyusha_queue_ms"), ("l2_wait_ms", "nonna_queue_ms")):
        values = [r[field] for r in rows if r[field] is not None]
        if values:
            out[key] = round(statistics.fmean(values), 3)
    return out


def utilisation(scenario: lb_quality.Scenario, rate: float, hop_ms: float, pod_ms: float,
                release_ms: float = 0.0) -> float:
    """``rate`` over the fleet's capacity when each request holds its pod's slot for its mean service
    time plus ``pod_ms``, a round trip of ``2 x hop_ms`` and ``release_ms`` (slow windows not counted)."""
    capacity = sum(1000.0 / (lb_quality.MEAN_SERVICE_S * 1000.0 / pod.speed + 2 * hop_ms + pod_ms + release_ms)
                   for pod in scenario.pods)
    return round(rate / capacity, 4)


def live_intervals(lives: dict, policies: list[str], q: float = 0.99) -> dict:
    """Each policy's 95% bootstrap interval of its live runs' pooled ``q`` quantile (lb_quality's:
    runs resampled, then the requests within each; a failed request counts at its latency)."""
    return {p: list(lb_quality.bootstrap([[r[1] for r in run["records"]] for run in lives[p]], q))
            for p in policies}


def ranking_agrees(simulated: dict, intervals: dict) -> list[list[str]]:
    """The pairs the simulation orders against live, by the tie rule: two policies whose live p99
    intervals overlap are a tie (either order agrees); a pair whose intervals do not overlap is
    ordered, and the simulation disagrees when its p99s put that pair the other way round
    (equal simulated p99s do not disagree). Empty: the rankings agree. ``simulated``: policy -> p99."""
    return [[a, b] for a in intervals for b in intervals
            if intervals[a][1] < intervals[b][0] and simulated[a] > simulated[b]]


def ordered_pairs(intervals: dict) -> list[list[str]]:
    """The pairs live orders (intervals apart), the better policy first."""
    return [[a, b] for a in intervals for b in intervals if intervals[a][1] < intervals[b][0]]


def rel(a: float, b: float) -> float:
    return round((a - b) / b, 3)


def compare(scenario: lb_quality.Scenario, policies: list[str], rate: float, duration: float, lives: dict,
            seed: int = 7, sim_seeds: int = 5, releases: dict | None = None,
            machine: list[dict] | None = None) -> dict:
    """Every simulated mode against the live runs of one scenario.

    ``idle``: the default overheads (measured idle), the simulator's own arrivals (seed 7; and
    ``sim_seeds`` seeds for the simulation's own spread); ``machine`` (with ``machine``, a
    --calibrate-machine result): as ``idle``, with that machine's section and idle overheads
    (:func:`machine_model`; also ``sim_seeds`` seeds), and ``machine-trace``, the same with the
    arrivals the generator was given (:func:`arrival_times`); ``idle-trace``: the same overheads, the live
    run's arrivals; ``run-trace``: each live run's own overheads (:func:`calibration`) and arrivals,
    the median over the runs.
    """
    slow = slow_pods(scenario)
    live_fig = {p: live_figures(lives[p], slow) for p in policies}
    trace = arrival_times(rate, duration, seed)
    host = machine_model(machine, scenario.name) if machine else None
    modes: dict = {"idle": {}, "machine": {}, "machine-trace": {}, "idle-trace": {}, "run-trace": {}, "run-replay": {},
                   "run-release": {}}
    spread: dict = {}
    calib: dict = {}
    for policy in policies:
        modes["idle"][policy] = simulate(scenario, policy, rate, duration)
        seeds = [simulate(scenario, policy, rate, duration, seed=7 + k) for k in range(sim_seeds)]
        spread[policy] = {q: [r[f"{q}_ms"] for r in seeds] for q in ("p50", "p99")}
        if host is not None:
            own = [simulate(scenario, policy, rate, duration, seed=7 + k, overhead=host["overhead"],
                            machine=host["machine"]) for k in range(sim_seeds)]
            modes["machine"][policy] = own[0]
            spread[policy].update({f"machine_{q}": [r[f"{q}_ms"] for r in own] for q in ("p50", "p99")})
            modes["machine-trace"][policy] = simulate(scenario, policy, rate, duration, trace=trace,
                                                      overhead=host["overhead"], machine=host["machine"])
        modes["idle-trace"][policy] = simulate(scenario, policy, rate, duration, trace=trace)
        calib[policy] = [calibration(run["records"], scenario.replicas) for run in lives[policy]]
        runs = [(run, c) for run, c in zip(lives[policy], calib[policy], strict=True) if c]
        for mode, replay, release in (("run-trace", False, False), ("run-replay", True, False),
                                      ("run-release", True, True)):
            per_run = [simulate(scenario, policy, rate, duration, trace=trace,
                                overhead=({**c, **(releases or {})} if release
                                          else {**c, "release": 0.0, "pod-release": 0.0}),
                                work=live_work(scenario, run["records"], trace, duration) if replay else None)
                       for run, c in runs]
            if per_run:
                modes[mode][policy] = {**{k: round(statistics.median(r[k] for r in per_run), 2)
                                          for k in ("p50_ms", "p99_ms", "p999_ms")},
                                       **{k: round(statistics.fmean(r[k] for r in per_run), 4)
                                          for k in ("l1_wait_ms", "l2_wait_ms", "slow_share")},
                                       "p50_runs": [r["p50_ms"] for r in per_run],
                                       "p99_runs": [r["p99_ms"] for r in per_run],
                                       # Each live run against its own simulation (its overheads, arrivals).
                                       "p50_paired_err": [rel(r["p50_ms"], run["p50_ms"])
                                                          for r, (run, _) in zip(per_run, runs, strict=True)],
                                       "p99_paired_err": [rel(r["p99_ms"], run["p99_ms"])
                                                          for r, (run, _) in zip(per_run, runs, strict=True)]}
    intervals = live_intervals(lives, policies)
    for p in policies:
        live_fig[p]["p99_ci95"] = intervals[p]
    errors: dict = {}
    for mode, sims in modes.items():
        if len(sims) < len(policies):
            continue
        conflicts = ranking_agrees({p: sims[p]["p99_ms"] for p in policies}, intervals)
        errors[mode] = {
            "p50_rel_err": {p: rel(sims[p]["p50_ms"], live_fig[p]["p50_ms"]) for p in policies},
            "p99_rel_err": {p: rel(sims[p]["p99_ms"], live_fig[p]["p99_ms"]) for p in policies},
            "same_ranking": ranking(sims) == ranking(live_fig),
            "ranking": ranking(sims),
            # By the tie rule (ranking_agrees): live ties by overlapping p99 intervals.
            "same_ranking_ci": not conflicts,
            "ranking_conflicts": conflicts,
        }
        within = (all(abs(e) <= 0.15 for e in errors[mode]["p50_rel_err"].values())
                  and all(abs(e) <= 0.25 for e in errors[mode]["p99_rel_err"].values()))
        errors[mode]["goal_met"] = within and errors[mode]["same_ranking"]
        errors[mode]["goal_met_ci"] = within and not conflicts
    defaults = sim_scenario(scenario, policies[0], rate, duration)
    cals = [c for runs in calib.values() for c in runs if c]
    load = {"nominal": round(rate / scenario.capacity_rps, 4),
            "idle_overheads": utilisation(scenario, rate, defaults.hop_s * 1000, defaults.pod_overhead_s * 1000)}
    if cals:
        load["run_overheads"] = utilisation(scenario, rate, statistics.median(c["hop"] for c in cals),
                                            statistics.median(c["pod"] for c in cals))
        load["run_overheads_release"] = utilisation(scenario, rate, statistics.median(c["hop"] for c in cals),
                                                    statistics.median(c["pod"] for c in cals),
                                                    statistics.median(c["release"] for c in cals))
    rounds = min(len(lives[p]) for p in policies)
    round_rankings = [ranking({p: lives[p][i] for p in policies}) for i in range(rounds)]
    return {"live": live_fig, "live_ranking": ranking(live_fig), "live_round_rankings": round_rankings,
            "live_p99_ci95": intervals, "live_ordered_pairs": ordered_pairs(intervals),
            "sim": modes, "errors": errors,
            "sim_spread": spread, "calibration": calib, "utilisation": load, "machine_model": host}


def coldstart_scenario(plan: coldstart_bench.Plan, seed: int = 7):
    """benchmarks.coldstart's fleet as a scenario: each pod slot its own node (its own disk: it pulls), all null."""
    return parse({
        "seed": seed,
        "duration": plan.idle_s + plan.step_s,
        "drain": 30,
        "nodes": [{"name": "slot", "count": plan.pods, "max-pods": 1, "registry-mbps": plan.pull_mbps}],
        "services": [{"name": "bench", "image-size-mb": plan.image_mb, "start-time": f"{plan.start_s:g}s",
                      "container-concurrency": 4, "queue-depth": 500, "timeout": "30s",
                      "service-time": "exp:20ms",
                      "workload": {"kind": "step", "steps": [{"at": 0, "rate": 0},
                                                             {"at": plan.idle_s, "rate": plan.rate}]}}],
        "katyusha": {"settings": {"request-timeout": 30}},
        "autoscaler": {"retire-to": "null", "stable-window": f"{plan.stable_window_s}s",
                       "scale-to-zero-grace-period": f"{plan.grace_s:g}s", "tick-interval": f"{plan.tick_s:g}s",
                       "initial-scale": 0, "allow-zero-initial-scale": True,
                       "container-concurrency-target-default": 10, "max-scale": plan.pods},
    })


def simulate_coldstart(plan: coldstart_bench.Plan) -> dict:
    sim = Simulation(coldstart_scenario(plan))
    summary = sim.run()["services"]["bench"]
    done = [row[8] for row in sim.recorder.rows["requests"] if row[11] is None]
    return {"cold_starts": summary["cold_starts"], "requests": summary["requests"], "errors": summary["drops"],
            "first_response_s": round(min(done) - plan.idle_s, 3) if done else None,
            "p50_ms": summary["p50_ms"], "p99_ms": summary["p99_ms"]}


async def _live_coldstart(plan: coldstart_bench.Plan) -> dict:
    with tempfile.TemporaryDirectory(prefix="sim-vs-live-coldstart-") as tmp:
        fleet_file = Path(tmp) / "fleet.yaml"
        fleet_file.write_text(coldstart_bench.fleet_yaml(plan))
        fleet = coldstart_bench.FleetProcess(fleet_file, Path(tmp) / "state.json")
        doc = None
        try:
            doc = fleet.wait_ready()
            figures, _, _ = await coldstart_bench.katyusha_run(plan, doc)
        finally:
            fleet.stop(doc)
    return {"cold_starts": figures["cold_starts"]["total"], "requests": figures["sent"],
            "errors": figures["errors"], "first_response_s": figures["first_response_s"],
            "p50_ms": figures["p50_ms"], "p99_ms": figures["p99_ms"]}


def compare_coldstart(quick: bool) -> dict:
    """benchmarks.coldstart's step on a fleet at zero, live and simulated: cold starts and first response."""
    plan = coldstart_bench.QUICK if quick else coldstart_bench.FULL
    sim = simulate_coldstart(plan)
    live_figures = asyncio.run(_live_coldstart(plan))
    first_err = None
    if sim["first_response_s"] is not None and live_figures["first_response_s"]:
        first_err = round((sim["first_response_s"] - live_figures["first_response_s"])
                          / live_figures["first_response_s"], 3)
    return {"plan": "quick" if quick else "full", "sim": sim, "live": live_figures,
            "same_cold_starts": sim["cold_starts"] == live_figures["cold_starts"],
            "first_response_rel_err": first_err,
            "first_response_within_15pct": first_err is not None and abs(first_err) <= 0.15}


def _sequential(url: str, count: int) -> list[dict]:
    """``count`` requests one after another on one keep-alive connection: client latency, app and service time."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    out = []
    try:
        for _ in range(count):
            started = time.perf_counter()
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read()
            latency = time.perf_counter() - started
            timing = parse_server_timing(response.getheader("server-timing") or "")
            out.append({"latency_ms": latency * 1000.0, "app_ms": timing.get("app"),
                        "service_ms": json.loads(body)["service_ms"]})
    finally:
        conn.close()
    return out


def calibrate(count: int = 400) -> dict:
    """The live overheads on this machine, one pod at a time (no queueing), for the scenario's ``overhead``.

    One sim-backend + nonna pod (concurrency 1, exp 20 ms) behind one katyusha;
    ``count`` sequential requests through katyusha, then as many straight to
    nonna. ``pod``: the median of nonna's app time (its ``Server-Timing``)
    less the app's own service time (its body): the HTTP hop from nonna to the
    app, which holds the pod's slot. ``hop``: half the median of the client's
    latency less the app time: the client, katyusha and nonna's share, each
    way (the simulator adds it to katyusha -> pod and pod -> katyusha).
    """
    scenario = lb_quality.Scenario("calibrate", [lb_quality.PodSpec("pod-0", 1.0)])
    with lb_quality.fleet(scenario) as pods, lb_quality.katyusha_replicas(pods, "round-robin", 1) as urls:
        _sequential(urls[0], 50)  # warm up both processes
        through = _sequential(urls[0], count)
        direct = _sequential(pods[0].nonna.url, count)
    med = statistics.median
    pod = med(r["app_ms"] - r["service_ms"] for r in through)
    hop = med(r["latency_ms"] - r["app_ms"] for r in through) / 2
    return {
        "requests": count,
        "hop_ms": round(hop, 3),
        "pod_ms": round(pod, 3),
        "through_katyusha_minus_app_ms": round(med(r["latency_ms"] - r["app_ms"] for r in through), 3),
        "straight_to_nonna_minus_app_ms": round(med(r["latency_ms"] - r["app_ms"] for r in direct), 3),
        "p99_through_katyusha_minus_app_ms": round(
            sorted(r["latency_ms"] - r["app_ms"] for r in through)[int(0.99 * count)], 3),
    }


def _cpu_jiffies() -> tuple[int, int]:
    """The whole machine's (busy, all) CPU time from /proc/stat, in clock ticks."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields[:8]) - idle, sum(fields[:8])


MACHINE_LOADS = (0.0, 0.25, 0.5, 0.7, 0.85, 0.95)


def calibrate_machine(scenario: lb_quality.Scenario, loads: tuple[float, ...] = MACHINE_LOADS,
                      duration: float = 5.0, seed: int = 7, burners: int = 0) -> dict:
    """How busy the machine's cores are, and how long the overheads take, as the load grows: the
    data for a scenario's ``machine`` section (docs/simulator.md, "Overheads").

    ``scenario``'s fleet behind its katyusha replicas (round-robin, nonna's headers kept); at
    each share of its capacity in ``loads``, ``duration`` seconds of its open-loop arrivals
    after lb_quality's warm-up, the whole machine's busy cores read from /proc/stat over the
    measured seconds (the fleet's processes, the generator and anything else running), and the
    run's overheads by :func:`calibration`. Load 0: the fleet up and idle, no requests.
    ``burners``: that many processes spinning on a core each meanwhile (other work on the
    machine: what the model's ``background`` stands for), to see the overheads stretch.
    """
    cores = os.cpu_count() or 1
    print(f"== {scenario.name}: {len(scenario.pods)} pods, {scenario.replicas} replica(s), {burners} burner(s)",
          flush=True)
    spinning = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(burners)]
    try:
        with lb_quality.fleet(scenario) as pods, lb_quality.katyusha_replicas(
                pods, "round-robin", scenario.replicas, ("--keep-nonna-headers", "true")) as urls:
            points = [_calibrate_load(pods, urls, scenario, load, duration, seed, cores) for load in loads]
    finally:
        for proc in spinning:
            proc.kill()
            proc.wait()
    return {"scenario": scenario.name, "cores": cores, "duration_s": duration, "burners": burners, "points": points}


def _calibrate_load(pods, urls, scenario, load, duration, seed, cores) -> dict:
    """:func:`calibrate_machine`'s point at one load: the busy cores and the run's overheads."""
    rate = scenario.capacity_rps * load
    lb_quality.wait_drained(pods)
    if rate:
        asyncio.run(loadgen.run_open_loop(urls, rate=min(rate, WARMUP_RATE), duration_s=lb_quality.WARMUP_S,
                                          seed=lb_quality.WARMUP_SEED))
    samples: list = []
    busy0, all0 = _cpu_jiffies()
    began = time.monotonic()
    if rate:
        result = asyncio.run(loadgen.run_open_loop(urls, rate=rate, duration_s=duration, timeout_s=5.0,
                                                   seed=seed, detail=True))
        samples = result.samples
    else:
        time.sleep(duration)
    busy1, all1 = _cpu_jiffies()
    wall = time.monotonic() - began
    point = {"load": load, "rate": round(rate, 2), "seconds": round(wall, 3),
             "busy_cores": round(cores * (busy1 - busy0) / max(1, all1 - all0), 4),
             "loadavg": round(os.getloadavg()[0], 2)}
    cal = calibration([record(x) for x in samples], scenario.replicas) if samples else None
    if cal:
        point.update({key: cal[key] for key in ("hop", "pod", "client", "lag_ms", "hop_median",
                                                "pod_median", "client_median", "l1_wait_ms")})
        point["slot_ms"] = round(2 * cal["hop"] + cal["pod"], 4)
        point["outside_ms"] = round(2 * cal["hop"] + cal["pod"] + cal["client"], 4)
    print(f"  load {load:.2f} ({rate:6.1f} req/s): {point['busy_cores']:.3f} cores busy"
          + (f", slot {point['slot_ms']:.3f} ms, outside the app {point['outside_ms']:.3f} ms"
             if cal else ""), flush=True)
    return point


def ranking(figures: dict) -> list[str]:
    return sorted(figures, key=lambda policy: (figures[policy]["p99_ms"], policy))


def _pct(value: float | None) -> str:
    return "" if value is None else f"{value:+.0%}"


def print_scenario(name: str, result: dict, policies: list[str]) -> None:
    live_fig, modes, errors = result["live"], result["sim"], result["errors"]
    shown = [m for m in ("idle", "machine", "machine-trace", "idle-trace", "run-trace", "run-replay", "run-release")
             if m in errors]
    print(f"\n{name}: live = median of runs (spread = (max - min) / median); errors against it, per mode "
          f"({', '.join(shown)})")
    print(f"{'policy':16s} {'p50 live':>9s} {'spread':>6s} " + " ".join(f"{m:>10s}" for m in shown)
          + f" {'p99 live':>9s} {'spread':>6s} " + " ".join(f"{m:>10s}" for m in shown))
    for p in policies:
        lv = live_fig[p]
        print(f"{p:16s} {lv['p50_ms']:9.1f} {lv['p50_spread']:6.0%} "
              + " ".join(f"{_pct(errors[m]['p50_rel_err'][p]):>10s}" for m in shown)
              + f" {lv['p99_ms']:9.1f} {lv['p99_spread']:6.0%} "
              + " ".join(f"{_pct(errors[m]['p99_rel_err'][p]):>10s}" for m in shown))
    for mode in ("run-trace", "run-replay", "run-release"):
        paired = modes.get(mode, {})
        if paired:
            print(f"{mode} paired with each live run (sim of the run's own overheads vs that run), p50 / p99 errors:")
            for p in policies:
                if p in paired:
                    print(f"  {p:16s} p50 {' '.join(f'{e:+.0%}' for e in paired[p]['p50_paired_err']):24s} "
                          f"p99 {' '.join(f'{e:+.0%}' for e in paired[p]['p99_paired_err'])}   "
                          f"(live p50 {live_fig[p]['p50_runs']}, sim {paired[p]['p50_runs']})")
            flat50 = [abs(e) for p in paired for e in paired[p]["p50_paired_err"]]
            flat99 = [abs(e) for p in paired for e in paired[p]["p99_paired_err"]]
            print(f"  median |error|: p50 {statistics.median(flat50):.0%}, p99 {statistics.median(flat99):.0%}; "
                  f"within 15% / 25%: {sum(e <= 0.15 for e in flat50)}/{len(flat50)} p50, "
                  f"{sum(e <= 0.25 for e in flat99)}/{len(flat99)} p99")
    print(f"live ranking by p99: {result['live_ranking']}")
    for index, order in enumerate(result["live_round_rankings"]):
        print(f"  live round {index + 1} alone: {order}")
    print(f"load on the slots' capacity (service + overheads): {result['utilisation']}")
    print("live p99 95% intervals (pooled runs, bootstrap): "
          + ", ".join(f"{p} {lo:.0f}-{hi:.0f}" for p, (lo, hi) in result["live_p99_ci95"].items()))
    print(f"live orders {len(result['live_ordered_pairs'])} pairs (intervals apart): "
          + ", ".join(f"{a} < {b}" for a, b in result["live_ordered_pairs"]))
    for m in shown:
        print(f"  {m:10s} ranking: {errors[m]['ranking']}  same: {errors[m]['same_ranking']}  "
              f"same with ties: {errors[m]['same_ranking_ci']} {errors[m]['ranking_conflicts'] or ''}  "
              f"goal met: {errors[m]['goal_met']} (with ties: {errors[m]['goal_met_ci']})")
    print(f"{'policy':16s} {'L1 live':>8s} {'L1 sim':>8s} {'L2 live':>8s} {'L2 sim':>8s} {'slow live':>9s} "
          f"{'slow sim':>9s} {'hop':>6s} {'pod':>6s} {'client':>6s} {'late':>6s} {'lag':>6s} {'release':>7s}"
          f" {'pod-rel':>7s}"
          f"   (ms means; sim: run-release)")
    for p in policies:
        lv, sm = live_fig[p], modes["run-release"].get(p) or modes["idle"][p]
        cal = [c for c in result["calibration"][p] if c]

        def med(key, cal=cal):
            return statistics.median(c[key] for c in cal) if cal else float("nan")
        print(f"{p:16s} {lv.get('l1_wait_ms', float('nan')):8.2f} {sm['l1_wait_ms']:8.2f} "
              f"{lv.get('l2_wait_ms', float('nan')):8.2f} {sm['l2_wait_ms']:8.2f} "
              f"{lv.get('slow_share', float('nan')):9.3f} {sm['slow_share']:9.3f} {med('hop'):6.2f} {med('pod'):6.2f} "
              f"{med('client'):6.2f} {med('lateness_ms'):6.2f} {med('lag_ms'):6.2f} {med('release'):7.3f} "
              f"{med('pod-release'):7.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_vs_live", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="5 s runs (default 20 s, as lb_quality)")
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--load", type=float, default=0.9, help="share of capacity (default 0.9)")
    parser.add_argument("--policy", action="append", help="policies (default: lb_quality's)")
    parser.add_argument("--scenario", action="append",
                        help=f"lb_quality scenarios to compare (default: {', '.join(SCENARIOS)})")
    parser.add_argument("--repeats", type=int, default=1,
                        help="live runs per policy, in rounds, each with the same arrivals (default 1)")
    parser.add_argument("--first-round", type=int, default=0,
                        help="rotate the policies' order as from this round (to split rounds over runs)")
    parser.add_argument("--raw", metavar="PATH", help="write every live request here (after each scenario)")
    parser.add_argument("--from-raw", metavar="PATH", nargs="+",
                        help="compare against the live runs of earlier --raw files (no processes started)")
    parser.add_argument("--sim-only", action="store_true", help="simulate only (no processes)")
    parser.add_argument("--live-only", action="store_true",
                        help="with --raw: the live runs only (compare later with --from-raw, outside the lock)")
    parser.add_argument("--no-coldstart", action="store_true", help="skip the cold-start comparison")
    parser.add_argument("--calibrate", action="store_true",
                        help="measure the live overheads (the scenario's overhead.hop and overhead.pod) and stop")
    parser.add_argument("--calibrate-machine", action="store_true",
                        help="measure the busy cores and the overheads at several loads (a scenario's "
                             "machine section) on each --scenario (default heterogeneous) and stop")
    parser.add_argument("--burners", type=int, default=0,
                        help="--calibrate-machine: that many processes spinning on a core each meanwhile")
    parser.add_argument("--machine", metavar="PATH", default=str(MACHINE_CALIBRATION),
                        help="the machine mode's --calibrate-machine result (default: %(default)s)")
    parser.add_argument("--release", type=float, metavar="MS",
                        help="run-release: katyusha's release for every run (default: each run's estimate)")
    parser.add_argument("--pod-release", type=float, metavar="MS",
                        help="run-release: nonna's release for every run (default: each run's estimate)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.calibrate or args.calibrate_machine:
        lb_quality.exit_on_signals()
        if args.calibrate:
            figures = calibrate()
        else:
            wanted = args.scenario or ["heterogeneous"]
            figures = [calibrate_machine(scenario, duration=args.duration or 5.0, burners=args.burners)
                       for scenario in lb_quality.scenarios() if scenario.name in wanted]
        print(json.dumps(figures, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
        return 0
    duration = args.duration or (5.0 if args.quick else 20.0)
    releases = {key: value for key, value in (("release", args.release), ("pod-release", args.pod_release))
                if value is not None}
    load = args.load
    saved: dict = {}
    if args.from_raw:
        for path in args.from_raw:
            doc = json.loads(Path(path).read_text())
            duration, load = doc["duration_s"], doc["load"]
            for name, by_policy in doc["scenarios"].items():
                for policy, runs in by_policy.items():
                    saved.setdefault(name, {}).setdefault(policy, []).extend(runs)
    policies = args.policy or list(lb_quality.KATYUSHA_POLICIES)
    if saved:
        policies = [p for p in policies if all(p in by_policy for by_policy in saved.values())]
    report: dict = {"duration_s": duration, "load": load, "repeats": args.repeats, "releases": releases or "per run", "sim": {}, "live": {},
                    "p50_rel_err": {}, "p99_rel_err": {}, "same_ranking": {}, "modes": {}, "sim_modes": {},
                    "sim_spread": {}, "calibration": {}, "coldstart": None}
    raw: dict = {"duration_s": duration, "load": load, "scenarios": {}}
    live_side = not args.sim_only and not args.from_raw
    host = json.loads(Path(args.machine).read_text()) if args.machine and Path(args.machine).exists() else None
    if live_side:
        lb_quality.exit_on_signals()
    for scenario in lb_quality.scenarios():
        if scenario.name not in (args.scenario or SCENARIOS) or (saved and scenario.name not in saved):
            continue
        rate = scenario.capacity_rps * load
        print(f"== {scenario.name}: {len(scenario.pods)} pods, {scenario.replicas} replica(s), "
              f"{rate:.0f} req/s for {duration:g} s", flush=True)
        if args.sim_only:
            sims = report["sim"][scenario.name] = {}
            for policy in policies:
                sims[policy] = simulate(scenario, policy, rate, duration)
                print(f"  sim  {scenario.name:14s} {policy:16s} p50 {sims[policy]['p50_ms']:8.2f}  "
                      f"p99 {sims[policy]['p99_ms']:8.2f}", flush=True)
            continue
        if saved:
            lives = saved[scenario.name]
        else:
            def save(lives, name=scenario.name):
                raw["scenarios"][name] = lives
                if args.raw:
                    Path(args.raw).write_text(json.dumps(raw) + "\n")

            lives = live(scenario, policies, rate, duration, args.repeats, first_round=args.first_round,
                         save=save)
            save(lives)
            if args.live_only:
                continue
        result = compare(scenario, policies, rate, duration, lives, releases=releases, machine=host)
        report["live"][scenario.name] = result["live"]
        report["sim"][scenario.name] = result["sim"]["idle"]
        report["sim_modes"][scenario.name] = result["sim"]
        report["modes"][scenario.name] = result["errors"]
        report["sim_spread"][scenario.name] = result["sim_spread"]
        report["calibration"][scenario.name] = result["calibration"]
        report.setdefault("utilisation", {})[scenario.name] = result["utilisation"]
        report.setdefault("machine_model", {})[scenario.name] = result["machine_model"]
        report.setdefault("live_round_rankings", {})[scenario.name] = result["live_round_rankings"]
        report.setdefault("live_p99_ci95", {})[scenario.name] = result["live_p99_ci95"]
        report.setdefault("live_ordered_pairs", {})[scenario.name] = result["live_ordered_pairs"]
        for key in ("p50_rel_err", "p99_rel_err", "same_ranking", "same_ranking_ci"):
            report.setdefault(key, {})[scenario.name] = result["errors"]["idle"][key]
        print_scenario(scenario.name, result, policies)
    if not args.no_coldstart and not args.from_raw and not args.live_only:
        if args.sim_only:
            plan = coldstart_bench.QUICK if args.quick else coldstart_bench.FULL
            report["coldstart"] = {"sim": simulate_coldstart(plan)}
        else:
            report["coldstart"] = compare_coldstart(args.quick)
        cold = report["coldstart"]
        print(f"coldstart ({'quick' if args.quick else 'full'} plan): sim {cold['sim']}")
        if "live" in cold:
            print(f"coldstart: live {cold['live']}\n  same number of cold starts: {cold['same_cold_starts']}, "
                  f"first response rel err {cold['first_response_rel_err']}")
    from benchmarks import plots

    plots.save("sim_vs_live", report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
