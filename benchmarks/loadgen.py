"""An open-loop HTTP load generator: Poisson arrivals at a set rate.

wrk and hey are closed-loop: each connection waits for its answer before it
sends again, so when the system slows down they send less, and the slow
requests that make a tail never get queued behind. This generator sends on a
schedule fixed in advance (exponential gaps at ``rate`` per second) whatever
the system does, opening connections as needed, and records every request's
latency and outcome, with a timeout.

Use as a module (``await run_open_loop(url, rate=..., duration_s=...)``) or as
``python -m benchmarks.loadgen URL --rate 300 --duration 10``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass(slots=True)
class Sample:
    sent_at: float        # seconds since the run started (scheduled send time)
    latency_ms: float     # from the scheduled send time to the end of the response
    status: int           # HTTP status, 0 for a connection error, -1 for a timeout
    pod: str = ""         # Nonna-Pod when the response carried it
    cause: str = ""       # no answer: "refused" (no connection), "reset" (closed after the request
                          # was sent), "connect-error", "timeout"; "" when a response came
    maybe_executed: bool | None = None  # the Katyusha-Maybe-Executed header, when present
    lag_ms: float = 0.0   # from the scheduled send time to the start of its task (the generator's own lag)
    timing: str = ""      # with detail=True: the response's Server-Timing (every header line of it, joined)
    body: bytes = b""     # with detail=True: the response body


@dataclass
class RunResult:
    rate: float
    duration_s: float
    samples: list[Sample] = field(default_factory=list)
    send_lag_ms: float = 0.0   # worst delay between a scheduled send and the real one

    @property
    def sent(self) -> int:
        return len(self.samples)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if 200 <= s.status < 300]

    @property
    def error_share(self) -> float:
        return 0.0 if not self.samples else 1 - len(self.ok) / len(self.samples)

    def quantile_ms(self, q: float) -> float:
        """Latency quantile over ALL requests; failed ones count at their latency."""
        values = sorted(s.latency_ms for s in self.samples)
        if not values:
            return float("nan")
        index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
        return values[index]

    def per_pod(self) -> dict[str, int]:
        return dict(Counter(s.pod for s in self.ok if s.pod))

    def summary(self) -> dict:
        statuses = Counter(s.status for s in self.samples)
        return {
            "rate": self.rate,
            "sent": self.sent,
            "achieved_rate": round(self.sent / self.duration_s, 1) if self.duration_s else 0,
            "p50_ms": round(self.quantile_ms(0.5), 2),
            "p99_ms": round(self.quantile_ms(0.99), 2),
            "p999_ms": round(self.quantile_ms(0.999), 2),
            "errors": round(self.error_share, 5),
            "timeouts": statuses.get(-1, 0),
            "statuses": {str(k): v for k, v in sorted(statuses.items())},
            "per_pod": self.per_pod(),
            "send_lag_ms": round(self.send_lag_ms, 2),
        }


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[bytes, bytes], bool, bytes]:
    """Read one HTTP/1.1 response; returns status, headers (lower-case; a repeated header's
    values joined by ", ", as RFC 9110 allows for list headers such as Server-Timing),
    keep-alive and the body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        if b":" in line:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip()
            seen = headers.get(name)
            headers[name] = value if seen is None else seen + b", " + value
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
        chunks = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            chunks.append((await reader.readexactly(size + 2))[:size])
            if size == 0:
                break
        body = b"".join(chunks)
    else:
        return status, headers, False, await reader.read()
    keep = headers.get(b"connection", b"").lower() != b"close"
    return status, headers, keep, body


def poisson_schedule(rate: float, duration_s: float, rng: random.Random) -> list[float]:
    """Send times (s from the start) of Poisson arrivals of ``rate``/s."""
    times = []
    t = rng.expovariate(rate)
    while t < duration_s:
        times.append(t)
        t += rng.expovariate(rate)
    return times


def mmpp_schedule(rate: float, duration_s: float, rng: random.Random, *, burst: float = 2.5,
                  share_high: float = 0.2, mean_high_s: float = 0.5) -> list[float]:
    """Send times of a two-state Markov-modulated Poisson process averaging ``rate``/s.

    A high state of ``burst`` x ``rate`` for ``share_high`` of the time (stays of
    mean ``mean_high_s``), a low state making up the rest of the mean.
    """
    high = burst * rate
    low = rate * (1 - burst * share_high) / (1 - share_high)
    mean_low_s = mean_high_s * (1 - share_high) / share_high
    times: list[float] = []
    t = 0.0
    in_high = rng.random() < share_high
    while t < duration_s:
        stay = rng.expovariate(1 / (mean_high_s if in_high else mean_low_s))
        end = min(duration_s, t + stay)
        state_rate = high if in_high else low
        if state_rate > 0:
            a = t + rng.expovariate(state_rate)
            while a < end:
                times.append(a)
                a += rng.expovariate(state_rate)
        t = end
        in_high = not in_high
    return times


async def run_open_loop(urls: str | Sequence[str], *, rate: float, duration_s: float,
                        timeout_s: float = 10.0, seed: int = 1, path: str = "/",
                        headers: dict[str, str] | None = None, method: str = "GET",
                        body: bytes = b"", arrivals: str = "poisson", detail: bool = False) -> RunResult:
    """Send requests (``method``, with ``body``) at Poisson arrivals of ``rate``/s for
    ``duration_s``, spread round robin over ``urls`` (several balancer replicas);
    ``arrivals`` ``mmpp``: bursts of the same mean rate (:func:`mmpp_schedule`). Every
    request is recorded, with why it got no answer when it got none.

    The schedule never waits for answers: a slow system gets the same arrivals. A
    request whose kept-alive connection turns out closed before any answer is sent once
    more on a fresh connection, as HTTP clients do, for GET and HEAD only.

    ``detail``: each sample also keeps its response's ``Server-Timing`` and body
    (benchmarks.sim_vs_live reads the pods' timings from them).
    """
    if rate <= 0 or duration_s <= 0:
        raise ValueError("rate and duration_s must be positive")
    targets = [urls] if isinstance(urls, str) else list(urls)
    parts = [urlsplit(u) for u in targets]
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if body or method in ("POST", "PUT", "PATCH"):
        extra += f"Content-Length: {len(body)}\r\n"
    request = [
        (f"{method} {path} HTTP/1.1\r\nHost: {p.netloc}\r\n{extra}\r\n").encode() + body for p in parts
    ]
    replay_stale = method in ("GET", "HEAD")
    idle: list[list[_Conn]] = [[] for _ in targets]
    rng = random.Random(seed)
    result = RunResult(rate=rate, duration_s=duration_s)
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def one(index: int, scheduled: float) -> None:
        part = parts[index]
        conn = idle[index].pop() if idle[index] else None
        status, pod, cause, maybe = 0, "", "", None
        lag_ms, timing, content = (loop.time() - start - scheduled) * 1000, "", b""
        try:
            async with asyncio.timeout(timeout_s - (loop.time() - start - scheduled)):
                for attempt in (0, 1):
                    reused = conn is not None
                    if conn is None:
                        cause = "connect-error"
                        try:
                            reader, writer = await asyncio.open_connection(part.hostname, part.port)
                        except ConnectionRefusedError:
                            cause = "refused"
                            raise
                        conn = _Conn(reader, writer)
                    cause = "reset"
                    try:
                        conn.writer.write(request[index])
                        status, resp_headers, keep, content = await _read_response(conn.reader)
                        cause = ""
                        break
                    except (asyncio.IncompleteReadError, ConnectionError):
                        conn.writer.close()
                        conn = None
                        # A kept-alive connection the server had closed: one fresh try.
                        if attempt or not reused or not replay_stale:
                            raise
                pod = resp_headers.get(b"nonna-pod", b"").decode()
                flag = resp_headers.get(b"katyusha-maybe-executed")
                maybe = None if flag is None else flag == b"true"
                if detail:
                    timing = resp_headers.get(b"server-timing", b"").decode()
                else:
                    content = b""
                if keep:
                    idle[index].append(conn)
                else:
                    conn.writer.close()
                conn = None
        except TimeoutError:
            status, cause = -1, "timeout"
        except (OSError, asyncio.IncompleteReadError, ValueError):
            status = 0
        finally:
            if conn is not None:
                conn.writer.close()
        latency = (loop.time() - start - scheduled) * 1000
        result.samples.append(Sample(scheduled, latency, status, pod, cause, maybe, lag_ms, timing,
                                     content if detail else b""))

    tasks = set()
    make = mmpp_schedule if arrivals == "mmpp" else poisson_schedule
    for i, t in enumerate(make(rate, duration_s, rng)):
        delay = start + t - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        result.send_lag_ms = max(result.send_lag_ms, (loop.time() - start - t) * 1000)
        task = asyncio.create_task(one(i % len(targets), t))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks)
    for pool in idle:
        for conn in pool:
            conn.writer.close()
    result.samples.sort(key=lambda s: s.sent_at)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.loadgen", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", nargs="+")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:  # pragma: no cover
        runner = asyncio.run
    started = time.monotonic()
    result = runner(run_open_loop(args.url, rate=args.rate, duration_s=args.duration,
                                  timeout_s=args.timeout, seed=args.seed))
    summary = result.summary()
    summary["wall_s"] = round(time.monotonic() - started, 2)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
