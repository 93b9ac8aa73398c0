"""How much a slow pod serves under each policy, with per-pod capacity on (the default) and off.

Run as ``python -m benchmarks.policy_share [--runs N] [--json PATH]``. Starts
three sim-backend pods behind nonna (concurrency 1, ``exp:20ms``, the third
four times slower) and katyusha in front, sends 150 requests 6 at a time per
policy, and counts the requests the slow pod served: with the defaults, with
``pod-capacity-factor: 0``, and with two katyusha replicas sharing the pods.
With per-pod capacity each pod holds one request and the rest wait in L1
until a pod frees (late binding), so every policy gives the slow pod about
its speed's share (0.25 / 2.25 of 150 is 17); with it off, round robin gives
it a third (50). docs/katyusha.md quotes these figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

from katyusha.http import PoolSet
from katyusha.procs import exit_on_signals
from katyusha.serving import parse_ready_line

POLICIES = ("round-robin", "jsq-piggyback", "p2c", "least-in-flight", "sed-piggyback")
SPEEDS = (1.0, 1.0, 0.25)
BIN = Path(sys.executable).parent


class Process:
    """A console script started with ``--port 0 --admin-port 0``; its URLs from its ready line."""

    def __init__(self, name: str, *args: str):
        path = BIN / name
        self.popen = subprocess.Popen(
            [str(path) if path.exists() else name, *args, "--port", "0", "--admin-port", "0"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        for line in self.popen.stderr:  # type: ignore[union-attr]
            ready = parse_ready_line(line)
            if ready:
                self.url, self.admin = ready.data_url, ready.admin_url
                return
        raise RuntimeError(f"{name} exited before it was ready")

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.popen.terminate()
        try:
            self.popen.wait(15)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)


async def blast(url: str, count: int, concurrency: int) -> Counter:
    """``count`` GETs, ``concurrency`` at a time; how many each pod (Nonna-Pod) answered."""
    pools = PoolSet(max_idle=concurrency)
    origin, _, _ = url.rpartition("/")
    served: Counter = Counter()
    left = iter(range(count))

    async def worker() -> None:
        for _ in left:
            response = await pools.get(origin).request(b"GET", b"/work", [], None, timeout=30)
            async with response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"status {response.status}")
                served[(response.header(b"nonna-pod") or b"?").decode()] += 1

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await pools.close_all()
    return served


async def measure(pods: list[tuple[Process, Process]], policy: str, extra: list[str],
                  replicas: int) -> int:
    specs = [arg for i, (_, nonna) in enumerate(pods)
             for arg in ("--pod", f"{nonna.url},name=pod-{i},node=node-1")]
    proxies = [Process("katyusha", "serve", *specs, "--policy", policy,
                       "--keep-nonna-headers", "true", *extra) for _ in range(replicas)]
    try:
        counts = await asyncio.gather(*(blast(p.url + "/work", 150, 6) for p in proxies))
        return sum(c["pod-2"] for c in counts)
    finally:
        for proxy in proxies:
            proxy.stop()


async def main_async(runs: int) -> dict:
    pods = []
    for i, speed in enumerate(SPEEDS):
        backend = Process("sim-backend", "--pod", f"pod-{i}", "--node", "node-1", "--state", "warm",
                          "--service-time", "exp:20ms", "--speed", str(speed), "--seed", str(i + 1))
        nonna = Process("nonna", "--upstream", backend.url, "--concurrency", "1",
                        "--pod", f"pod-{i}", "--node", "node-1")
        pods.append((backend, nonna))
    try:
        table: dict = {}
        for label, extra, replicas in (("defaults", [], 1),
                                       ("capacity-off", ["--set", "pod-capacity-factor=0"], 1),
                                       ("two-replicas", [], 2)):
            table[label] = {}
            for policy in POLICIES:
                slow = [await measure(pods, policy, extra, replicas) for _ in range(runs)]
                table[label][policy] = slow
                print(f"{label:13s} {policy:16s} slow pod served {slow} of {150 * replicas}",
                      flush=True)
        return table
    finally:
        for backend, nonna in pods:
            nonna.stop()
            backend.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.policy_share", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per policy and setting")
    parser.add_argument("--json", metavar="PATH", help="write the counts as JSON to PATH")
    args = parser.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every pod started is stopped (a timeout's kill left them running).
    exit_on_signals()
    table = asyncio.run(main_async(args.runs))
    from benchmarks import plots

    plots.save("policy_share", table, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
