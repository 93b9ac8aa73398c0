"""katyusha as a drop-in proxy: in front of plain apps with no nonna, beside nginx and HAProxy.

Run as ``python -m benchmarks.dropin [--quick] [--runs N] [--json PATH]``.
Needs nginx and haproxy on PATH (``make bench-deps``).

Four plain uvicorn + Starlette apps (``tests/plain_app.py``: no nonna, so no
piggybacked load; each serves one request at a time, exponential service
times of 20 ms, one app four times slower) are started once. katyusha with
its defaults (``katyusha serve --pod URL`` for each app, nothing else), nginx
``least_conn`` and HAProxy ``leastconn`` (one worker each, keep-alive to the
apps) are put in front of the same apps in turn and loaded by the open-loop
generator (benchmarks/loadgen.py: Poisson arrivals) at 80% of the apps'
capacity. Every system gets the same arrival schedule, the same warm-up and
idle apps at its start; the systems are interleaved, in a rotated order, for
``--runs`` rounds, so a change in the machine's load does not fall on one side.

Printed and in the JSON: p50, p99, errors of each system in each run; per
run and as the median over runs, ``p99_ratio_vs_best_peer`` (katyusha's p99
over the better peer's p99 in the same run; below 1: katyusha is better) and
``errors`` (katyusha's share of failed requests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import statistics
import sys
import time
import urllib.request
from collections.abc import Iterator

from benchmarks import loadgen, peers
from benchmarks.checkout import child_env, use_tests
from katyusha.procs import stop_all

use_tests()  # tests.procs and friends, from any working folder

MEAN_SERVICE_S = 0.020
SPEEDS = (1.0, 1.0, 1.0, 0.25)
LOAD = 0.8
WARMUP_S = 1.0
SYSTEMS = ("katyusha", "nginx least_conn", "haproxy leastconn")


def capacity_rps() -> float:
    # One request at a time per app: an app completes speed / mean service time a second.
    return sum(speed / MEAN_SERVICE_S for speed in SPEEDS)


@contextlib.contextmanager
def apps() -> Iterator[list]:
    from tests.procs import Proc

    started = []
    try:
        for i, speed in enumerate(SPEEDS):
            mean_ms = MEAN_SERVICE_S * 1000 / speed
            started.append(Proc([sys.executable, "-m", "tests.plain_app", "--name", f"app-{i}",
                                 "--service-time", f"exp:{mean_ms:g}ms", "--concurrency", "1",
                                 "--seed", str(i + 1)], env=child_env()))
        yield started
    finally:
        for proc in started:
            proc.kill()


def holding(app) -> int:
    with urllib.request.urlopen(app.url + "/control", timeout=5) as reply:
        return int(json.loads(reply.read())["in_flight"])


def wait_idle(running: list, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(holding(app) for app in running):
        time.sleep(0.05)


@contextlib.contextmanager
def system(name: str, running: list, extra: tuple[str, ...]) -> Iterator[str]:
    urls = [app.url for app in running]
    if name == "katyusha":
        from tests.procs import Proc, script

        argv = [script("katyusha"), "serve", "--port", "0", "--admin-port", "0", "--seed", "1", *extra]
        for i, url in enumerate(urls):
            argv += ["--pod", f"{url},name=app-{i}"]
        proc = Proc(argv, ready_timeout=30)
        try:
            yield proc.url
        finally:
            stop_all([proc])
    elif name == "nginx least_conn":
        with peers.nginx_proxy(urls, balance="least_conn") as run:
            yield run.url
    else:
        with peers.haproxy_proxy(urls, balance="leastconn") as run:
            yield run.url


def measure(url: str, running: list, rate: float, duration_s: float, seed: int) -> dict:
    wait_idle(running)
    asyncio.run(loadgen.run_open_loop(url, rate=min(rate, 100), duration_s=WARMUP_S, seed=99))
    wait_idle(running)
    result = asyncio.run(loadgen.run_open_loop(url, rate=rate, duration_s=duration_s, timeout_s=10.0,
                                               seed=seed))
    summary = result.summary()
    return {key: summary[key] for key in ("sent", "p50_ms", "p99_ms", "p999_ms", "errors", "statuses")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dropin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (6 s, 2 rounds), same keys")
    parser.add_argument("--duration", type=float, help="seconds per measured run (default 20)")
    parser.add_argument("--runs", type=int, help="interleaved rounds (default 3)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--katyusha-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `katyusha serve` (repeatable); the default is none")
    args = parser.parse_args(argv)
    peers.require("nginx", "haproxy")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    duration = args.duration or (6.0 if args.quick else 20.0)
    runs = args.runs or (2 if args.quick else 3)
    rate = capacity_rps() * LOAD
    print(f"4 plain apps (concurrency 1, exp {MEAN_SERVICE_S * 1000:g} ms, one 4x slower), capacity "
          f"{capacity_rps():.1f} req/s; {LOAD:.0%} load = {rate:.1f} req/s, {duration:g} s x {runs} runs",
          flush=True)
    results: dict[str, list[dict]] = {name: [] for name in SYSTEMS}
    with apps() as running:
        for run in range(runs):
            order = SYSTEMS[run % len(SYSTEMS):] + SYSTEMS[:run % len(SYSTEMS)]
            for name in order:
                with system(name, running, tuple(args.katyusha_arg)) as url:
                    row = measure(url, running, rate, duration, seed=7 + run)
                results[name].append(row)
                print(f"  run {run + 1} {name:20s} p50 {row['p50_ms']:7.1f}  p99 {row['p99_ms']:7.1f}"
                      f"  p99.9 {row['p999_ms']:7.1f} ms  errors {row['errors']:.4f}", flush=True)
    ratios = []
    for run in range(runs):
        best = min(results[name][run]["p99_ms"] for name in SYSTEMS[1:])
        ratios.append(round(results["katyusha"][run]["p99_ms"] / best, 3))
    katyusha_errors = sum(r["errors"] * r["sent"] for r in results["katyusha"]) / sum(
        r["sent"] for r in results["katyusha"])
    document = {
        "apps": {"speeds": list(SPEEDS), "mean_service_ms": MEAN_SERVICE_S * 1000, "concurrency": 1},
        "rate": round(rate, 1), "load": LOAD, "duration_s": duration, "runs": runs,
        "katyusha_args": args.katyusha_arg,
        "systems": results,
        "median_p99_ms": {name: statistics.median(r["p99_ms"] for r in rows) for name, rows in results.items()},
        "median_p50_ms": {name: statistics.median(r["p50_ms"] for r in rows) for name, rows in results.items()},
        "p99_ratio_vs_best_peer_by_run": ratios,
        "p99_ratio_vs_best_peer": statistics.median(ratios),
        "errors": round(katyusha_errors, 5),
        "peer_errors": {name: max(r["errors"] for r in results[name]) for name in SYSTEMS[1:]},
        "quick": args.quick,
    }
    print(f"katyusha p99 / best peer p99 per run: {ratios}; median {document['p99_ratio_vs_best_peer']:.2f}; "
          f"katyusha errors {katyusha_errors:.4%}")
    from benchmarks import plots

    plots.save("dropin", document, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
