"""The simulator at scale: 1,000 nodes, 10,000 pods in 100 services, 1,000,000 requests, KPA and min-cost flow.

Run as ``python -m benchmarks.sim_scale [--quick] [--json PATH] [--repeats N] [--no-peer] [--bytecodes]``.

Every service starts from zero pods; katyusha's default policy balances, the
KPA autoscaler (container concurrency 10, target 70%: 7 in flight per pod)
scales each service up to its max-scale of 100 pods as its Poisson load arrives, and every wake is placed by the
min-cost-flow scheduler over the whole cluster (1,000 nodes of 16 cores; the
image on no disk at first: pulls at 200 MB/s), the scenario's default
overheads (docs/simulator.md, "Overheads"). Service times are log-normal
with a mean of 10 s, so 100 services at 70 requests a second hold about
70,000 requests in flight; requests are not written out (summary figures only). All of it through the same core objects as
the live system (katyusha.sim).

The peer is SimFaaS (``pip install simfaas``, in the ``bench`` extra), run
in the same process: its README example (one function, Poisson arrivals at
0.9/s, exponential warm and cold service, ``max_time=1e6``: about 900,000
requests; ``1e5`` with ``--quick``), a far simpler model (no balancer, no
queues, no placement), timed after each run of katyusha's main case, so
``--repeats N`` alternates the two N times. The report gives SimFaaS's
measured wall time and requests a second, katyusha's requests a second over
SimFaaS's in each pair (``ratio_to_simfaas_here``: the median, and each
pair's), and, derived, katyusha's wall time scaled to the machine of
SimFaaS's published figure (about 900,000 requests in 42 s, 21,429
requests/s): katyusha's wall time times SimFaaS's requests a second here
over the published ones (for the full case about katyusha's wall x 42 /
SimFaaS's wall here). The published figure and katyusha's ratio to it stay
(``simfaas_requests_per_s``, ``ratio``). Without simfaas installed, or with
``--no-peer``, only katyusha's side runs.

It also prints how the cost grows from 100k to 1M requests (same fleet) and
from 100 to 10,000 pods (same requests). JSON keys: ``requests``, ``pods``,
``nodes``, ``wall_s``, ``requests_per_s``, plus ``cpu_s`` (the process's CPU
time for the run: well under ``wall_s`` when the run waited for a core),
``simfaas_requests_per_s`` and ``ratio`` (the published figure), ``simfaas``
(the measured peer, or null), ``ratio_to_simfaas_here``, ``pairs``,
``derived_wall_s_on_published_machine`` and ``growth``.

``--bytecodes`` times nothing: it counts the bytecodes executed and the
Python frames entered a simulated request (``sys.settrace`` with
``f_trace_opcodes`` around ``Simulation.run``) over 200 nodes, 20 services x
max 100 pods and 40,000 requests (4,000 with ``--quick``), and the functions
that execute the most. The count is exact, the same at every run of one
tree under ``PYTHONHASHSEED=0``: the measure of a cut that the machine's
drift hides from the wall time (docs/simulator.md, "Scale").
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

from benchmarks.bytecodes_per_request import count_bytecodes
from katyusha.sim.engine import Simulation
from katyusha.sim.record import Recorder
from katyusha.sim.scenario import parse

# SimFaaS's README: 898,469 requests in 42 s (its progress bar's 1,000,000 simulated seconds).
SIMFAAS_PUBLISHED_WALL_S = 42.0
SIMFAAS_REQUESTS_PER_S = 900_000 / SIMFAAS_PUBLISHED_WALL_S
SIMFAAS_INSTALL = "pip install simfaas (it is in the bench extra: pip install -e '.[bench]', or make venv)"


def scenario(nodes: int, services: int, pods_per_service: int, requests: int, seed: int = 1):
    """``services`` services each driven to about ``pods_per_service`` pods, ``requests`` arrivals in all."""
    rate = pods_per_service * 7 / 10.0  # 7 requests in flight per pod at a 10 s mean service time
    duration = requests / (rate * services)
    return parse({
        "seed": seed,
        "duration": duration,
        "drain": 60,
        "nodes": [
            {"name": "n", "count": nodes, "cpu": 16, "ram-mb": 65536, "max-pods": 40, "registry-mbps": 200},
        ],
        "services": [
            {"name": f"s{i:03d}", "image-size-mb": 200, "start-time": "1s", "cpu": 0.25, "ram-mb": 256,
             "container-concurrency": 10, "service-time": "lognormal:10s,0.5",
             "workload": {"kind": "poisson", "rate": rate, "requests": requests // services}}
            for i in range(services)
        ],
        "katyusha": {"settings": {"request-timeout": 120}},
        "autoscaler": {"container-concurrency-target-default": 10, "container-concurrency-target-percentage": 70,
                       "stable-window": "20s", "scale-down-delay": "30s", "max-scale": pods_per_service},
        "placement": {"scheduler": "flow"},
        "record": {"requests": False},
    })


def run(nodes: int, services: int, pods_per_service: int, requests: int) -> dict:
    sc = scenario(nodes, services, pods_per_service, requests)
    sim = Simulation(sc, recorder=Recorder([s.name for s in sc.services], keep=False, requests=False))
    started = time.perf_counter()
    cpu_started = time.process_time()
    summary = sim.run()
    wall = time.perf_counter() - started
    # The process's own CPU time: with CPU time well under wall time the run waited for a core
    # (other work on the machine); with the two equal, a slow run is the CPU's own speed.
    cpu = time.process_time() - cpu_started
    done = sum(s["completed"] for s in summary["services"].values())
    arrived = sum(s["requests"] for s in summary["services"].values())
    peak = sum(1 for p in sim.pods.values() if p.joined)
    return {
        "requests": arrived,
        "completed": done,
        "drops": sum(s["drops"] for s in summary["services"].values()),
        "pods": len(sim.pods),
        "pods_serving_at_end": peak,
        "peak_serving_pods": summary["peak_serving_pods"],
        "nodes": nodes,
        "services": services,
        "max_scale": pods_per_service,
        "simulated_s": summary["simulated_s"],
        "events": summary["events"],
        "autoscaler_decisions": summary["autoscaler_decisions"],
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 3),
        "requests_per_s": round(arrived / wall),
    }


def bytecodes(nodes: int, services: int, pods_per_service: int, requests: int, *, top: int = 12) -> dict:
    """Bytecodes executed and frames entered a request by ``Simulation.run`` of :func:`scenario`, and the
    ``top`` functions by bytecodes (each with its bytecodes and calls a request). Slow: traced."""
    sc = scenario(nodes, services, pods_per_service, requests)
    sim = Simulation(sc, recorder=Recorder([s.name for s in sc.services], keep=False, requests=False))
    done: list[dict] = []

    def run_it() -> None:
        done.append(sim.run())

    ops, frames = count_bytecodes(run_it)
    ops = Counter(ops)
    summary = done[0]
    arrived = sum(s["requests"] for s in summary["services"].values())
    return {
        "requests": arrived,
        "events": summary["events"],
        "bytecodes_per_request": round(sum(ops.values()) / arrived, 1),
        "frames_per_request": round(sum(frames.values()) / arrived, 2),
        "top": [{"function": code.co_qualname, "file": code.co_filename.rsplit("/", 2)[-1],
                 "line": code.co_firstlineno, "bytecodes_per_request": round(count / arrived, 1),
                 "calls_per_request": round(frames[code] / arrived, 2)}
                for code, count in ops.most_common(top)],
    }


def simfaas_installed() -> bool:
    try:
        from simfaas.ServerlessSimulator import ServerlessSimulator  # noqa: F401
    except ImportError:
        return False
    return True


def simfaas(max_time: float = 1e6, seed: int = 1) -> dict:
    """SimFaaS's README example for ``max_time`` simulated seconds, timed; its requests counted.

    Raises ImportError when simfaas is not installed.
    """
    import numpy as np
    from simfaas.ServerlessSimulator import ServerlessSimulator

    np.random.seed(seed)  # SimFaaS draws from numpy's global generator: seeded, the same requests each run
    sim = ServerlessSimulator(arrival_rate=0.9, warm_service_rate=1 / 1.991, cold_service_rate=1 / 2.244,
                              expiration_threshold=600, max_time=max_time)
    started = time.perf_counter()
    cpu_started = time.process_time()
    sim.generate_trace(debug_print=False, progress=False)
    wall = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {"requests": sim.total_req_count, "cold_starts": sim.total_cold_count, "max_time": max_time,
            "wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "requests_per_s": round(sim.total_req_count / wall)}


def pair(ours: dict, peer: dict) -> dict:
    """One run of katyusha beside the SimFaaS run after it: the ratio of their rates, and katyusha's wall
    time scaled by how much faster SimFaaS ran here than on the machine of its published figure (derived)."""
    speedup = peer["requests"] / peer["wall_s"] / SIMFAAS_REQUESTS_PER_S
    return {"katyusha_wall_s": ours["wall_s"], "simfaas_wall_s": peer["wall_s"],
            "ratio": round(ours["requests_per_s"] / peer["requests_per_s"], 3),
            "derived_wall_s_on_published_machine": round(ours["wall_s"] * speedup, 1)}


def measure(nodes: int, services: int, pods_per_service: int, requests: int, *, repeats: int = 1,
            peer_max_time: float | None = 1e6) -> dict:
    """The main case ``repeats`` times, each run followed by SimFaaS's (none with ``peer_max_time`` None).

    The main case's figures are its median run's (by wall time), with every run's wall and CPU time.
    """
    runs, peers = [], []
    for _ in range(max(1, repeats)):
        runs.append(run(nodes, services, pods_per_service, requests))
        if peer_max_time is not None:
            peers.append(simfaas(peer_max_time))
    report = dict(sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2])
    report["runs_wall_s"] = [r["wall_s"] for r in runs]
    report["runs_cpu_s"] = [r["cpu_s"] for r in runs]
    report["simfaas_requests_per_s"] = round(SIMFAAS_REQUESTS_PER_S)
    report["ratio"] = round(report["requests_per_s"] / SIMFAAS_REQUESTS_PER_S, 2)
    report["simfaas"] = None
    report["pairs"] = []
    if peers:
        report["simfaas"] = {**sorted(peers, key=lambda r: r["wall_s"])[len(peers) // 2],
                             "version": metadata.version("simfaas"),
                             "runs_wall_s": [p["wall_s"] for p in peers],
                             "runs_cpu_s": [p["cpu_s"] for p in peers]}
        report["pairs"] = [pair(ours, peer) for ours, peer in zip(runs, peers, strict=True)]
        report["ratio_to_simfaas_here"] = round(statistics.median(p["ratio"] for p in report["pairs"]), 3)
        report["derived_wall_s_on_published_machine"] = round(statistics.median(
            p["derived_wall_s_on_published_machine"] for p in report["pairs"]), 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a tenth of the requests and pods, and of SimFaaS's simulated time (under 10 s)")
    parser.add_argument("--json", default=None, help="write the report here as JSON")
    parser.add_argument("--repeats", type=int, default=1,
                        help="runs of the main case, each followed by SimFaaS's (the medians are reported)")
    parser.add_argument("--main-only", action="store_true", help="skip the growth cases")
    parser.add_argument("--no-peer", action="store_true", help="do not run SimFaaS")
    parser.add_argument("--bytecodes", action="store_true",
                        help="time nothing: count bytecodes and frames a request (200 nodes, 20 x 100 pods, "
                             "40,000 requests; a tenth with --quick)")
    args = parser.parse_args(argv)
    scale = 10 if args.quick else 1
    out = sys.stdout
    if args.bytecodes:
        counted = bytecodes(200, 20, 100, 40_000 // scale)
        out.write(f"{counted['requests']:,} requests, {counted['events']:,} events: "
                  f"{counted['bytecodes_per_request']:,.1f} bytecodes and {counted['frames_per_request']:.2f} "
                  f"frames a request\n")
        for row in counted["top"]:
            out.write(f"  {row['bytecodes_per_request']:7.1f} in {row['calls_per_request']:5.2f} calls  "
                      f"{row['function']} ({row['file']}:{row['line']})\n")
        if args.json:
            Path(args.json).write_text(json.dumps(counted, indent=2) + "\n")
        return 0
    peer_max_time = None
    if not args.no_peer:
        if simfaas_installed():
            peer_max_time = 1e6 / scale
        else:
            out.write(f"SimFaaS is not installed, so only katyusha's side runs: {SIMFAAS_INSTALL}\n")
    report = measure(1000, 100, 100 // scale, 1_000_000 // scale, repeats=args.repeats,
                     peer_max_time=peer_max_time)
    growth: dict = {"requests": [], "pods": []}
    if not args.quick and not args.main_only:
        small = run(1000, 100, 100, 100_000)
        growth["requests"] = [small, {k: v for k, v in report.items() if k in small}]
        # The same 100k requests on 100, 1,000 and 10,000 pods (7 in flight per pod: fewer pods, a longer run).
        growth["pods"] = [run(1000, 10, 10, 100_000), run(1000, 100, 10, 100_000), small]
    report["growth"] = growth
    out.write(f"{report['requests']:,} requests, {report['pods']:,} pods created "
              f"({report['peak_serving_pods']:,} serving at the peak) on {report['nodes']:,} "
              f"nodes, {report['simulated_s']:.0f} simulated s: {report['wall_s']:.1f} s of wall time "
              f"({report['cpu_s']:.1f} s of CPU), "
              f"{report['requests_per_s']:,} requests/s "
              f"(SimFaaS's published example: {SIMFAAS_REQUESTS_PER_S:,.0f}/s; ratio {report['ratio']})\n")
    if len(report["runs_wall_s"]) > 1:
        out.write(f"  wall s of each run: {', '.join(f'{r:.1f}' for r in report['runs_wall_s'])} (median above); "
                  f"CPU s: {', '.join(f'{r:.1f}' for r in report['runs_cpu_s'])}\n")
    peer = report["simfaas"]
    if peer is not None:
        out.write(f"SimFaaS {peer['version']} here, its README example (max_time {peer['max_time']:g}): "
                  f"{peer['requests']:,} requests in {peer['wall_s']:.1f} s of wall time ({peer['cpu_s']:.1f} s of CPU), "
                  f"{peer['requests_per_s']:,} requests/s; katyusha's requests/s over SimFaaS's, "
                  f"each run beside the SimFaaS run after it: "
                  f"{', '.join(str(p['ratio']) for p in report['pairs'])} "
                  f"(median {report['ratio_to_simfaas_here']})\n")
        if len(peers := peer["runs_wall_s"]) > 1:
            out.write(f"  SimFaaS wall s of each run: {', '.join(f'{r:.1f}' for r in peers)}\n")
        derived = ", ".join(f"{p['derived_wall_s_on_published_machine']:.1f}" for p in report["pairs"])
        out.write(f"  derived: katyusha's wall time on the machine of SimFaaS's published 42 s "
                  f"(katyusha's wall x SimFaaS's requests/s here / {SIMFAAS_REQUESTS_PER_S:,.0f}): "
                  f"{derived} s "
                  f"(median {report['derived_wall_s_on_published_machine']:.1f} s)\n")
    for name, rows in growth.items():
        for row in rows:
            out.write(f"  growth by {name:8s}: {row['requests']:>9,} requests, {row['services']:>3} services x "
                      f"max {row['max_scale']:>3} pods ({row['pods']:>6,} created, {row['simulated_s']:6.0f} sim s): "
                      f"{row['wall_s']:7.2f} s, {row['requests_per_s']:>7,} req/s\n")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    from benchmarks import plots

    plots.write("sim_scale", report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
