"""Coverage-guided fuzzing (atheris, libFuzzer) of the request path and of feedback parsing.

Targets:

* ``server``: katyusha's HTTP/1.1 server protocol (katyusha.http.server, the
  data port of katyusha and nonna) fed raw bytes, in one to four reads,
  serving an ASGI app that reads the body and answers (chunked when the
  request path says so). After each input the connection is closed and the
  loop run until every task ended. A crash is any exception out of the
  protocol, an app task left behind, or bytes written that are not HTTP
  responses.
* ``feedback``: ``katyusha.core.feedback.parse_feedback`` and
  ``upstream_unreachable`` on header lists built from the input (known
  ``Nonna-*`` names and ``Server-Timing`` with fuzzed values); they promise
  never to raise.

Run::

    python -m benchmarks.fuzz --target server --runs 1000000 --json /tmp/fuzz.json
    python -m benchmarks.fuzz --target feedback --runs 1000000

libFuzzer stops at the first crash (exit status 1, the input saved as
``crash-*`` in ``--artifacts``); an input that runs over ``--timeout``
seconds is a hang and counts as a crash. Every ``--report-every`` inputs the
JSON report is rewritten: inputs run, inputs a second, RSS after warm-up and
now (libFuzzer exits the process when done, so the last report is the
result). Crashing inputs found while writing this became regression tests
(tests/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from katyusha.core import feedback
    from katyusha.http import server as http_server

SEEDS = [
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    b"PUT /chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x00",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET http://h:1/p?q HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
]
FEEDBACK_NAMES = [b"nonna-queue-length", b"nonna-in-flight", b"nonna-concurrency", b"nonna-pod",
                  b"nonna-node", b"nonna-state", b"nonna-error", b"server-timing", b"x-other"]


class _Transport:
    """Just enough of an asyncio transport for the protocol: records what is written."""

    def __init__(self):
        self.out = bytearray()
        self.closed = False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 80), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def write(self, data):
        self.out += data

    def write_eof(self):
        pass

    def can_write_eof(self):
        return True

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def is_closing(self):
        return self.closed

    def set_protocol(self, protocol):
        pass


async def _app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    chunked = "chunk" in scope["path"]
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"x-len", b"%d" % len(body))]})
    if chunked:
        await send({"type": "http.response.body", "body": bytes(body[:3]), "more_body": True})
        await send({"type": "http.response.body", "body": bytes(body[3:])})
    else:
        await send({"type": "http.response.body", "body": bytes(body)})


class _Config:
    loaded = True
    loaded_app = staticmethod(_app)
    root_path = ""


class _State:
    def __init__(self):
        self.connections = set()
        self.tasks = set()
        self.total_requests = 0


class ServerHarness:
    """One event loop reused for every input; each input is one fresh connection."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.protocol = http_server.LeanHTTPProtocol.with_limits(
            http_server.EdgeLimits(max_body_bytes=4096, max_headers=32))

    def run(self, data: bytes) -> None:
        # The first byte says in how many reads the rest arrives, the next ones where it is cut.
        count = data[0] % 4 if data else 0
        cuts = sorted(int.from_bytes(data[1 + 2 * i:3 + 2 * i], "big") for i in range(count))
        payload = data[1 + 2 * count:]
        state = _State()
        proto = self.protocol(_Config(), state, {}, _loop=self.loop)
        transport = _Transport()
        proto.connection_made(transport)
        start = 0
        for cut in [*cuts, len(payload)]:
            cut = min(max(cut, start), len(payload))
            if cut > start:
                proto.data_received(payload[start:cut])
                self._settle(state)
            start = cut
        proto.connection_lost(None)
        self._settle(state)
        if proto._timer is not None:
            proto._timer.cancel()
        if state.tasks:
            raise AssertionError(f"{len(state.tasks)} app task(s) left after the connection closed")
        out = bytes(transport.out)
        if out and not out.startswith(b"HTTP/1.1 "):
            raise AssertionError(f"the server wrote something that is no response: {out[:80]!r}")

    def _settle(self, state: _State) -> None:
        loop = self.loop
        for _ in range(4):
            loop.run_until_complete(_yield())
            if not state.tasks:
                return
        # Tasks still waiting (a body not yet complete): they end at the close.


async def _yield() -> None:
    await asyncio.sleep(0)


def feedback_one(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    headers = []
    for _ in range(provider.ConsumeIntInRange(0, 12)):
        if provider.ConsumeBool():
            name = FEEDBACK_NAMES[provider.ConsumeIntInRange(0, len(FEEDBACK_NAMES) - 1)]
        else:
            name = provider.ConsumeBytes(provider.ConsumeIntInRange(0, 24)).lower()
        headers.append((name, provider.ConsumeBytes(provider.ConsumeIntInRange(0, 64))))
    feedback.parse_feedback(headers)
    feedback.upstream_unreachable(headers)
    for _, value in headers:
        feedback.parse_server_timing(value)


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Reporter:
    """Counts inputs and rewrites the JSON report every ``every`` inputs."""

    def __init__(self, target: str, runs: int, every: int, path: str | None):
        self.target, self.runs, self.every, self.path = target, runs, every, path
        self.count = 0
        self.started = time.monotonic()
        self.warm_rss: float | None = None
        self.peak_rss = 0.0
        self.history: list[tuple[float, int, float]] = []  # (seconds, inputs, RSS MB) at each report

    def tick(self) -> None:
        self.count += 1
        if self.count % self.every and self.count != self.runs:
            return
        rss = rss_mb()
        self.peak_rss = max(self.peak_rss, rss)
        if self.warm_rss is None and self.count >= min(self.runs // 10, 50_000):
            self.warm_rss = rss
        elapsed = time.monotonic() - self.started
        report = {
            "target": self.target, "inputs": self.count, "runs_asked": self.runs,
            "seconds": round(elapsed, 1), "inputs_per_s": round(self.count / elapsed),
            "rss_warm_mb": self.warm_rss, "rss_now_mb": round(rss, 1),
            "rss_growth_after_warmup_mb": None if self.warm_rss is None else round(rss - self.warm_rss, 1),
            "crashes": 0,
        }
        self.history.append((round(elapsed, 2), self.count, round(rss, 1)))
        report["history"] = self.history
        if self.path:
            Path(self.path).write_text(json.dumps(report))
        print(f"fuzz {self.target}: {self.count} inputs, {report['inputs_per_s']}/s, RSS {rss:.1f} MB",
              file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", choices=["server", "feedback"], default="server")
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--timeout", type=int, default=1, help="seconds an input may run (a hang)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", default=None, help="where to write the report")
    parser.add_argument("--report-every", type=int, default=10_000)
    parser.add_argument("--artifacts", default=".", help="where libFuzzer saves crashing inputs")
    parser.add_argument("--libfuzzer-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.libfuzzer_child:
        sys.exit(supervise(sys.argv[1:] if argv is None else argv, args.json))
    logging.disable(logging.CRITICAL)  # the server logs app errors; they are not crashes
    reporter = Reporter(args.target, args.runs, args.report_every, args.json)
    if args.target == "server":
        harness = ServerHarness()
        one = harness.run
    else:
        one = feedback_one

    def test_one(data: bytes) -> None:
        one(data)
        reporter.tick()

    corpus = tempfile.mkdtemp(prefix="katyusha-fuzz-")
    if args.target == "server":
        for index, seed in enumerate(SEEDS):
            Path(corpus, f"seed-{index}").write_bytes(b"\0" + seed)
            Path(corpus, f"seed-{index}-split").write_bytes(b"\2\0\x05\0\x12" + seed)
    libfuzzer = [sys.argv[0], corpus, f"-runs={args.runs}", f"-timeout={args.timeout}",
                 f"-seed={args.seed}", "-max_len=4096", "-rss_limit_mb=2048",
                 f"-artifact_prefix={os.path.join(args.artifacts, '')}", "-print_final_stats=1"]
    atheris.Setup(libfuzzer, test_one)
    atheris.Fuzz()


def supervise(argv: list[str], json_path: str | None) -> int:
    """Run libFuzzer in a child process and plot its last report once it has exited.

    libFuzzer ends the process from inside its loop, so nothing can run after
    the last input there; and work done inside the last input (drawing the
    PNG takes most of a second) counts against ``--timeout`` and, on a busy
    machine, made the last input a "hang". Returns the child's exit status.
    """
    status = subprocess.run([sys.executable, "-m", "benchmarks.fuzz", *argv, "--libfuzzer-child"]).returncode
    if json_path and Path(json_path).exists():
        from benchmarks import plots

        report = json.loads(Path(json_path).read_text())
        if status == 0 and report.get("inputs") == report.get("runs_asked"):
            plots.write("fuzz", report, json_path)
    return status


if __name__ == "__main__":
    main()
