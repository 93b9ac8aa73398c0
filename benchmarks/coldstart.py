"""Scale from zero: a step of load on an idle fleet at zero pods, through katyusha and through nginx.

Run as ``python -m benchmarks.coldstart [--quick] [--json PATH] [--plot PATH]``.
Needs nginx on PATH for the peer (``make bench-deps``); installs nothing.

A local fleet (``katyusha fleet up --autoscale``) starts with every pod null.
After a short idle time, an open-loop Poisson step of load
(:func:`benchmarks.loadgen.run_open_loop`) hits katyusha, then silence. While
no pod is warm katyusha holds the requests in its L1 queue and tells the
autoscaler, which wakes pods (image pull plus container start, real delays);
the held requests are served once a pod is warm. The run reports the time to
the first response, p50 and p99 latency over the step, errors, the pods over
time, and how long the silence takes to bring the fleet back to zero.

The peer: nginx in front of the same pods' nonnas, the same step, with every
pod woken at the step's first instant (the best an external autoscaler could
do). nginx cannot hold a request while no pod serves, so what arrives during
the cold start fails: its errors are the peer figure.

``--quick`` (under a minute) keeps every key with short windows (stable
window 6 s, grace 2 s, tick 0.5 s). JSON keys: ``errors``, ``peer_errors``,
``first_response_s``, ``p99_ms``, ``back_to_zero_s`` and more.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from benchmarks import peers
from benchmarks.loadgen import RunResult, run_open_loop
from katyusha.procs import script


@dataclass(frozen=True)
class Plan:
    pods: int
    rate: float
    step_s: float
    idle_s: float
    stable_window_s: int
    grace_s: float
    tick_s: float
    image_mb: float
    pull_mbps: float
    start_s: float

    @property
    def cold_start_s(self) -> float:
        return self.image_mb / self.pull_mbps + self.start_s


QUICK = Plan(pods=3, rate=60, step_s=8, idle_s=1, stable_window_s=6, grace_s=2, tick_s=0.5,
             image_mb=20, pull_mbps=40, start_s=0.5)  # fmt: skip
FULL = Plan(pods=4, rate=120, step_s=20, idle_s=3, stable_window_s=20, grace_s=5, tick_s=1,
            image_mb=50, pull_mbps=50, start_s=1.0)  # fmt: skip


def fleet_yaml(plan: Plan) -> str:
    # Pods start null and retire to null, so the peer's run starts from the same cold state.
    return f"""
nodes: 2
pods: {plan.pods}
katyusha:
  port: 0
  admin_port: 0
  args: ["--request-timeout", "30"]
defaults:
  service_time: exp:20ms
  concurrency: 4
  queue_depth: 500
  image_size_mb: {plan.image_mb:g}
  pull_mbps: {plan.pull_mbps:g}
  start_s: {plan.start_s:g}
autoscaler:
  retire-to: null
  stable-window: {plan.stable_window_s}s
  scale-to-zero-grace-period: {plan.grace_s:g}s
  tick-interval: {plan.tick_s:g}s
  initial-scale: 0
  allow-zero-initial-scale: true
  container-concurrency-target-default: 10
runner:
  poll_interval_s: 0.2
"""


def get_json(url: str, timeout: float = 5.0):
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def put_json(url: str, body: dict, timeout: float = 5.0) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT",
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


class FleetProcess:
    """``katyusha fleet up --autoscale`` as a child process."""

    def __init__(self, fleet_file: Path, state_file: Path):
        self.state_file = state_file
        self.popen = subprocess.Popen(
            [script("katyusha"), "fleet", "up", "--autoscale", "--fleet", str(fleet_file),
             "--state-file", str(state_file)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    def wait_ready(self, timeout: float = 90) -> dict:
        deadline = time.monotonic() + timeout
        while not any(line.startswith("send traffic to: ") for line in self.lines):
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("the fleet did not start:\n" + "".join(self.lines[-40:]))
            time.sleep(0.1)
        return json.loads(self.state_file.read_text())

    def stop(self, doc: dict | None) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                pass
        pids = [self.popen.pid]
        if doc:
            pids += [p["pid"] for p in doc["katyusha"]]
            pids += [p[role]["pid"] for p in doc["pods"] for role in ("sim", "nonna")]
        for pid in pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class PodSampler:
    """Samples the autoscaler's view (serving, starting, desired pods) every ``period`` seconds."""

    def __init__(self, autoscaler_admin: str, origin: float, period: float = 0.25):
        self.url = autoscaler_admin + "/autoscaler"
        self.origin = origin
        self.period = period
        self.samples: list[dict] = []

    async def run(self, stop: asyncio.Event) -> None:
        from katyusha.progress import bar

        # On a terminal: pods serving against desired as the autoscaler moves.
        progress = bar(None, "pods serving", "pod", bar_format="{desc}: {postfix} [{elapsed}]")
        try:
            await self._sample(stop, progress)
        finally:
            progress.close()

    async def _sample(self, stop: asyncio.Event, progress) -> None:
        while not stop.is_set():
            try:
                view = await asyncio.to_thread(get_json, self.url, 2.0)
                pods = view.get("pods") or {}
                progress.set_postfix_str(f"{pods.get('serving', 0)} serving, {pods.get('waking', 0)} starting, "
                                         f"{view.get('desired', 0)} desired")
                self.samples.append({
                    "t": round(time.monotonic() - self.origin, 3),
                    "serving": pods.get("serving", 0),
                    "starting": pods.get("waking", 0),
                    "retiring": pods.get("retiring", 0),
                    "desired": view.get("desired", 0),
                    "panic": bool((view.get("decision") or {}).get("panic")),
                })
            except OSError:
                pass
            try:
                await asyncio.wait_for(stop.wait(), self.period)
            except TimeoutError:
                pass

    def at_zero(self) -> bool:
        last = self.samples[-1] if self.samples else None
        return bool(last) and last["serving"] == 0 and last["starting"] == 0 and last["retiring"] == 0


def step_figures(result: RunResult) -> dict:
    ok = result.ok
    first = min((s.sent_at + s.latency_ms / 1000 for s in ok), default=None)
    return {
        "sent": result.sent,
        "errors": result.sent - len(ok),
        "first_response_s": round(first, 3) if first is not None else None,
        "p50_ms": round(result.quantile_ms(0.5), 1),
        "p99_ms": round(result.quantile_ms(0.99), 1),
        "statuses": result.summary()["statuses"],
    }


async def katyusha_run(plan: Plan, doc: dict) -> tuple[dict, list[dict], RunResult]:
    origin = time.monotonic()
    sampler = PodSampler(doc["autoscaler"]["admin"], origin)
    stop = asyncio.Event()
    sampling = asyncio.create_task(sampler.run(stop))
    await asyncio.sleep(plan.idle_s)
    step_at = time.monotonic() - origin
    result = await run_open_loop(doc["url"], rate=plan.rate, duration_s=plan.step_s, timeout_s=30, seed=7)
    step_end = step_at + plan.step_s
    # Silence: wait (bounded) for the fleet to be back at zero pods.
    limit = plan.stable_window_s + plan.grace_s + 30
    back = None
    while time.monotonic() - origin < step_end + limit:
        await asyncio.sleep(0.25)
        if sampler.at_zero() and sampler.samples[-1]["t"] > step_end:
            back = sampler.samples[-1]["t"] - max(step_end, step_at + max(s.sent_at for s in result.samples))
            break
    stop.set()
    await sampling
    figures = step_figures(result)
    figures["back_to_zero_s"] = round(back, 2) if back is not None else None
    figures["max_pods"] = max((s["serving"] for s in sampler.samples), default=0)
    figures["step_at_s"] = round(step_at, 3)
    view = await asyncio.to_thread(get_json, doc["autoscaler"]["admin"] + "/autoscaler")
    figures["cold_starts"] = view["cold_starts"]
    return figures, sampler.samples, result


async def peer_run(plan: Plan, doc: dict) -> tuple[dict, RunResult]:
    nonnas = [pod["nonna"]["data"] for pod in doc["pods"]]
    with peers.nginx_proxy(nonnas) as nginx:

        async def wake_all() -> None:
            await asyncio.gather(*(
                asyncio.to_thread(put_json, pod["sim"]["admin"] + "/state", {"state": "warm", "path": "auto"})
                for pod in doc["pods"]
            ))  # fmt: skip

        load = asyncio.create_task(
            run_open_loop(nginx.url, rate=plan.rate, duration_s=plan.step_s, timeout_s=30, seed=7)
        )
        await wake_all()
        result = await load
    return step_figures(result), result


def plot(path: Path, plan: Plan, figures: dict, samples: list[dict], result: RunResult, peer: RunResult | None) -> None:
    """Load, pods and every request's latency over time (benchmarks.plots.step_timeline)."""
    from benchmarks import plots

    step_at = figures["step_at_s"]
    bins = 0.5
    horizon = max([s["t"] for s in samples] + [step_at + plan.step_s])
    edges = [i * bins for i in range(int(horizon / bins) + 2)]
    counts = [0] * len(edges)
    for sample in result.samples:
        counts[min(len(edges) - 1, int((step_at + sample.sent_at) / bins))] += 1
    points = {"katyusha ok": [(step_at + s.sent_at, s.latency_ms) for s in result.samples if 200 <= s.status < 300],
              "katyusha error": [(step_at + s.sent_at, s.latency_ms) for s in result.samples
                                 if not 200 <= s.status < 300]}
    if peer is not None:
        points["nginx error (same step, separate run)"] = [
            (step_at + s.sent_at, max(s.latency_ms, 0.1)) for s in peer.samples if not 200 <= s.status < 300]
    plots.step_timeline(path, title=f"scale from zero: {plan.rate:g} req/s for {plan.step_s:g}s, cold start "
                                    f"{plan.cold_start_s:.2f}s",
                        load=(edges, [c / bins for c in counts]), samples=samples, latencies=points)


async def measure(plan: Plan, plot_path: Path | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-coldstart-") as tmp:
        fleet_file = Path(tmp) / "fleet.yaml"
        fleet_file.write_text(fleet_yaml(plan))
        fleet = FleetProcess(fleet_file, Path(tmp) / "state.json")
        doc = None
        try:
            doc = fleet.wait_ready()
            figures, samples, result = await katyusha_run(plan, doc)
            peer_figures, peer_result = None, None
            try:
                peers.require("nginx")
                peer_figures, peer_result = await peer_run(plan, doc)
            except SystemExit as exc:  # nginx missing: report without the peer
                print(f"peer skipped: {exc}", file=sys.stderr)
        finally:
            fleet.stop(doc)
    report = {
        "plan": {**plan.__dict__, "cold_start_s": plan.cold_start_s},
        "errors": figures["errors"],
        "peer_errors": peer_figures["errors"] if peer_figures else None,
        "first_response_s": figures["first_response_s"],
        "p50_ms": figures["p50_ms"],
        "p99_ms": figures["p99_ms"],
        "back_to_zero_s": figures["back_to_zero_s"],
        "sent": figures["sent"],
        "max_pods": figures["max_pods"],
        "cold_starts": figures["cold_starts"],
        "statuses": figures["statuses"],
        "peer": peer_figures,
        "pods_over_time": samples,
    }
    if plot_path is not None:
        plot(plot_path, plan, figures, samples, result, peer_result)
        report["plot"] = str(plot_path)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.coldstart", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="short windows and step: under a minute")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON")
    parser.add_argument("--plot", metavar="PATH", help="PNG of load, pods and latency (default: beside --json)")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plot_path = Path(args.plot) if args.plot else (Path(args.json).with_suffix(".png") if args.json else None)
    report = asyncio.run(measure(plan, plot_path))
    peer = report["peer"] or {}
    print(f"step {plan.rate:g} req/s x {plan.step_s:g}s on {plan.pods} pods at zero, cold start "
          f"{plan.cold_start_s:.2f}s")  # fmt: skip
    print(f"{'':10} {'errors':>8} {'first ok s':>11} {'p50 ms':>8} {'p99 ms':>8}")
    print(f"{'katyusha':10} {report['errors']:>8} {_f(report['first_response_s']):>11} "
          f"{_f(report['p50_ms']):>8} {_f(report['p99_ms']):>8}")  # fmt: skip
    if peer:
        print(f"{'nginx':10} {peer['errors']:>8} {_f(peer['first_response_s']):>11} "
              f"{_f(peer['p50_ms']):>8} {_f(peer['p99_ms']):>8}")  # fmt: skip
    print(f"back to zero {_f(report['back_to_zero_s'])}s after the step; most pods serving: {report['max_pods']}")
    from benchmarks import plots

    plots.save("coldstart", report, args.json)
    if "plot" in report:
        print(f"plot: {report['plot']}")
    return 0


def _f(value) -> str:
    return "-" if value is None else f"{value:g}"


if __name__ == "__main__":
    raise SystemExit(main())
