"""Chaos: pods killed under load, nonna killed, katyusha restarted; what clients see.

Run as ``python -m benchmarks.chaos [--quick] [--run NAME ...] [--json PATH]``.

A fleet of real processes on loopback: 4 pods (sim-backend + nonna, container
concurrency 2, exponential service times of 20 ms) and katyusha in front with
its defaults (``--pod URL,admin=NONNA_ADMIN`` for each pod, nothing else). The
capacity is measured first (closed loop through katyusha), then each run loads
katyusha with the open-loop generator (benchmarks/loadgen.py: Poisson
arrivals) at 80% of it for 60 s (``--quick``: 20 s):

- ``baseline``: no fault (what "normal" latency is);
- ``kill-sim-get`` / ``kill-sim-post``: every 5 s one pod's sim-backend (the
  app) is SIGKILLed and started again 2 s later on its ports, pods in turn;
- ``kill-nonna-get`` / ``kill-nonna-post``: the same with the pod's nonna;
- ``sigterm-katyusha``: ``katyusha fleet up`` runs the fleet (same pods) and
  katyusha is SIGTERMed every 10 s under load; the fleet runner starts it
  again on the listening socket it holds (``--listen-fd``), so connections
  made meanwhile wait in the accept queue.

Every request is counted: sent, ok (2xx), failed (an answer that is not 2xx,
by status; or no connection at all: ``refused``), and unanswered (the request
went out and no answer came: the connection closed under it, ``reset``, or
the client's 10 s timeout). A failed POST is split by whether katyusha said it
may have run (``Katyusha-Maybe-Executed: true``: it reached the killed pod),
and every failure is checked against the faults: ``failed_not_at_a_kill``
counts those with no kill (or SIGTERM) between their sending and their answer.
Recovery: the p99 of requests sent from 2 s after each return of a pod (the
restarted process is ready) until the next kill (less the baseline's p99: a
request sent in that last moment meets the next fault), against the baseline's p99
and against the baseline run's own requests in the same windows (a window is
under a second, a few hundred requests: its p99 is one of the few slowest,
and moves with no fault at all); ``pooled``: all windows of a run together.

JSON: ``runs[name]`` with ``sent``, ``ok``, ``failed``, ``unanswered`` (and
detail), top-level ``success_ratio_get`` (ok / sent over the GET runs with
faults), ``unanswered_total`` (over every run), ``failed_not_at_a_kill_total``
and the worst recovery ratios over the runs (``recovery_*``); per run
``timeline`` (p99 of each 0.25 s around a return, beside the baseline's same
moments), ``readmit_lag_s`` (from a process's return to its pod back in
katyusha's ready set) and ``normal_from_s`` (the first offset from a return
from which the requests sent, all returns pooled, have a p99 within 10% of
the baseline's at the same moments); top-level ``normal_from_s_worst``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import loadgen
from benchmarks.checkout import use_tests
from katyusha.procs import stop_all

use_tests()  # tests.procs and friends, from any working folder

PODS = 4
CONCURRENCY = 2
SERVICE = "exp:20ms"
MEAN_S = 0.020
LOAD = 0.8
KILL_EVERY_S = 5.0
DOWN_FOR_S = 2.0
SIGTERM_EVERY_S = 10.0
CLIENT_TIMEOUT_S = 10.0
RUNS = ("baseline", "kill-sim-get", "kill-sim-post", "kill-nonna-get", "kill-nonna-post", "sigterm-katyusha")


@dataclass
class Pod:
    """One pod's two processes, restartable on the ports they first got."""

    index: int
    sim: object = None
    nonna: object = None
    sim_ports: tuple[str, str] = ("0", "0")
    nonna_ports: tuple[str, str] = ("0", "0")

    @property
    def name(self) -> str:
        return f"pod-{self.index}"

    def start_sim(self) -> None:
        from tests.procs import Proc, script

        self.sim = Proc([script("sim-backend"), "--port", self.sim_ports[0], "--admin-port", self.sim_ports[1],
                         "--pod", self.name, "--node", f"node-{self.index % 2 + 1}", "--state", "warm",
                         "--service-time", SERVICE, "--seed", str(self.index + 1)])
        self.sim_ports = (_port(self.sim.url), _port(self.sim.admin))

    def start_nonna(self) -> None:
        from tests.procs import Proc, script

        self.nonna = Proc([script("nonna"), "--port", self.nonna_ports[0], "--admin-port", self.nonna_ports[1],
                           "--upstream", self.sim.url, "--upstream-health", self.sim.admin + "/healthz",
                           "--concurrency", str(CONCURRENCY), "--pod", self.name,
                           "--node", f"node-{self.index % 2 + 1}"])
        self.nonna_ports = (_port(self.nonna.url), _port(self.nonna.admin))

    @property
    def spec(self) -> str:
        return f"{self.nonna.url},name={self.name},admin={self.nonna.admin}"

    def stop(self) -> None:
        stop_all([proc for proc in (self.nonna, self.sim) if proc is not None], timeout=5)


def _port(url: str) -> str:
    return url.rsplit(":", 1)[1]


@contextlib.contextmanager
def pods_running(count: int = PODS) -> Iterator[list[Pod]]:
    pods = [Pod(i) for i in range(count)]
    try:
        for pod in pods:
            pod.start_sim()
        for pod in pods:
            pod.start_nonna()
        yield pods
    finally:
        for pod in pods:
            pod.stop()


@contextlib.contextmanager
def katyusha_in_front(pods: list[Pod]) -> Iterator[object]:
    from tests.procs import Proc, script

    argv = [script("katyusha"), "serve", "--port", "0", "--admin-port", "0"]
    for pod in pods:
        argv += ["--pod", pod.spec]
    proc = Proc(argv, ready_timeout=30)
    try:
        yield proc
    finally:
        stop_all([proc], timeout=40)


def kill(proc) -> None:
    """SIGKILL a process started by tests.procs.Proc and reap it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.popen.pid, signal.SIGKILL)
    proc.popen.wait(5)


async def measure_capacity(url: str, seconds: float = 3.0, workers: int = 32) -> float:
    """Requests a second katyusha completes with ``workers`` requests always outstanding (closed loop)."""
    import aiohttp

    done = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker() -> None:
            nonlocal done
            while loop.time() < deadline:
                async with session.get(url + "/capacity") as response:
                    await response.read()
                    if response.status == 200:
                        done += 1

        started = loop.time()
        await asyncio.gather(*(worker() for _ in range(workers)))
        return done / (loop.time() - started)


@dataclass
class Chaos:
    """The faults of one run as they happened: (seconds into the run, what, pod)."""

    events: list[tuple[float, str, str]] = field(default_factory=list)
    readmitted: list[tuple[float, str]] = field(default_factory=list)  # (seconds, pod) back in katyusha's ready set

    def returns(self) -> list[float]:
        return [at for at, what, _ in self.events if what.endswith("-back")]

    def kills(self) -> list[float]:
        return [at for at, what, _ in self.events if what.startswith("kill") or what == "sigterm"]


async def kill_pods(pods: list[Pod], which: str, duration_s: float, chaos: Chaos, t0: float, *,
                    every_s: float = KILL_EVERY_S, down_s: float = DOWN_FOR_S) -> None:
    """Every ``every_s``, SIGKILL one pod's ``which`` process (pods in turn); start it ``down_s`` later."""
    loop = asyncio.get_running_loop()
    n = 0
    while True:
        at = every_s * (n + 1)
        if at + down_s + 1.0 > duration_s:
            return
        await asyncio.sleep(max(0.0, t0 + at - loop.time()))
        pod = pods[n % len(pods)]
        kill(getattr(pod, which))
        chaos.events.append((loop.time() - t0, f"kill-{which}", pod.name))
        await asyncio.sleep(down_s)
        await asyncio.to_thread(pod.start_sim if which == "sim" else pod.start_nonna)
        chaos.events.append((loop.time() - t0, f"{which}-back", pod.name))
        n += 1


async def watch_ready(proxy, chaos: Chaos, t0: float, duration_s: float, every_s: float = 0.1) -> None:
    """Record when each pod comes back into katyusha's ready set (its admin ``/pods``, every ``every_s``)."""
    loop = asyncio.get_running_loop()
    was: dict[str, bool] = {}
    while loop.time() - t0 < duration_s:
        with contextlib.suppress(OSError, ValueError):
            rows = await asyncio.to_thread(pod_health, proxy)
            at = loop.time() - t0
            for row in rows:
                if row["ready"] and was.get(row["name"]) is False:
                    chaos.readmitted.append((at, row["name"]))
                was[row["name"]] = bool(row["ready"])
        await asyncio.sleep(every_s)


async def load(url: str, rate: float, duration_s: float, method: str, seed: int):
    body = b'{"order": 1}' if method == "POST" else b""
    return await loadgen.run_open_loop(url, rate=rate, duration_s=duration_s, timeout_s=CLIENT_TIMEOUT_S,
                                       seed=seed, method=method, body=body, path="/work")


def summarize(result, chaos: Chaos, method: str, baseline_p99: float | None, baseline=None) -> dict:
    """One run's figures; ``baseline``: the baseline run's result, whose requests in the same
    windows as this run's recovery windows are the peer of their p99s."""
    samples = result.samples
    ok = [s for s in samples if 200 <= s.status < 300]
    failed: Counter = Counter()
    unanswered: Counter = Counter()
    maybe = other = 0
    for s in samples:
        if 200 <= s.status < 300:
            continue
        if s.status > 0:
            failed[str(s.status)] += 1
            if s.maybe_executed:
                maybe += 1
            else:
                other += 1
        elif s.cause in ("refused", "connect-error"):
            failed[s.cause] += 1
            other += 1
        else:
            unanswered[s.cause or "unknown"] += 1
    # A failure katyusha could not have avoided was outstanding when a process died: a kill (or
    # SIGTERM) fell between its sending and its answer. Any other failure is a fault of ours.
    kills = chaos.kills()
    not_at_a_kill = sum(1 for s in samples if not 200 <= s.status < 300
                        and not any(s.sent_at <= k <= s.sent_at + s.latency_ms / 1000 for k in kills))
    latencies = sorted(s.latency_ms for s in samples)
    out = {
        "method": method,
        "sent": len(samples),
        "ok": len(ok),
        "failed": sum(failed.values()),
        "unanswered": sum(unanswered.values()),
        "failed_by": dict(failed),
        "unanswered_by": dict(unanswered),
        "failed_maybe_executed": maybe,
        "failed_other": other,
        "failed_not_at_a_kill": not_at_a_kill,
        "success_ratio": round(len(ok) / len(samples), 6) if samples else None,
        "p50_ms": round(_quantile(latencies, 0.5), 1),
        "p99_ms": round(_quantile(latencies, 0.99), 1),
        "max_ms": round(latencies[-1], 1) if latencies else None,
        "events": [(round(at, 2), what, pod) for at, what, pod in chaos.events],
    }
    recovery = []
    # A window ends one normal p99 (the baseline's) before the next kill: a request sent later
    # would normally still be out when the next process dies, and is that fault's, not this
    # return's (the overall p50, p99 and failures count it).
    margin = (baseline_p99 or 0.0) / 1000
    for back in chaos.returns():
        start = back + 2.0
        end = min([k - margin for k in kills if k > back] + [result.duration_s])
        window = sorted(s.latency_ms for s in samples if start <= s.sent_at < end)
        if len(window) >= 20:
            recovery.append({"from_s": round(start, 2), "to_s": round(end, 2), "requests": len(window),
                             "p99_ms": round(_quantile(window, 0.99), 1)})
    out["recovery"] = recovery
    out.update(_after_returns(samples, chaos, kills, baseline, margin))
    if baseline_p99 and recovery:
        worst = max(r["p99_ms"] for r in recovery)
        middle = sorted(r["p99_ms"] for r in recovery)[len(recovery) // 2]
        out["recovery_worst_p99_ms"] = worst
        out["recovery_worst_vs_baseline"] = round(worst / baseline_p99, 2)
        out["recovery_median_vs_baseline"] = round(middle / baseline_p99, 2)
        pooled = _in_windows(samples, recovery)
        out["recovery_pooled_p99_ms"] = round(_quantile(pooled, 0.99), 1)
        out["recovery_pooled_vs_baseline"] = round(out["recovery_pooled_p99_ms"] / baseline_p99, 2)
    if baseline is not None and recovery:
        # The peer: the baseline run's requests sent in the same windows (same offsets, same
        # lengths). A window holds a few hundred requests, so its p99 is one of the slowest
        # few: how far that moves with no fault at all is what these windows show.
        peers = []
        for r in recovery:
            window = _in_windows(baseline.samples, [r])
            peers.append(_quantile(window, 0.99) if window else float("nan"))
            r["baseline_p99_ms"] = round(peers[-1], 1)
        worst_peer = max(peers)
        out["baseline_windows_worst_p99_ms"] = round(worst_peer, 1)
        out["recovery_worst_vs_baseline_windows"] = round(out["recovery_worst_p99_ms"] / worst_peer, 2)
        same = _in_windows(baseline.samples, recovery)
        out["baseline_windows_pooled_p99_ms"] = round(_quantile(same, 0.99), 1)
        out["recovery_pooled_vs_baseline_windows"] = round(
            out["recovery_pooled_p99_ms"] / out["baseline_windows_pooled_p99_ms"], 2)
    return out


TIMELINE_STEP_S = 0.25
NORMAL_WITHIN = 1.1  # a p99 within 10% of the baseline's at the same moments is "back to normal"
TIMELINE_SPAN_S = (-0.5, 3.0)


def _after_returns(samples, chaos: Chaos, kills: list[float], baseline, margin: float) -> dict:
    """What happens around a pod's return, pooled over the returns of a run.

    ``readmit_lag_s``: from each process's return to its pod back in
    katyusha's ready set (probes); ``timeline``: for each 0.25 s step from a
    return (requests sent then, up to the next kill), the pooled p99 and its
    peer, the baseline run's requests at the same moments; ``normal_from_s``
    (with a baseline): see the module doc. A window ends ``margin`` seconds
    (the baseline's p99) before the next kill.
    """
    out: dict = {}
    returns = [(at, pod) for at, what, pod in chaos.events if what.endswith("-back") and what != "katyusha-back"]
    lags = []
    for back, pod in returns:
        later = [at for at, name in chaos.readmitted if name == pod and at >= back - 0.05]
        if later:
            lags.append(round(min(later) - back, 2))
    if lags:
        out["readmit_lag_s"] = {"median": sorted(lags)[len(lags) // 2], "max": max(lags), "all": lags}
    backs = [at for at, _ in returns] or chaos.returns()
    if not backs:
        return out
    timeline = []
    lo, hi = TIMELINE_SPAN_S
    steps = round((hi - lo) / TIMELINE_STEP_S)
    for i in range(steps):
        offset = lo + i * TIMELINE_STEP_S
        windows = []
        for back in backs:
            end = min([k for k in kills if k > back] + [float("inf")])
            start, stop = back + offset, min(back + offset + TIMELINE_STEP_S, end)
            if stop > start:
                windows.append({"from_s": start, "to_s": stop})
        here = _in_windows(samples, windows)
        row = {"offset_s": round(offset, 2), "requests": len(here),
               "p99_ms": round(_quantile(here, 0.99), 1) if here else None}
        if baseline is not None:
            peer = _in_windows(baseline.samples, windows)
            row["baseline_p99_ms"] = round(_quantile(peer, 0.99), 1) if peer else None
        timeline.append(row)
    out["timeline"] = timeline
    if baseline is not None:
        # From each offset on (to one baseline p99 before the next kill), all returns pooled: the
        # first offset whose p99 is within NORMAL_WITHIN of the baseline's at the same moments.
        ratios = []
        for i in range(steps):
            offset = i * TIMELINE_STEP_S
            windows = [{"from_s": back + offset, "to_s": end}
                       for back in backs
                       if (end := min([k - margin for k in kills if k > back] + [float("inf")])) > back + offset]
            here, peer = _in_windows(samples, windows), _in_windows(baseline.samples, windows)
            if len(here) < 100 or len(peer) < 100:
                break
            ratios.append((round(offset, 2), round(_quantile(here, 0.99) / _quantile(peer, 0.99), 2)))
        out["p99_from_offset_vs_baseline"] = ratios
        out["normal_from_s"] = next((offset for offset, ratio in ratios if ratio <= NORMAL_WITHIN), None)
    return out


def _in_windows(samples, windows: list[dict]) -> list[float]:
    """Sorted latencies of the requests sent within any of ``windows`` (``from_s`` to ``to_s``)."""
    return sorted(s.latency_ms for s in samples
                  if any(w["from_s"] <= s.sent_at < w["to_s"] for w in windows))


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def pod_health(proxy) -> list[dict]:
    with urllib.request.urlopen(proxy.admin + "/pods", timeout=5) as reply:
        rows = json.loads(reply.read())["pods"]
    return [{key: row.get(key) for key in ("name", "health", "ready", "downs", "returns", "ejections",
                                            "failures", "requests")} for row in rows]


def wait_all_ready(proxy, timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(row["ready"] for row in pod_health(proxy)):
            return True
        time.sleep(0.1)
    return False


async def pod_run(proxy, pods: list[Pod], which: str | None, method: str, rate: float, duration_s: float,
                  seed: int, **schedule) -> tuple[object, Chaos]:
    """One run: the load, and (``which``: ``sim`` or ``nonna``) the kills; ``schedule``: ``every_s``, ``down_s``."""
    chaos = Chaos()
    t0 = asyncio.get_running_loop().time()
    tasks = [load(proxy.url, rate, duration_s, method, seed)]
    if which is not None:
        tasks.append(kill_pods(pods, which, duration_s, chaos, t0, **schedule))
        tasks.append(watch_ready(proxy, chaos, t0, duration_s))
    result, *_ = await asyncio.gather(*tasks)
    return result, chaos


FLEET_YAML = f"""
pods: {PODS}
nodes: 2
runner:
  poll_interval_s: 0.5
defaults:
  service_time: {SERVICE}
  concurrency: {CONCURRENCY}
"""


async def sigterm_run(rate: float, duration_s: float, seed: int) -> tuple[object, Chaos, dict]:
    """``katyusha fleet up`` with the same pods; katyusha SIGTERMed every SIGTERM_EVERY_S, restarted by the runner."""
    from tests.procs import FleetUp, wait_for

    with tempfile.TemporaryDirectory(prefix="chaos-fleet-") as tmp:
        up = FleetUp(Path(tmp), FLEET_YAML)
        try:
            doc = await asyncio.to_thread(up.wait_ready, 60)
            url = doc["katyusha"][0]["data"]
            state_file = up.state_file
            await asyncio.to_thread(wait_for, lambda: len(json.loads(urllib.request.urlopen(
                doc["katyusha"][0]["admin"] + "/pods", timeout=5).read())["pods"]) == PODS, 30, "pods in set")
            chaos = Chaos()
            loop = asyncio.get_running_loop()
            t0 = loop.time()

            async def sigterms() -> None:
                n = 0
                while (at := SIGTERM_EVERY_S * n + KILL_EVERY_S) + 3.0 < duration_s:
                    await asyncio.sleep(max(0.0, t0 + at - loop.time()))
                    current = json.loads(state_file.read_text())["katyusha"][0]
                    os.kill(current["pid"], signal.SIGTERM)
                    chaos.events.append((loop.time() - t0, "sigterm", "katyusha-0"))
                    # The runner writes the new pid once katyusha is back on its port.
                    while json.loads(state_file.read_text())["katyusha"][0]["pid"] == current["pid"]:
                        await asyncio.sleep(0.05)
                    chaos.events.append((loop.time() - t0, "katyusha-back", "katyusha-0"))
                    n += 1

            result, _ = await asyncio.gather(load(url, rate, duration_s, "GET", seed), sigterms())
            restarts = json.loads(state_file.read_text())["katyusha"][0]["restarts"]
            return result, chaos, {"katyusha_restarts": restarts}
        finally:
            await asyncio.to_thread(up.stop)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="20 s runs instead of 60 s, same keys")
    parser.add_argument("--duration", type=float, help="seconds per run (default 60, quick 20)")
    parser.add_argument("--run", action="append", choices=RUNS, help="run only these (repeatable)")
    parser.add_argument("--rate", type=float, help="requests a second (default: 80%% of the measured capacity)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    duration = args.duration or (20.0 if args.quick else 60.0)
    chosen = [name for name in RUNS if not args.run or name in args.run]
    nominal = PODS * CONCURRENCY / MEAN_S
    runs: dict[str, dict] = {}
    document: dict = {"pods": PODS, "concurrency": CONCURRENCY, "service_time": SERVICE, "duration_s": duration,
                      "kill_every_s": KILL_EVERY_S, "down_for_s": DOWN_FOR_S, "nominal_capacity_rps": nominal}
    with pods_running() as pods:
        with katyusha_in_front(pods) as proxy:
            measured = asyncio.run(measure_capacity(proxy.url))
            rate = args.rate or LOAD * min(measured, nominal)
            document.update(measured_capacity_rps=round(measured, 1), rate=round(rate, 1))
            print(f"capacity: nominal {nominal:.0f} req/s, measured {measured:.0f} req/s through katyusha; "
                  f"load {rate:.0f} req/s for {duration:g} s per run", flush=True)
            baseline_p99 = baseline = None
            for seed, name in enumerate(chosen, start=11):
                if name == "sigterm-katyusha":
                    continue
                which = None if name == "baseline" else name.split("-")[1]
                method = "POST" if name.endswith("post") else "GET"
                wait_all_ready(proxy)
                result, chaos = asyncio.run(pod_run(proxy, pods, which, method, rate, duration, seed))
                row = summarize(result, chaos, method, baseline_p99, baseline)
                row["all_pods_back"] = wait_all_ready(proxy)
                row["pods"] = pod_health(proxy)
                if name == "baseline":
                    baseline_p99, baseline = row["p99_ms"], result
                runs[name] = row
                _print(name, row)
    if "sigterm-katyusha" in chosen:
        result, chaos, extra = asyncio.run(sigterm_run(rate, duration, 99))
        row = summarize(result, chaos, "GET", baseline_p99, baseline)
        row.update(extra)
        runs["sigterm-katyusha"] = row
        _print("sigterm-katyusha", row)
    get_runs = [row for name, row in runs.items() if row["method"] == "GET" and name != "baseline"]
    pod_get_runs = [row for name, row in runs.items() if name in ("kill-sim-get", "kill-nonna-get")]
    document["runs"] = runs
    document["success_ratio_get"] = _ratio(get_runs)
    document["success_ratio_get_pod_faults"] = _ratio(pod_get_runs)
    document["unanswered_total"] = sum(row["unanswered"] for row in runs.values())
    document["post_failed_other_total"] = sum(row["failed_other"] for row in runs.values() if row["method"] == "POST")
    document["failed_not_at_a_kill_total"] = sum(row["failed_not_at_a_kill"] for row in runs.values())
    document["quick"] = args.quick
    pod_runs = [row for name, row in runs.items() if name.startswith("kill-") and "normal_from_s" in row]
    document["normal_from_s_worst"] = (None if not pod_runs or any(r["normal_from_s"] is None for r in pod_runs)
                                       else max(r["normal_from_s"] for r in pod_runs))
    for key in ("recovery_worst_vs_baseline", "recovery_pooled_vs_baseline",
                "recovery_worst_vs_baseline_windows", "recovery_pooled_vs_baseline_windows"):
        values = [row[key] for row in runs.values() if key in row]
        document[key] = max(values) if values else None
    print(f"GET success ratio under faults: {document['success_ratio_get']} (pod faults only: "
          f"{document['success_ratio_get_pod_faults']}); never answered in all runs: "
          f"{document['unanswered_total']}; POST failures that never reached a killed pod: "
          f"{document['post_failed_other_total']}; failures with no kill while they were out: "
          f"{document['failed_not_at_a_kill_total']}")
    print(f"p99 from 2 s after a return, worst over the runs: worst window / baseline p99 "
          f"{document['recovery_worst_vs_baseline']}, pooled {document['recovery_pooled_vs_baseline']}; "
          f"against the baseline's same windows: worst {document['recovery_worst_vs_baseline_windows']}, "
          f"pooled {document['recovery_pooled_vs_baseline_windows']}; back to normal (p99 within "
          f"{NORMAL_WITHIN:g}x of the baseline's at the same moments) from {document['normal_from_s_worst']} s "
          f"after a return at the latest")
    from benchmarks import plots

    plots.save("chaos", document, args.json)
    return 0


def _ratio(rows: list[dict]) -> float | None:
    sent = sum(row["sent"] for row in rows)
    return round(sum(row["ok"] for row in rows) / sent, 6) if sent else None


def _print(name: str, row: dict) -> None:
    recovery = row.get("recovery_worst_vs_baseline")
    print(f"  {name:18s} sent {row['sent']:6d}  ok {row['ok']:6d}  failed {row['failed']:4d} {row['failed_by']}"
          f"  unanswered {row['unanswered']:3d} {row['unanswered_by']}  p50 {row['p50_ms']:.0f}  "
          f"p99 {row['p99_ms']:.0f}  max {row['max_ms']:.0f} ms", flush=True)
    if recovery is not None:
        print(f"  {'':18s} p99 from 2 s after a return: worst window / baseline p99 {recovery}, "
              f"median {row['recovery_median_vs_baseline']}, all windows pooled {row['recovery_pooled_vs_baseline']}"
              + (f"; against the baseline's same windows: worst {row['recovery_worst_vs_baseline_windows']}, "
                 f"pooled {row['recovery_pooled_vs_baseline_windows']}"
                 if "recovery_worst_vs_baseline_windows" in row else ""), flush=True)
    if "readmit_lag_s" in row:
        lag = row["readmit_lag_s"]
        print(f"  {'':18s} back in katyusha's ready set after a process's return: median {lag['median']} s, "
              f"max {lag['max']} s", flush=True)
    if "timeline" in row:
        cells = [f"{t['offset_s']:+.2f}s {t['p99_ms']}" + (f"/{t['baseline_p99_ms']}" if "baseline_p99_ms" in t else "")
                 for t in row["timeline"] if t["p99_ms"] is not None]
        print(f"  {'':18s} p99 ms after a return (/ the baseline's same moments): " + ", ".join(cells), flush=True)
    if "normal_from_s" in row:
        print(f"  {'':18s} p99 of the requests sent from N s after a return on, over the baseline's at the same "
              f"moments: " + ", ".join(f"{o:g}s {r}" for o, r in row["p99_from_offset_vs_baseline"])
              + f"; back to normal (within {NORMAL_WITHIN:g}x) from {row['normal_from_s']} s", flush=True)
    if row["method"] == "POST":
        print(f"  {'':18s} failed POSTs: {row['failed_maybe_executed']} may have run (reached the killed pod), "
              f"{row['failed_other']} other; {row['failed_not_at_a_kill']} failed with no kill while they were out",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
