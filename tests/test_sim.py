"""The simulator: the core's objects on simulated time, judged against queueing theory and the live driver."""

from __future__ import annotations

import ast
import asyncio
import math
import pathlib
import random

import pytest

from katyusha.core.errors import ConfigError, IllegalTransition
from katyusha.sim import Simulation, parse, run_scenario
from katyusha.sim.scenario import HOP_S, POD_OVERHEAD_S

SIM = pathlib.Path(__file__).resolve().parent.parent / "katyusha" / "sim"


def scenario(services, *, nodes=None, seed=1, duration=60, **top):
    document = {"seed": seed, "duration": duration,
                "nodes": nodes or [{"name": "n", "cpu": 64, "ram-mb": 65536, "max-pods": 200}],
                "services": services, **top}
    return parse(document)


def fixed(name="q", pods=1, rate=50.0, service_time="exp:10ms", concurrency=1, requests=None, **extra):
    workload = {"kind": "poisson", "rate": rate}
    if requests is not None:
        workload["requests"] = requests
    return {"name": name, "pods": pods, "autoscale": False, "container-concurrency": concurrency,
            "service-time": service_time, "workload": workload, **extra}


# -- the same objects as live ---------------------------------------------------------------------


def test_the_simulator_decides_with_the_core_objects():
    from katyusha.core.lifecycle import Lifecycle
    from katyusha.core.placement import FlowScheduler
    from katyusha.core.scaling import ScaleController
    from katyusha.core.service import ServiceBalancer
    from katyusha.core.sidecar import Sidecar

    sim = Simulation(scenario([fixed(pods=2, rate=20, requests=20), {"name": "auto", "workload": {"rate": 5}}]))
    sim.run()
    front = sim.services["q"].fronts[0]
    assert type(front.balancer) is ServiceBalancer
    assert type(front.balancer.policy).__module__.startswith("katyusha.core.policies")
    pod = next(iter(sim.pods.values()))
    assert type(pod.sidecar) is Sidecar and type(pod.lifecycle) is Lifecycle
    assert type(sim.controller) is ScaleController
    assert type(sim.scheduler) is FlowScheduler


def test_the_simulator_writes_no_deciding_logic_of_its_own():
    # No class of katyusha/sim derives from or re-implements a core decider: every
    # queue, policy, autoscaler and scheduler it uses is imported from katyusha.core.
    forbidden = {"L1Queue", "LoadTable", "Policy", "Autoscaler", "ScaleController", "FlowScheduler",
                 "PodMachine", "Lifecycle", "Sidecar", "ServiceBalancer", "PodCapacity", "PodAtATimeScheduler"}
    imported = set()
    for path in SIM.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                assert node.name not in forbidden, f"{path.name} defines {node.name}"
                for base in node.bases:
                    assert getattr(base, "id", None) not in forbidden, f"{path.name}: {node.name} subclasses a decider"
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("katyusha.core"):
                imported |= {alias.name for alias in node.names}
    assert {"ServiceBalancer", "Sidecar", "Lifecycle", "ScaleController", "FlowScheduler", "PodAtATimeScheduler",
            "PodMove", "SlotPhases", "choose_retirements", "map_to_slots"} <= imported


# -- queueing theory as the oracle ------------------------------------------------------------------


def erlang_c_wait(c: int, arrival: float, service: float) -> float:
    """Mean wait in queue of M/M/c (Erlang C)."""
    a = arrival / service
    rho = a / c
    top = a**c / math.factorial(c) / (1 - rho)
    p_wait = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return p_wait / (c * service - arrival)


@pytest.mark.parametrize(("c", "rate", "requests"), [(1, 50.0, 100_000), (2, 120.0, 100_000)])
def test_mmc_mean_wait_matches_erlang_c(c, rate, requests):
    # Exponential service of mean 10 ms on c pods of container concurrency 1; katyusha's per-pod
    # capacity, with no extra slot, holds the L1 limit at c, so requests wait in L1 first-in
    # first-out: an M/M/c queue (with the live overheads off: they add a constant to each service
    # and idle time between two). The default extra slot would queue one more at each pod.
    sim = Simulation(scenario([fixed(pods=c, rate=rate, requests=requests)], seed=7, duration=100_000,
                              overhead={"hop": 0, "pod": 0},
                              katyusha={"settings": {"pod-capacity-extra": 0}}))
    summary = sim.run()
    assert summary["services"]["q"]["drops"] == 0
    rows = sim.recorder.rows["requests"]
    warm_up = len(rows) // 20
    waits = [row[6] - row[4] for row in rows[warm_up:]]  # t3 - t1
    expected = erlang_c_wait(c, rate, 100.0)
    assert sum(waits) / len(waits) == pytest.approx(expected, rel=0.05)


# -- cold starts, scale from zero -----------------------------------------------------------------------


def autoscaled(**kpa):
    return {"enabled": True, "initial-scale": 0, "allow-zero-initial-scale": True, "stable-window": "10s", **kpa}


def first_response(images):
    nodes = [{"name": "n", "cpu": 8, "ram-mb": 16384, "registry-mbps": 50, "images": images}]
    svc = {"name": "f", "image": "f:1", "image-size-mb": 300, "start-time": "2s", "service-time": "const:10ms",
           "workload": {"kind": "trace", "times": [1.0]}}
    sim = Simulation(scenario([svc], nodes=nodes, duration=30, autoscaler=autoscaled()))
    summary = sim.run()
    (row,) = sim.recorder.rows["requests"]
    return row[8] - row[4], summary["services"]["f"], sim


# A request's own cost beyond the service: the hop there and back and the pod's overhead.
OVERHEAD_S = 2 * HOP_S + POD_OVERHEAD_S


def test_a_cold_start_costs_the_image_pull_and_the_start():
    latency, figures, sim = first_response([])
    assert latency == pytest.approx(300 / 50 + 2.0 + 0.010 + OVERHEAD_S, abs=1e-6)
    assert figures["cold_starts"] == 1 and figures["image_pulls"] == 1
    steps = [(row[4], row[5]) for row in sim.recorder.rows["pods"]]
    assert steps[:3] == [("", "null"), ("null", "cold"), ("cold", "warmdisk")]


def test_a_warmdisk_start_costs_only_the_start():
    latency, figures, _ = first_response(["f:1"])
    assert latency == pytest.approx(2.0 + 0.010 + OVERHEAD_S, abs=1e-6)
    assert figures["cold_starts"] == 1 and figures["image_pulls"] == 0


def test_scale_from_zero_holds_requests_in_l1_and_drops_none():
    svc = {"name": "z", "image-size-mb": 100, "start-time": "1s", "container-concurrency": 4,
           "service-time": "const:20ms", "workload": {"kind": "trace", "times": [0.5 + i * 0.01 for i in range(200)]}}
    sim = Simulation(scenario([svc], duration=30, autoscaler=autoscaled()))
    summary = sim.run()
    figures = summary["services"]["z"]
    assert figures["requests"] == figures["completed"] == 200 and figures["drops"] == 0
    ready = next(row[0] for row in sim.recorder.rows["pods"] if row[5] == "warm")
    assert ready == pytest.approx(0.5 + 100 / 100 + 1.0)
    early = [row for row in sim.recorder.rows["requests"] if row[4] < ready]
    assert early and all(row[5] >= ready for row in early)  # t2: dispatched only once the pod serves


def test_the_live_overheads_are_modelled_by_default_and_can_be_set():
    # One request on an idle warm pod: katyusha -> pod (a hop), the service plus the pod's
    # overhead (its slot held), pod -> katyusha (a hop); the defaults are the calibrated figures.
    def one(**top):
        sim = Simulation(scenario([fixed(service_time="const:10ms", rate=1.0, requests=1)], duration=5, **top))
        sim.run()
        (row,) = sim.recorder.rows["requests"]
        _, _, _, _, t1, t2, t3, t4, done, _, _, _ = row
        return t3 - t2, t4 - t3, done - t4, done - t1

    assert HOP_S > 0 and POD_OVERHEAD_S > 0
    there, served, back, latency = one()
    assert there == pytest.approx(HOP_S) and back == pytest.approx(HOP_S)
    assert served == pytest.approx(0.010 + POD_OVERHEAD_S)
    assert latency == pytest.approx(0.010 + OVERHEAD_S)
    there, served, back, latency = one(overhead={"hop": "2ms", "pod": "1ms"})
    assert (there, served, back) == pytest.approx((0.002, 0.011, 0.002))
    assert one(overhead={"hop": 0, "pod": 0})[3] == pytest.approx(0.010)


def test_overhead_release_holds_the_slot_after_the_response_without_adding_to_its_latency():
    # Two requests 1 ms apart on one pod of concurrency 1 (10 ms each, no other overhead, no extra
    # slot): the second waits in L1 for the first's slot, which stays held 5 ms after its response
    # came back.
    def two(**overhead):
        svc = {"name": "r", "pods": 1, "autoscale": False, "container-concurrency": 1,
               "service-time": "const:10ms", "workload": {"kind": "trace", "times": [0.0, 0.001]}}
        sim = Simulation(scenario([svc], duration=1, overhead={"hop": 0, "pod": 0, **overhead},
                                  katyusha={"settings": {"pod-capacity-extra": 0}}))
        summary = sim.run()
        assert summary["services"]["r"]["completed"] == 2 and sim.unfinished == 0
        # Each request's dispatch (t2) and latency.
        return [x for row in sorted(sim.recorder.rows["requests"], key=lambda r: r[4]) for x in (row[5], row[8] - row[4])]

    assert two() == pytest.approx([0.0, 0.010, 0.010, 0.019])
    assert two(release="5ms") == pytest.approx([0.0, 0.010, 0.015, 0.024])
    # The pod's own: its response leaves at once, its slot is free only later. With a 2 ms hop each
    # way, katyusha's next request reaches the pod 4 ms after the response left: a release under
    # that costs nothing, a longer one makes the request wait for the slot.
    assert two(hop="2ms") == pytest.approx([0.0, 0.014, 0.014, 0.027])
    assert two(hop="2ms", **{"pod-release": "3ms"}) == pytest.approx([0.0, 0.014, 0.014, 0.027])
    assert two(hop="2ms", **{"pod-release": "5ms"}) == pytest.approx([0.0, 0.014, 0.014, 0.028])


# -- the same picks live and simulated --------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["p2c", "peak-ewma", "jsq-piggyback", "least-in-flight"])
def test_the_live_driver_makes_the_same_picks_for_the_recorded_loads(policy):
    from katyusha.core.membership import PodChange  # noqa: F401 - journal entries carry them
    from katyusha.proxy.service import LiveService

    nodes = [{"name": "fast", "count": 2, "speed": 2.0}, {"name": "slow", "count": 2, "speed": 0.5}]
    svc = fixed(pods=4, rate=300, requests=3000, concurrency=0, service_time="exp:10ms")
    sc = scenario([svc], nodes=nodes, katyusha={"settings": {"policy": policy, "pod-capacity-factor": 0}})
    sim = Simulation(sc)
    sim.journal = []
    sim.run()
    picks_sim = [(entry[1], entry[3]) for entry in sim.journal if entry[0] == "pick"]

    async def replay():
        live = LiveService(sc.service_settings("q"), rng=random.Random(f"{sc.seed}:policy:0:q"))
        tickets, handles, picks = {}, {}, []
        for entry in sim.journal:
            kind = entry[0]
            if kind == "change":
                live.core.change_pods(entry[2], entry[1])
            elif kind == "offer":
                tickets[entry[1]] = live.offer(entry[2], 0, True)
            elif kind == "pick":
                handle = handles[entry[1]] = live.dispatch(tickets[entry[1]], entry[2])
                picks.append((entry[1], handle.entry.name))
            elif kind == "head":
                _, number, now, feedback, status, error = entry
                handles[number].on_head(now, feedback, status, error)
                live.end(tickets.pop(number))
        return picks

    picks_live = asyncio.run(replay())
    assert len(picks_sim) == 3000
    assert picks_live == picks_sim
    assert len({pod for _, pod in picks_sim}) == 4


# -- the seed's state API ------------------------------------------------------------------------------------


def test_hooks_walk_a_pod_by_single_steps_and_illegal_ones_raise_the_core_error():
    nodes = [{"name": "a", "registry-mbps": 100}, {"name": "b", "registry-mbps": 100}]
    svc = {"name": "h", "image-size-mb": 200, "start-time": "1s", "autoscale": False, "service-time": "const:5ms",
           "workload": {"kind": "trace", "times": [10.0, 10.5]}}
    sim = Simulation(scenario([svc], nodes=nodes, duration=20))
    errors = []
    seen = {}

    def setup(s):
        pod = s.add_pod("h", "a")
        pod.to_cold()
        try:
            pod.to_warm()
        except IllegalTransition as exc:
            errors.append(str(exc))

    def pull(s):
        s.pod("h-1").to_warmdisk()

    def start(s):
        seen["before"] = s.pod("h-1").state.value
        s.pod("h-1").to_warm()

    sim.at(1.0, setup)
    sim.at(2.0, pull)
    sim.at(4.5, start)
    summary = sim.run()
    assert errors == ["illegal transition cold -> warm: from cold the allowed targets are null, warmdisk"]
    assert seen["before"] == "warmdisk"
    timeline = [(row[0], row[4], row[5]) for row in sim.recorder.rows["pods"]]
    assert timeline == [(1.0, "", "null"), (1.0, "null", "cold"), (4.0, "cold", "warmdisk"),
                        (5.5, "warmdisk", "warm")]
    assert summary["services"]["h"]["completed"] == 2


def test_to_warmdisk_on_another_node_only_from_null():
    nodes = [{"name": "a"}, {"name": "b", "images": ["h"]}]
    svc = {"name": "h", "start-time": "1s", "autoscale": False}
    sim = Simulation(scenario([svc], nodes=nodes, duration=5))
    out = {}

    def hook(s):
        pod = s.add_pod("h", "a")
        pod.to_cold()
        with pytest.raises(IllegalTransition, match="only a null pod may move"):
            pod.to_warmdisk("b")
        pod.to_null()
        pod.to_cold()
        out["node"] = pod.node.name

    sim.at(1.0, hook)
    sim.run()
    assert out["node"] == "a"


# -- scenario files -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("change", "field"), [
    (lambda d: d["services"][0].update({"service-time": "exp:fast"}), "services[0].service-time"),
    (lambda d: d["services"][0]["workload"].update({"rate": -1}), "services[0].workload.rate"),
    (lambda d: d["services"][0]["workload"].update({"kind": "burst"}), "services[0].workload.kind"),
    (lambda d: d["services"][0].update({"colour": 1}), "services[0].colour"),
    (lambda d: d["nodes"][0].update({"cpu": 0}), "nodes[0].cpu"),
    (lambda d: d["nodes"][0].update({"max-pods": "many"}), "nodes[0].max-pods"),
    (lambda d: d.update({"katyusha": {"settings": {"policy": "best"}}}), "katyusha.settings.policy"),
    (lambda d: d.update({"katyusha": {"settings": {"no-such-key": 1}}}), "katyusha.settings.no-such-key"),
    (lambda d: d.update({"autoscaler": {"stable-window": "fast"}}), "autoscaler.stable-window"),
    (lambda d: d.update({"autoscaler": {"retire-to": "warm"}}), "autoscaler.retire-to"),
    (lambda d: d.update({"placement": {"scheduler": "random"}}), "placement.scheduler"),
    (lambda d: d["services"][0].update({"speed": {"nowhere": 2}}), "services[0].speed.nowhere"),
    (lambda d: d["services"][0].update({"annotations": {"autoscaling.knative.dev/target": -5}}),
     "services[0].annotations.autoscaling.knative.dev/target"),
    (lambda d: d.update({"regions": {"latency": [{"from": "a", "to": "b", "one-way": "soon"}]}}),
     "regions.latency[0].one-way"),
    (lambda d: d.update({"overhead": {"hop": "soon"}}), "overhead.hop"),
    (lambda d: d.update({"overhead": {"pod": "-1ms"}}), "overhead.pod"),
    (lambda d: d.update({"overhead": {"release": "-1ms"}}), "overhead.release"),
    (lambda d: d.update({"overhead": {"pod-release": "soon"}}), "overhead.pod-release"),
    (lambda d: d.update({"overhead": {"dispatch": "1ms"}}), "overhead.dispatch"),
])
def test_a_bad_scenario_names_its_field(change, field):
    document = {"nodes": [{"name": "n"}], "services": [{"name": "s", "workload": {"kind": "poisson", "rate": 1}}]}
    change(document)
    with pytest.raises(ConfigError) as caught:
        parse(document)
    assert caught.value.key == field


def test_a_trace_file_is_read_relative_to_the_scenario(tmp_path):
    (tmp_path / "arrivals.csv").write_text("t\n0.5\n1.5\n", encoding="utf-8")
    (tmp_path / "s.yaml").write_text(
        "nodes: [{name: n}]\nservices: [{name: s, pods: 1, autoscale: false, workload: {kind: trace, "
        "file: arrivals.csv}}]\nduration: 5s\n", encoding="utf-8")
    from katyusha.sim import load

    summary, _ = run_scenario(load(tmp_path / "s.yaml"))
    assert summary["services"]["s"]["completed"] == 2


def test_a_trace_with_work_replays_each_requests_work_listed_or_from_the_file(tmp_path):
    # Each arrival's work (seconds at speed 1) replaces the service's draws: on a pod of speed 0.5,
    # 10 ms of work is 20 ms of service, whatever service-time says.
    base = {"duration": "5s", "overhead": {"hop": 0, "pod": 0}, "nodes": [{"name": "n", "speed": 0.5}],
            "services": [{"name": "s", "pods": 1, "autoscale": False, "service-time": "exp:1s",
                          "workload": {"kind": "trace", "times": [1.0, 0.5, 2.0], "work": ["30ms", 0.01, "5ms"]}}]}
    sim = Simulation(parse(base))
    sim.run()
    rows = sorted(sim.recorder.rows["requests"], key=lambda row: row[4])
    # Sorted by time, each work stays with its arrival.
    assert [(row[4], round(row[7] - row[6], 9)) for row in rows] == [(0.5, 0.02), (1.0, 0.06), (2.0, 0.01)]
    (tmp_path / "arrivals.csv").write_text("t,work\n1.0,0.03\n0.5,0.01\n2.0,0.005\n", encoding="utf-8")
    (tmp_path / "s.yaml").write_text(
        "nodes: [{name: n, speed: 0.5}]\noverhead: {hop: 0, pod: 0}\nservices: [{name: s, pods: 1, "
        "autoscale: false, service-time: 'exp:1s', workload: {kind: trace, file: arrivals.csv}}]\nduration: 5s\n",
        encoding="utf-8")
    from katyusha.sim import load

    sim = Simulation(load(tmp_path / "s.yaml"))
    sim.run()
    rows = sorted(sim.recorder.rows["requests"], key=lambda row: row[4])
    assert [(row[4], round(row[7] - row[6], 9)) for row in rows] == [(0.5, 0.02), (1.0, 0.06), (2.0, 0.01)]
    with pytest.raises(ConfigError) as caught:
        parse({**base, "services": [{**base["services"][0], "workload": {"kind": "trace", "times": [1.0],
                                                                        "work": [0.1, 0.2]}}]})
    assert caught.value.key == "services[0].workload.work"


# -- outputs ---------------------------------------------------------------------------------------------------


def busy_scenario(interval="2s"):
    nodes = [{"name": "edge", "count": 3, "region": "edge", "registry-mbps": 40, "max-pods": 6},
             {"name": "cloud", "count": 3, "images": ["api"]}]
    services = [
        {"name": "api", "container-concurrency": 4, "service-time": "lognormal:30ms,0.8", "start-time": "500ms",
         "speed": {"edge": 0.5}, "workload": {"kind": "sinusoid", "rate": 120, "amplitude": 100, "period": "20s"}},
        {"name": "web", "pods": 2, "autoscale": False, "service-time": "exp:5ms",
         "workload": {"kind": "step", "steps": [{"at": 0, "rate": 20}, {"at": "10s", "rate": 150}]}},
    ]
    return scenario(services, nodes=nodes, duration=40, regions={"latency": [
        {"from": "edge", "to": "cloud", "one-way": "5ms"}]}, autoscaler={"stable-window": "6s"},
        record={"interval": interval})


def test_same_scenario_and_seed_give_byte_identical_outputs(tmp_path):
    run_scenario(busy_scenario(), tmp_path / "a")
    run_scenario(busy_scenario(), tmp_path / "b")
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["decisions.csv", "nodes.csv", "placements.csv", "pods.csv", "requests.csv", "summary.json"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    import json

    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    api = summary["services"]["api"]
    assert api["requests"] > 1000 and api["cold_starts"] >= 1 and api["p99_ms"] >= api["p50_ms"]
    nodes_rows = (tmp_path / "a" / "nodes.csv").read_text().splitlines()
    assert nodes_rows[0] == "t,node,region,cpu_cores,ram_mb,serving_pods"
    times = sorted({float(line.split(",")[0]) for line in nodes_rows[1:]})
    assert times[:3] == [0.0, 2.0, 4.0]


def test_the_cli_runs_a_comparison(tmp_path, capsys):
    from katyusha.cli import main

    path = tmp_path / "s.yaml"
    path.write_text("seed: 2\nduration: 20s\nnodes: [{name: fast, speed: 2}, {name: slow, speed: 0.25}]\n"
                    "services: [{name: s, pods: 2, autoscale: false, container-concurrency: 0, "
                    "service-time: exp:10ms, workload: {kind: poisson, rate: 80}}]\n", encoding="utf-8")
    assert main(["sim", str(path), "--out", str(tmp_path / "out"), "--policies", "round-robin,jsq-piggyback",
                 "--progress", "off"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["policy", "service", "requests"]
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert rows["round-robin"][2] == rows["jsq-piggyback"][2]  # the same arrivals
    assert float(rows["jsq-piggyback"][5]) < float(rows["round-robin"][5])  # p99
    assert (tmp_path / "out" / "latency_cdf.png").stat().st_size > 0


def test_the_cli_names_a_bad_field(tmp_path, capsys):
    from katyusha.cli import main

    path = tmp_path / "s.yaml"
    path.write_text("nodes: [{name: n, cpu: -1}]\nservices: [{name: s}]\n", encoding="utf-8")
    assert main(["sim", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "nodes[0].cpu" in capsys.readouterr().err


def test_node_use_is_sim_backends_modelled_use_summed_over_the_nodes_pods():
    from sim_backend.monitor import Profile, modelled

    sim = Simulation(busy_scenario("1s"))
    expected = {}

    def look(s):
        for node in s.nodes:
            uses = [modelled(pod, Profile()) for pod in node.pods]
            expected[node.name] = (sum(u["cpu_cores"] for u in uses), sum(u["ram_mb"] for u in uses))

    sim.at(3.0, look)
    sim.run()
    got = {row[1]: (row[3], row[4]) for row in sim.recorder.rows["nodes"] if row[0] == 3.0}
    assert set(got) == set(expected)
    for name, (cpu, ram) in expected.items():
        assert got[name][0] == pytest.approx(cpu) and got[name][1] == pytest.approx(ram), name
    assert any(cpu > 0 for cpu, _ in expected.values())


def test_outputs_do_not_depend_on_the_processs_hash_seed(tmp_path):
    # Sets of names iterate in an order that changes with PYTHONHASHSEED: none may reach the outputs.
    import os
    import subprocess
    import sys

    path = tmp_path / "s.yaml"
    path.write_text(
        "seed: 3\nduration: 20s\nnodes: [{name: e, count: 3, region: edge, registry-mbps: 40, max-pods: 4}, "
        "{name: c, count: 2, images: [a]}]\nregions: {latency: [{from: edge, to: cloud, one-way: 5ms}]}\n"
        "services: [{name: a, container-concurrency: 2, service-time: exp:20ms, speed: {e: 0.5}, "
        "workload: {kind: ramp, from: 10, to: 150, end: 15s}}, {name: b, pods: 2, autoscale: false, "
        "workload: {rate: 20}}]\nautoscaler: {stable-window: 6s}\n", encoding="utf-8")
    for seed in ("1", "2"):
        subprocess.run([sys.executable, "-m", "katyusha.cli", "sim", str(path), "--out", str(tmp_path / seed),
                        "--no-plots", "--progress", "off"], check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
    for name in ("requests.csv", "pods.csv", "decisions.csv", "placements.csv", "nodes.csv", "summary.json"):
        assert (tmp_path / "1" / name).read_bytes() == (tmp_path / "2" / name).read_bytes(), name


# -- the clock and the run's memory ---------------------------------------------------------------


@pytest.mark.parametrize("resolution", [0.001, 0.3, 10.0])
def test_the_clock_runs_events_in_time_then_scheduling_order(resolution):
    # The calendar must give exactly one heap's order of (time, seq), however the events
    # were scheduled: from callbacks, from outside between runs, in the past, at equal times.
    from katyusha.sim.clock import Environment

    env = Environment(resolution=resolution)
    rng = random.Random(7)
    ran = []
    scheduled = []

    def note(label):
        ran.append((env.now, label))
        if len(scheduled) < 3000:
            for _ in range(rng.choice((0, 1, 2))):
                delay = rng.choice((0.0, 0.0007, 0.0007, 0.25, rng.expovariate(1.0), rng.lognormvariate(0, 2)))
                if rng.random() < 0.2:
                    # At a bucket's edge, or a rounding step either side of it: the clock files
                    # a time before the running bucket's last one into that bucket by time.
                    edge = (int(env.now / resolution) + rng.choice((1, 1, 2))) * resolution
                    add(rng.choice((edge, math.nextafter(edge, 0.0), math.nextafter(edge, math.inf))))
                    continue
                add(env.now + delay)

    def add(when, past=False):
        label = len(scheduled)
        if past or rng.random() < 0.5:
            scheduled.append((max(when, env.now), label))
            env.at(when, note, label)
        else:
            delay = when - env.now
            scheduled.append((env.now + delay if delay > 0 else env.now, label))  # after()'s time, rounded as it is
            env.after(delay, note, label)

    for _ in range(50):
        add(rng.uniform(0, 5))
    env.run(until=2.0)
    assert env.now == 2.0
    add(1.0, past=True)  # in the past: runs at now, after what is due now
    add(2.0)
    add(rng.uniform(2, 3))
    env.run(until=float("inf"))
    env.at(math.inf, note, "never")
    env.run(until=env.now + 1)
    assert ran == sorted(scheduled) and len(ran) == len(scheduled) > 1000
    assert env.events == len(ran) and env.peek() == math.inf


def test_the_simulators_feedback_is_the_cores_feedback_with_every_field():
    # The simulator builds each response's Feedback by tuple.__new__ (no __new__ frame), giving
    # every field: a field the core adds (with a default) must be given here too, or the tuple
    # would be short of it.
    from katyusha.core.feedback import Feedback
    from katyusha.sim.engine import _feedback

    values = (3, 7, 10, 1.5, 12.25, "pod-1", "node-1", None)
    built = _feedback(values)
    assert type(built) is Feedback
    assert built == Feedback(*values[:7]) and built._asdict() == Feedback(*values)._asdict()


def test_halt_ends_the_run_after_the_event_that_asks_and_the_rest_wait():
    # halt() is run()'s stop without a question after every event: the simulation's drain
    # uses it (the request that ends last halts the clock), so the run's end time and event
    # count must be what stop would give, in a bucket run whole and in one cut by ``until``.
    from katyusha.sim.clock import Environment

    for until in (None, 0.004):
        env = Environment(resolution=0.01)
        ran = []

        def note(label, env=env, ran=ran):
            ran.append((env.now, label, env.peek()))
            if label == "halter":
                env.at(env.now, note, "after-halt")  # scheduled after the halt: waits
                env.halt()
                env.halt()  # twice in one event: one halt

        env.at(0.001, note, "first")
        env.at(0.002, note, "halter")
        env.at(0.002, note, "same-time")  # due at the halting event's time, after it: waits
        env.at(0.003, note, "later")
        env.run(until=until)
        # peek() from a callback sees the next event not yet run (the halting one: the marker).
        assert [label for _, label, _ in ran] == ["first", "halter"]
        assert ran[0][2] == 0.002
        assert env.now == 0.002 and env.events == 2
        assert env.peek() == 0.002
        env.run(until=until)
        assert [label for _, label, _ in ran] == ["first", "halter", "same-time", "after-halt", "later"]
        assert env.events == 5 and env.peek() is None


def test_a_run_leaves_nothing_to_the_cycle_collector():
    # The collector's automatic runs are off while the clock runs (a full collection walks every
    # request in flight): that is only safe while an ended request holds no reference cycle.
    import gc

    collections = []

    def count(phase, info):
        if phase == "start":
            collections.append(sim.env.now)

    gc.collect()
    sim = Simulation(busy_scenario())
    gc.callbacks.append(count)
    try:
        summary = sim.run()
    finally:
        gc.callbacks.remove(count)
    assert gc.isenabled()
    # None while the clock ran, nor after it (what the run made went to the oldest generation
    # without a walk): only before its first event.
    assert set(collections) <= {0.0}, collections
    assert sum(s["requests"] for s in summary["services"].values()) > 2000
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        ours = [o for o in gc.garbage if type(o).__module__.startswith(("katyusha", "sim_backend"))]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert ours == []
    assert sim.pods  # still referenced: the simulation itself is not garbage
