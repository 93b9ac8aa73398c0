"""Soak: a long run of requests at a steady rate through katyusha; memory and descriptors must stay flat.

One katyusha (defaults, one worker) in front of nginx serving a small body.
``--connections`` client connections send ``--requests`` requests between
them at ``--rate`` a second, on a fixed schedule (request i is due at
i / rate), each connection reconnecting every ``--per-connection`` requests
so connections come and go all along. katyusha's RSS and open descriptors
are sampled every second. Goals (issue 15): RSS growth after warm-up (the
first tenth of the requests) under 10 MB, and descriptors back to their idle
count once the clients left (plus the kept-alive upstream connections, at
most one per client connection).

    python -m benchmarks.soak                      # 1,000,000 at 5,000/s (~3.5 min)
    python -m benchmarks.soak --requests 200000    # shorter
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.peers import nginx_static
from katyusha.serving import parse_ready_line


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def start_katyusha(pod: str) -> tuple[subprocess.Popen, str]:
    katyusha = str(Path(sys.executable).parent / "katyusha")
    popen = subprocess.Popen(
        [katyusha, "serve", "--port", "0", "--admin-port", "0", "--pod", f"{pod},name=nginx",
         "--drain-grace", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 30
    for line in popen.stdout:
        ready = parse_ready_line(line)
        if ready:
            return popen, ready.data_url
        if time.monotonic() > deadline:
            break
    popen.kill()
    raise RuntimeError("katyusha did not start")


async def load(url: str, *, requests: int, rate: float, connections: int, per_connection: int,
               pid: int, samples: list) -> dict:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = b"GET /soak HTTP/1.1\r\nHost: soak\r\n\r\n"
    counter = iter(range(requests))
    started = time.monotonic()
    errors = 0
    worst_lag = 0.0
    latencies: list[float] = []

    async def worker() -> None:
        nonlocal errors, worst_lag
        reader = writer = None
        used = 0
        for index in counter:
            due = started + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                worst_lag = max(worst_lag, -delay)
            try:
                if writer is None or used >= per_connection:
                    if writer is not None:
                        writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                    used = 0
                sent = time.monotonic()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                used += 1
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
                if index % 100 == 0:
                    latencies.append(time.monotonic() - sent)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                writer = None
        if writer is not None:
            writer.close()

    async def sampler() -> None:
        while True:
            samples.append((time.monotonic() - started, rss_mb(pid), fds(pid)))
            await asyncio.sleep(1.0)

    watch = asyncio.create_task(sampler())
    await asyncio.gather(*(worker() for _ in range(connections)))
    watch.cancel()
    elapsed = time.monotonic() - started
    latencies.sort()
    return {
        "requests": requests, "errors": errors, "seconds": round(elapsed, 1),
        "rate_asked": rate, "rate_achieved": round(requests / elapsed),
        "worst_send_lag_ms": round(worst_lag * 1000, 1),
        "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
        "p99_ms": round(latencies[int(len(latencies) * 0.99)] * 1000, 2) if latencies else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=5000.0)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--per-connection", type=int, default=1000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    with nginx_static(b"soak body: a small static answer\n") as backend:
        popen, url = start_katyusha(backend.url)
        try:
            pid = popen.pid
            time.sleep(0.5)
            idle_rss, idle_fds = rss_mb(pid), fds(pid)
            samples: list = []
            result = asyncio.run(load(url, requests=args.requests, rate=args.rate,
                                      connections=args.connections,
                                      per_connection=args.per_connection, pid=pid, samples=samples))
            time.sleep(2.0)  # the clients are gone; katyusha closes their sockets
            end_rss, end_fds = rss_mb(pid), fds(pid)
        finally:
            popen.send_signal(signal.SIGTERM)
            try:
                popen.wait(15)
            except subprocess.TimeoutExpired:
                popen.kill()
    warm_at = result["seconds"] / 10
    warm = next((s for s in samples if s[0] >= warm_at), samples[0] if samples else (0, idle_rss, 0))
    peak_fds = max((s[2] for s in samples), default=end_fds)
    result.update({
        "rss_idle_mb": round(idle_rss, 1), "rss_after_warmup_mb": round(warm[1], 1),
        "rss_end_mb": round(end_rss, 1), "rss_peak_mb": round(max(s[1] for s in samples), 1),
        "rss_growth_after_warmup_mb": round(end_rss - warm[1], 1),
        "fds_idle": idle_fds, "fds_peak": peak_fds, "fds_after": end_fds,
        # Kept-alive upstream connections stay in the pool: at most one per client connection.
        "fds_back_to_idle": end_fds <= idle_fds + args.connections,
        "rss_ok": end_rss - warm[1] < 10.0,
    })
    for key, value in result.items():
        print(f"{key:28} {value}")
    result["over_time"] = {"t": [round(s[0], 1) for s in samples], "rss_mb": [round(s[1], 1) for s in samples],
                           "fds": [s[2] for s in samples]}
    from benchmarks import plots

    plots.save("soak", result, args.json)
    return 0 if result["rss_ok"] and result["fds_back_to_idle"] and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
