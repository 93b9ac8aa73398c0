"""What one request costs the live proxy process: CPU, syscalls, context switches, segments.

Run as ``python -m benchmarks.live_cost [--duration 5] [--pin] [--json PATH]``.
Needs nginx, haproxy and wrk on PATH, and strace for the syscall counts
(skipped without it); ``make bench-deps`` installs them.

The backend and the proxies are those of ``benchmarks.overhead`` (one worker
each, keep-alive to an nginx backend). For katyusha and HAProxy in turn, wrk
loads the proxy at 32 connections while this reads the proxy's process from
``/proc``: its CPU time split into user (for katyusha: Python, uvloop, the
parser) and kernel (the syscalls, and the loopback's delivery to the peer that
each write runs), its context switches (waits for work, and preemptions by
another process on its core), and the TCP segments the machine sent
(``/proc/net/snmp``, all of loopback: wrk's, the proxy's and the backend's),
each over the requests wrk completed. A second, shorter wrk run under
``strace -c -f`` counts the proxy's syscalls a request (strace slows the
proxy; the counts a request are what it reads). ``benchmarks.overhead`` gives
the throughput beside HAProxy; this says where the proxy's time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import peers, plots, wrk
from benchmarks.overhead import Pinning, katyusha
from katyusha.procs import exit_on_signals

CONNECTIONS = 32

def context_switches(pid: int) -> tuple[int, int]:
    """Voluntary (waits: epoll) and involuntary (preempted) context switches of ``pid``'s threads."""
    voluntary = involuntary = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    voluntary += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches:"):
                    involuntary += int(line.split()[1])
    return voluntary, involuntary


def tcp_out_segments() -> int:
    """TCP segments the machine has sent (``Tcp: OutSegs`` of /proc/net/snmp)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines()
             if line.startswith("Tcp:")]
    return int(lines[1][lines[0].index("OutSegs")])


def strace_counts(pid: int, url: str, duration_s: float) -> dict[str, int]:
    """Syscalls of ``pid`` (all threads) by name while wrk loads ``url`` (``strace -c``)."""
    with tempfile.NamedTemporaryFile(prefix="live-cost-strace-", suffix=".txt") as out:
        tracer = subprocess.Popen(["strace", "-c", "-f", "-p", str(pid), "-o", out.name],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)  # attached
            result = wrk.run(url, connections=CONNECTIONS, duration_s=duration_s)
        finally:
            tracer.send_signal(2)  # SIGINT: detach and write the summary
            tracer.wait(30)
        counts = {}
        for line in Path(out.name).read_text().splitlines():
            fields = line.split()
            # % time, seconds, usecs/call, calls, [errors,] syscall
            if len(fields) >= 5 and fields[0][0].isdigit() and fields[-1] != "total":
                counts[fields[-1]] = int(fields[3])
    return {"requests": result.requests, **counts}


def measure(running: peers.Running, duration_s: float, syscalls: bool) -> dict:
    url = running.url + "/"
    wrk.run(url, connections=CONNECTIONS, duration_s=1)  # warm-up: pools, caches
    user0, kernel0 = peers.cpu_seconds(running.pid)
    (waits0, preempted0), segments0 = context_switches(running.pid), tcp_out_segments()
    result = wrk.run(url, connections=CONNECTIONS, duration_s=duration_s)
    user1, kernel1 = peers.cpu_seconds(running.pid)
    waits, preempted = context_switches(running.pid)
    segments = tcp_out_segments() - segments0
    requests = result.requests
    out = {
        "rps": round(result.rps, 1),
        "cpu_us_per_request": round((user1 - user0 + kernel1 - kernel0) * 1e6 / requests, 2),
        "user_us_per_request": round((user1 - user0) * 1e6 / requests, 2),
        "kernel_us_per_request": round((kernel1 - kernel0) * 1e6 / requests, 2),
        "cores_busy": round((user1 - user0 + kernel1 - kernel0) / duration_s, 3),
        "waits_per_request": round((waits - waits0) / requests, 3),
        "preemptions_per_request": round((preempted - preempted0) / requests, 3),
        "tcp_segments_per_request": round(segments / requests, 3),
    }
    if syscalls:
        counts = strace_counts(running.pid, url, min(duration_s, 3.0))
        traced = counts.pop("requests")
        out["syscalls_per_request"] = {name: round(n / traced, 3) for name, n in
                                       sorted(counts.items(), key=lambda item: -item[1])
                                       if n / traced >= 0.01}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.live_cost", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the systems alternating (default 2)")
    parser.add_argument("--pin", action="store_true",
                        help="each proxy on the first core, wrk and the backend on the others")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    args = parser.parse_args(argv)
    peers.require("nginx", "haproxy", "wrk")
    exit_on_signals()
    syscalls = shutil.which("strace") is not None
    if not syscalls:
        print("strace is not on PATH: no syscall counts")
    pinning = Pinning(args.pin)
    figures: dict[str, list[dict]] = {"katyusha": [], "haproxy": []}
    with pinning.load(), peers.nginx_static() as backend:
        systems = {"katyusha": lambda: katyusha(backend.url),
                   "haproxy": lambda: peers.haproxy_proxy([backend.url])}
        for round_no in range(args.rounds):
            for name in (list(systems) if round_no % 2 == 0 else list(systems)[::-1]):
                with contextlib.ExitStack() as stack:
                    with pinning.proxy():
                        running = stack.enter_context(systems[name]())
                    row = measure(running, args.duration, syscalls)
                figures[name].append(row)
                print(f"round {round_no + 1} {name:9s} {json.dumps(row)}", flush=True)
    result = {"connections": CONNECTIONS, "duration_s": args.duration,
              "pinned": pinning.describe() if args.pin else None, "systems": figures}
    plots.save("live_cost", result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
