"""The simulator's event loop against SimPy's, on the same M/M/1 queue: events per second of wall time.

Run as ``python -m benchmarks.sim_clock [--requests N]``. SimPy is not a
dependency of katyusha: install it beside (``pip install simpy``) to see
the peer; without it only katyusha.sim.clock is measured.

Both model the same queue with the same draws: Poisson arrivals, exponential
service, one server, first-in first-out. katyusha.sim.clock schedules plain
callbacks (what the simulator does: the core objects are plain calls taking
``now``); SimPy runs the textbook process model (an arrival generator, one
process per request, a ``Resource``). Both print the mean wait, which must
agree, and the wall time.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import deque

from katyusha.sim.clock import Environment


def with_clock(requests: int, rate: float, service: float, seed: int) -> tuple[float, float]:
    env = Environment()
    rng = random.Random(seed)
    queue: deque[float] = deque()
    busy = [False]
    waits = []
    left = [requests]

    def arrive(_):
        left[0] -= 1
        if left[0] > 0:
            env.after(rng.expovariate(rate), arrive)
        if busy[0]:
            queue.append(env.now)
        else:
            busy[0] = True
            waits.append(0.0)
            env.after(rng.expovariate(1 / service), finish)

    def finish(_):
        if queue:
            waits.append(env.now - queue.popleft())
            env.after(rng.expovariate(1 / service), finish)
        else:
            busy[0] = False

    started = time.perf_counter()
    env.at(0.0, arrive)
    env.run()
    return time.perf_counter() - started, sum(waits) / len(waits)


def with_simpy(requests: int, rate: float, service: float, seed: int) -> tuple[float, float] | None:
    try:
        import simpy
    except ImportError:
        return None
    env = simpy.Environment()
    server = simpy.Resource(env, capacity=1)
    rng = random.Random(seed)
    waits = []

    def request(draw_service):
        arrived = env.now
        with server.request() as slot:
            yield slot
            waits.append(env.now - arrived)
            yield env.timeout(draw_service())

    def source():
        for i in range(requests):
            env.process(request(lambda: rng.expovariate(1 / service)))
            if i < requests - 1:
                yield env.timeout(rng.expovariate(rate))

    started = time.perf_counter()
    env.process(source())
    env.run()
    return time.perf_counter() - started, sum(waits) / len(waits)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sim_clock", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300_000)
    parser.add_argument("--json", metavar="PATH", help="write the report here too (and its PNG beside it)")
    args = parser.parse_args(argv)
    rate, service = 50.0, 0.01
    ours = with_clock(args.requests, rate, service, 1)
    peer = with_simpy(args.requests, rate, service, 1)
    theory = rate * service / (1 / service - rate)
    report = {"requests": args.requests, "mm1_wait_theory_s": theory,
              "clock": {"wall_s": round(ours[0], 3), "requests_per_s": round(args.requests / ours[0]),
                        "mean_wait_s": ours[1]}}
    sys.stdout.write(f"M/M/1, {args.requests:,} requests (theory: mean wait {theory * 1e3:.3f} ms)\n")
    sys.stdout.write(f"  katyusha.sim.clock: {ours[0]:.2f} s, {args.requests / ours[0]:,.0f} req/s, "
                     f"mean wait {ours[1] * 1e3:.3f} ms\n")
    if peer is None:
        sys.stdout.write("  simpy: not installed (pip install simpy to compare)\n")
    else:
        report["simpy"] = {"wall_s": round(peer[0], 3), "requests_per_s": round(args.requests / peer[0]),
                           "mean_wait_s": peer[1]}
        report["speedup"] = round(peer[0] / ours[0], 2)
        sys.stdout.write(f"  simpy:              {peer[0]:.2f} s, {args.requests / peer[0]:,.0f} req/s, "
                         f"mean wait {peer[1] * 1e3:.3f} ms  (clock is {peer[0] / ours[0]:.1f}x faster)\n")
    sys.stdout.write(json.dumps(report) + "\n")
    from benchmarks import plots

    plots.save("sim_clock", report, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
