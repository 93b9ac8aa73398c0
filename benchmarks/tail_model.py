"""The service balancer on simulated time: katyusha's settings compared on lb_quality's fleets, noise-free.

Run as ``python -m benchmarks.tail_model [--seconds S] [--json PATH]``.

The real benchmark (benchmarks/lb_quality.py) runs processes on a busy
two-core machine; a run there costs minutes and its p99 moves by tens of
percent between runs. This drives the same core object the proxy drives,
``katyusha.core.service.ServiceBalancer`` (L1 queue, per-pod capacity,
policy, load table, hedging), with a small discrete-event model of the
fleets of lb_quality.py: pods of a given container concurrency and speed,
nonna's FIFO L2 queue in front of each, a report on every response, 0.5 ms
each way on the wire, Poisson or bursty arrivals. A hedge's loser still
waiting in nonna's queue is dropped there (as nonna drops a request whose
connection closed); one already running keeps its pod busy to the end.
Each combination of settings runs the same arrival and service-time draws,
so differences are the settings'. Two settings model the peers: least
connections with no cap (nginx ``least_conn``, HAProxy ``leastconn``) and with
each pod held to its concurrency (HAProxy ``leastconn`` + ``maxconn``).
Output: p99 and p99.9 per scenario and setting at 90% load, and per setting
the median over scenarios of its p99 over the better peer model's, on the
named, tune and held-out sets apart. ``--room`` prints instead, per
scenario, a clairvoyant dispatcher's p99 (:func:`clairvoyant`: how far below
the peers any balancer could go) and the defaults', over the better peer
model's, and for a fleet behind several replicas the best of katyusha's
settings behind one balancer (:func:`one_balancer`: what the replicas would
reach with one exact shared view). ``replicas`` runs three balancers sharing
the pods. A model, not a measurement: it guides the choice, lb_quality.py
judges it.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from benchmarks.lb_quality import (
    SLOW_DURATION_S,
    SLOW_PERIOD_S,
    Scenario,
    drawn_scenarios,
    scenarios,
)
from benchmarks.loadgen import mmpp_schedule, poisson_schedule
from katyusha.core.distributions import parse_service_time
from katyusha.core.feedback import Feedback
from katyusha.core.hedge import HedgeSettings
from katyusha.core.membership import PodChange, PodSpec
from katyusha.core.service import ServiceBalancer, ServiceSettings

WIRE_S = 0.0005


@dataclass(frozen=True)
class Setting:
    name: str
    policy: str = "jsq-piggyback"
    capacity_factor: float = 1.0
    hedge: bool = False
    capacity_extra: int = ServiceSettings.capacity_extra
    hedge_max_utilisation: float = 0.9
    hedge_delay: float | None = None  # None: auto (the recent p95)
    hedge_quantile: float = 0.95
    slow_hold: float = ServiceSettings.slow_hold
    share_pods: bool = ServiceSettings.share_pods


# Models of the peers: a least-connections proxy with no per-pod cap (nginx least_conn, HAProxy
# leastconn), and one holding requests to the pods' concurrency (HAProxy leastconn with maxconn),
# neither reading another replica's load.
PEERS = (
    Setting("peer leastconn", "least-in-flight", 0.0, slow_hold=0.0, capacity_extra=0, share_pods=False),
    Setting("peer leastconn maxconn", "least-in-flight", 1.0, slow_hold=0.0, capacity_extra=0,
            share_pods=False),
)

SETTINGS = (
    Setting("jsq cap1 (default)"),
    Setting("jsq cap1 no hold", slow_hold=0.0),
    Setting("jsq cap1 hedge", hedge=True),
    Setting("jsq cap2", capacity_factor=2.0),
    Setting("jsq nocap", capacity_factor=0.0),
    Setting("sed cap1", "sed-piggyback"),
    Setting("sed cap2", "sed-piggyback", 2.0),
    Setting("sed cap2 hedge", "sed-piggyback", 2.0, True),
    Setting("sed nocap", "sed-piggyback", 0.0),
    Setting("round-robin cap1", "round-robin"),
    Setting("jsq cap1+0", capacity_extra=0),
    Setting("jsq cap1+0 no hold", capacity_extra=0, slow_hold=0.0),
    Setting("jsq cap1+1", capacity_extra=1),
    Setting("sed cap1+1", "sed-piggyback", capacity_extra=1),
    Setting("jsq hold 0.25", slow_hold=0.25),
    Setting("jsq hold 0.5", slow_hold=0.5),
    Setting("jsq hold 1", slow_hold=1.0),
    Setting("jsq cap1 no sharing", share_pods=False),
    *PEERS,
)


class _Pod:
    __slots__ = ("name", "speed", "concurrency", "slow", "queue", "running")

    def __init__(self, name: str, speed: float, concurrency: int, slow: bool):
        self.name = name
        self.speed = speed
        self.concurrency = concurrency
        self.slow = slow
        self.queue: list = []
        self.running = 0

    def speed_at(self, now: float) -> float:
        if self.slow and now % SLOW_PERIOD_S >= SLOW_PERIOD_S - SLOW_DURATION_S:
            return self.speed * 0.25
        return self.speed


def simulate(scenario: Scenario, setting: Setting, *, load: float = 0.9, seconds: float = 60.0,
             seed: int = 1) -> dict:
    """p99/p99.9 (ms) and pod requests per request of ``setting`` on ``scenario``.

    With ``scenario.replicas`` above 1, that many balancers share the pods, each knowing only
    what its own requests tell it, and the arrivals go to them in turn (as loadgen.py sends).
    """
    hedge = HedgeSettings(enabled=setting.hedge, max_utilisation=setting.hedge_max_utilisation,
                          delay=setting.hedge_delay, quantile=setting.hedge_quantile)
    settings = ServiceSettings(policy=setting.policy, capacity_factor=setting.capacity_factor,
                               capacity_extra=setting.capacity_extra, hedge=hedge,
                               slow_hold=setting.slow_hold, share_pods=setting.share_pods)
    replicas = max(1, scenario.replicas)
    services = [ServiceBalancer(settings, rng=random.Random(seed if r == 0 else seed * 1000 + r))
                for r in range(replicas)]
    pods = [_Pod(p.name, p.speed, scenario.concurrency, bool(p.slow_schedule)) for p in scenario.pods]
    for service in services:
        service.change_pods(PodChange(upsert=tuple(
            PodSpec(p.name, f"http://{p.name}", "n", None, None) for p in pods)), 0.0)
    by_name = {p.name: p for p in pods}
    distribution = parse_service_time(scenario.service)
    work_rng = random.Random(seed + 1)
    events: list = []
    seq = 0

    def at(when: float, kind: str, data) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (when, seq, kind, data))

    for index, t in enumerate(_arrivals(scenario, load, seconds, seed)):
        at(t, "arrive", services[index % replicas])
    latencies: list[float] = []
    pod_requests = 0
    answered: dict = {}  # ticket -> (arrival time, its balancer), while unanswered

    def send(handle, now: float) -> None:
        nonlocal pod_requests
        pod_requests += 1
        at(now + WIRE_S, "reach", handle)

    def dispatch(service: ServiceBalancer, ticket, now: float) -> None:
        handle = service.dispatch(ticket, now)
        if handle is None:
            return
        send(handle, now)
        delay = service.hedge_delay("GET", False)
        if delay is not None:
            at(now + delay, "hedge", ticket)

    def start(pod: _Pod, now: float) -> None:
        handle, reached = pod.queue.pop(0)
        pod.running += 1
        at(now + distribution.sample(work_rng) / pod.speed_at(now), "done", (pod, handle, reached, now))

    while events:
        now, _, kind, data = heapq.heappop(events)
        if kind == "arrive":
            ticket = data.offer(now)
            answered[ticket] = (now, data)
            if ticket.admitted:
                dispatch(data, ticket, now)
        elif kind == "reach":
            if data.ended:
                continue  # a hedge's loser cancelled on its way: nonna sees the closed connection
            pod = by_name[data.entry.name]
            pod.queue.append((data, now))
            if pod.running < pod.concurrency:
                start(pod, now)
        elif kind == "done":
            pod, handle, reached, started = data
            pod.running -= 1
            if pod.queue:
                start(pod, now)
            report = Feedback(len(pod.queue), pod.running, pod.concurrency, (started - reached) * 1000,
                              (now - started) * 1000, pod.name, None)
            at(now + WIRE_S, "head", (handle, report))
        elif kind == "hedge":
            ticket = data
            if ticket in answered:
                second = answered[ticket][1].hedge(ticket, now)
                if second is not None:
                    send(second, now)
        else:  # head
            handle, report = data
            ticket = handle.ticket
            if handle.ended or ticket not in answered:
                continue  # the loser of a hedged pair: cancelled, its work wasted
            handle.on_head(now, report, 200)
            other = ticket.hedge
            if other is not None and other is not handle:
                other.abandon(now)
                # nonna drops a cancelled request still waiting in its queue (one already
                # running keeps its pod busy to the end).
                waiting = by_name[other.entry.name].queue
                for index, (queued, _) in enumerate(waiting):
                    if queued is other:
                        del waiting[index]
                        break
            arrived, service = answered.pop(ticket)
            latencies.append((now - arrived) * 1000)
            for admitted in service.end(ticket, now):
                dispatch(service, admitted, now)
    return _tail(latencies, pod_requests, sum(s.hedger.sent for s in services),
                 sum(s.hedger.won for s in services))


def _arrivals(scenario: Scenario, load: float, seconds: float, seed: int) -> list[float]:
    rate = load * scenario.capacity_rps
    return (mmpp_schedule if scenario.arrivals == "mmpp" else poisson_schedule)(
        rate, seconds, random.Random(seed + 2))


def _tail(latencies: list[float], pod_requests: int, hedges: int = 0, won: int = 0) -> dict:
    latencies.sort()
    n = len(latencies)
    return {"p99_ms": round(latencies[int(0.99 * n)], 2), "p999_ms": round(latencies[int(0.999 * n)], 2),
            "requests": n, "pod_requests_per_request": round(pod_requests / max(1, n), 4),
            "hedges": hedges, "hedges_won": won}


def clairvoyant(scenario: Scenario, *, load: float = 0.9, seconds: float = 60.0, seed: int = 1) -> dict:
    """A reference no balancer reaches: each request, on arrival, goes to the pod that finishes it first.

    It knows every request's work and every pod's speed and backlog exactly, has one view over
    all replicas, and sends each request to the slot where it would end earliest (first come,
    first served on each pod; the wire both ways as in :func:`simulate`). Not a proven optimum
    (holding a request back could help a later one), but a dispatcher that knows neither the
    work nor the speeds does not come near it; its p99 over a peer's says how much room a goal
    leaves on these draws.
    """
    distribution = parse_service_time(scenario.service)
    work_rng = random.Random(seed + 1)
    pods = [_Pod(p.name, p.speed, scenario.concurrency, bool(p.slow_schedule)) for p in scenario.pods]
    free_at = [[0.0] * pod.concurrency for pod in pods]  # per pod, when each slot frees
    latencies = []
    for t in _arrivals(scenario, load, seconds, seed):
        work = distribution.sample(work_rng)
        reach = t + WIRE_S
        best = None
        for i, pod in enumerate(pods):
            slots = free_at[i]
            slot = min(range(len(slots)), key=slots.__getitem__)
            begin = max(reach, slots[slot])
            end = begin + work / pod.speed_at(begin)
            if best is None or end < best[0]:
                best = (end, i, slot)
        end, i, slot = best
        free_at[i][slot] = end
        latencies.append((end + WIRE_S - t) * 1000)
    return _tail(latencies, len(latencies))


def _set_wire(seconds: float) -> None:
    global WIRE_S
    WIRE_S = seconds


def hedging(seconds: float, seeds: int) -> int:
    """Print p99 / p99.9 and pod requests per request on heavy-tail, with and without hedging."""
    scenario = next(s for s in scenarios() if s.name == "heavy-tail")
    chosen = (Setting("defaults"), Setting("hedging on", hedge=True),
              Setting("extra 0", capacity_extra=0), Setting("extra 0, hedging", hedge=True, capacity_extra=0),
              Setting("hedging, max util 1", hedge=True, hedge_max_utilisation=1.0),
              Setting("hedging p90", hedge=True, hedge_quantile=0.9),
              *PEERS)
    for load in (0.5, 0.7, 0.9):
        print(f"{int(load * 100)}%", flush=True)
        for setting in chosen:
            runs = [simulate(scenario, setting, load=load, seconds=seconds, seed=seed)
                    for seed in range(1, seeds + 1)]
            print(f"  {setting.name:24s} p99 {statistics.median(r['p99_ms'] for r in runs):5.0f} / "
                  f"p99.9 {statistics.median(r['p999_ms'] for r in runs):5.0f} ms, "
                  f"{statistics.mean(r['pod_requests_per_request'] for r in runs):.3f} pod req/req", flush=True)
    return 0


def one_balancer(scenario: Scenario, load: float, seconds: float, seeds: int) -> tuple[str, float]:
    """The replicas' fleet and arrivals behind one balancer, under the best of katyusha's settings.

    What the replicas would reach if they shared one exact view of every pod (what each sent,
    what each pod holds) and chose the best setting for the fleet: the reference for a goal on
    several replicas that needs no knowledge of the requests' work. Returns the setting's name
    and its p99 (the median over the seeds)."""
    one = replace(scenario, replicas=1)
    best = None
    for setting in SETTINGS:
        if setting in PEERS:
            continue
        p99 = statistics.median(simulate(one, setting, load=load, seconds=seconds, seed=seed)["p99_ms"]
                                for seed in range(1, seeds + 1))
        if best is None or p99 < best[1]:
            best = (setting.name, p99)
    return best


def room(fleets: list[Scenario], load: float, seconds: float, seeds: int, path: str | None) -> int:
    """Print, per scenario, p99 of the clairvoyant reference, the defaults and the peer models, and
    the first two over the better peer model's; medians per split."""
    peers = PEERS
    default = SETTINGS[0]
    table: dict = {}
    for scenario in fleets:
        p99 = {}
        runs = {"clairvoyant": lambda seed, c=scenario: clairvoyant(c, load=load, seconds=seconds, seed=seed)}
        for setting in (default, *peers):
            runs[setting.name] = lambda seed, c=scenario, s=setting: simulate(c, s, load=load, seconds=seconds,
                                                                              seed=seed)
        for name, run in runs.items():
            p99[name] = statistics.median(run(seed)["p99_ms"] for seed in range(1, seeds + 1))
        best = min(p99[s.name] for s in peers)
        row = {"split": scenario.split, "p99_ms": p99,
               "clairvoyant_over_best_peer": round(p99["clairvoyant"] / best, 3),
               "default_over_best_peer": round(p99[default.name] / best, 3)}
        joined = ""
        if scenario.replicas > 1:
            name, p99_one = one_balancer(scenario, load, seconds, seeds)
            row["one_balancer"] = {"setting": name, "p99_ms": p99_one,
                                   "over_best_peer": round(p99_one / best, 3)}
            joined = f"  one balancer ({name})/peer {p99_one / best:.2f}"
        table[scenario.name] = row
        print(f"{scenario.name:14s} {scenario.split:8s} " + "  ".join(f"{k}: {v:.0f}" for k, v in p99.items())
              + f"   clairvoyant/peer {row['clairvoyant_over_best_peer']:.2f}"
              f"  default/peer {row['default_over_best_peer']:.2f}{joined}", flush=True)
    summary = {}
    for split in ("named", "tune", "heldout"):
        rows = [row for row in table.values() if row["split"] == split]
        if rows:
            summary[split] = {key: round(statistics.median(r[key] for r in rows), 3)
                              for key in ("clairvoyant_over_best_peer", "default_over_best_peer")}
            print(f"median {split:8s} clairvoyant/peer {summary[split]['clairvoyant_over_best_peer']:.2f}"
                  f"  default/peer {summary[split]['default_over_best_peer']:.2f}")
    if path:
        Path(path).write_text(json.dumps({"load": load, "seconds": seconds, "seeds": seeds, "wire_ms": WIRE_S * 1000,
                                          "scenarios": table, "median": summary}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.tail_model", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="simulated seconds per run")
    parser.add_argument("--seeds", type=int, default=3, help="runs per scenario and setting (seeds)")
    parser.add_argument("--drawn", type=int, default=8)
    parser.add_argument("--load", type=float, default=0.9)
    parser.add_argument("--wire-ms", type=float, default=WIRE_S * 1000,
                        help="one-way delay between katyusha and a pod, proxy work included (default 0.5)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--only", action="append", metavar="SETTING",
                        help="run only these settings (repeatable; the peer models always run), e.g. 'jsq cap1+1'")
    parser.add_argument("--hedging", action="store_true",
                        help="only: heavy-tail at 50, 70 and 90%% load, defaults beside hedging on")
    parser.add_argument("--room", action="store_true",
                        help="only: per scenario, the clairvoyant reference's p99 and the defaults' "
                             "over the better peer model's (how far below the peers a goal can go); "
                             "behind several replicas also one balancer's best setting")
    parser.add_argument("--scenario", action="append", metavar="NAME",
                        help="run only these scenarios (repeatable), e.g. replicas or drawn-3")
    args = parser.parse_args(argv)
    _set_wire(args.wire_ms / 1000.0)
    fleets = scenarios() + drawn_scenarios(args.drawn)
    if args.scenario:
        unknown = set(args.scenario) - {s.name for s in fleets}
        if unknown:
            parser.error(f"--scenario: no scenario named {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(s.name for s in fleets)})")
        fleets = [s for s in fleets if s.name in args.scenario]
    if args.hedging:
        return hedging(args.seconds, args.seeds)
    if args.room:
        return room(fleets, args.load, args.seconds, args.seeds, args.json)
    chosen = [s for s in SETTINGS if not args.only or s.name in args.only or s.name.startswith("peer")]
    table: dict = {}
    for scenario in fleets:
        table[scenario.name] = {"split": scenario.split}
        for setting in chosen:
            runs = [simulate(scenario, setting, load=args.load, seconds=args.seconds, seed=seed)
                    for seed in range(1, args.seeds + 1)]
            table[scenario.name][setting.name] = {
                "p99_ms": round(statistics.median(r["p99_ms"] for r in runs), 2),
                "p999_ms": round(statistics.median(r["p999_ms"] for r in runs), 2),
                "pod_requests_per_request": round(statistics.mean(r["pod_requests_per_request"] for r in runs), 4),
            }
        row = table[scenario.name]
        print(f"{scenario.name:14s} {scenario.split:8s} " + "  ".join(
            f"{s.name}: {row[s.name]['p99_ms']:.0f}" for s in chosen), flush=True)
    summary = {}
    peer_names = [s.name for s in chosen if s.name.startswith("peer")]
    for split in ("named", "tune", "heldout"):
        names = [n for n, row in table.items() if row["split"] == split]
        if not names:
            continue
        summary[split] = {}
        for setting in chosen:
            ratios = [table[n][setting.name]["p99_ms"] / min(table[n][p]["p99_ms"] for p in peer_names)
                      for n in names]
            summary[split][setting.name] = round(statistics.median(ratios), 3)
    print("\nmedian over scenarios of p99 / the better peer model's p99, per split:")
    for split, by_setting in summary.items():
        print(f"  {split:8s} " + "  ".join(f"{k}: {v:.2f}" for k, v in by_setting.items()))
    document = {"load": args.load, "seconds": args.seconds, "seeds": args.seeds,
                "scenarios": table, "median_ratio_to_best": summary}
    if args.json:
        Path(args.json).write_text(json.dumps(document, indent=2))
    from benchmarks import plots

    plots.write("tail_model", document, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
