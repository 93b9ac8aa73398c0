"""Python bytecodes and calls per body-less request on katyusha's fast path, in process: figures that do not move with the machine's load.

Run as ``python -m benchmarks.bytecodes_per_request [--against REF] [--requests N] [--compiled-vs-pure PAIRS]
[--time-against REF --pairs N] [--top N] [--json PATH]``. Needs nothing outside the package (no sockets, no nginx).

katyusha's data app is built as ``katyusha serve --pod URL`` builds it (one
service, default policy, L1 queue and metrics on), with its HTTP server
protocol and one pooled upstream connection on fake transports whose ``write``
only counts. Each request is one ``GET /`` with a ``Host`` header fed to the
server protocol, and one nginx-like answer (5 headers, a 23-byte body) fed to
the upstream connection: the whole body-less path (parse, route, admit,
pick, the pod's head, the answer, the core's end) without the syscalls and
the event loop. The path reads the time from a clock of the benchmark's own
(:class:`_Clock`, the event loop's other calls passed through), which moves
50 µs before each request and by the request's latency before its answer
(0.5 to 3 ms, eight values in turn, as a live worker's at 32 connections):
latencies, the per-second counts and the periodic refreshes are what a live
process gets, not the zeros of the event loop's clock, which counts whole
milliseconds (libuv's) where a request takes some 15 µs here. After a
warm-up, ``sys.settrace`` counts the bytecodes executed (``f_trace_opcodes``) and the Python frames entered per request;
``--top`` lists the functions with the most bytecodes. These counts are
exact for a given tree (a few tenths move with periodic work such as a
pick's speed refresh); time on this machine is not, so the microseconds
printed beside them (the fastest of 9 rounds) are only a hint. With
``--against`` the same is measured for the ``katyusha`` package at that git
ref. JSON: ``versions`` (``this tree`` and REF: ``requests``, ``bytecodes``,
``frames``, ``us_min``, ``top``), ``against``, ``ratio_bytecodes``; a bar plot beside it.
``--compiled-vs-pure PAIRS`` times this tree's path instead with its compiled
modules (setup.py, ``KATYUSHA_COMPILE``) and as pure Python
(``KATYUSHA_PURE_PYTHON=1``), alternately, and prints each pair's fastest round.
``--time-against REF --pairs N`` times this tree's path and REF's, alternately (which
first alternating too), N pairs, each the fastest of 9 rounds in its own child process:
JSON ``us_min`` (both lists), ``ratio_best``, ``faster_pairs``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys

_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
_ANSWER = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Thu, 03 Dec 2026 10:00:00 GMT\r\n"
           b"Content-Type: text/plain\r\nContent-Length: 23\r\nConnection: keep-alive\r\n\r\n"
           b"hello from the backend\n")
_UPSTREAM = "http://127.0.0.1:9"

def count_bytecodes(run, skip=()) -> tuple[dict, dict]:
    """Call ``run()`` under ``sys.settrace``: the bytecodes executed (``f_trace_opcodes``) and the
    Python frames entered, each by code object. The frames of ``run`` itself and of the code
    objects in ``skip`` (a driver's loop) are neither counted nor traced inside."""
    ops: dict = {}
    frames: dict = {}
    skipped = {run.__code__, *skip}

    def local(frame, event, arg):
        if event == "opcode":
            code = frame.f_code
            ops[code] = ops.get(code, 0) + 1
        return local

    def enter(frame, event, arg):
        code = frame.f_code
        if code in skipped:
            return None
        frames[code] = frames.get(code, 0) + 1
        frame.f_trace_opcodes = True
        return local

    sys.settrace(enter)
    try:
        run()
    finally:
        sys.settrace(None)
    return ops, frames


# Run in a child: this module first (it imports no katyusha), then katyusha from the tree.
_CHILD = (
    "import sys; tree = sys.argv.pop(1); import benchmarks.bytecodes_per_request as b\n"
    "if tree:\n"
    "    sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]\n"
    "    sys.path.insert(0, tree)\n"
    "b.child(int(sys.argv[1]), int(sys.argv[2]))\n"
)


class _Transport:
    """A transport that takes every write and counts it."""

    def __init__(self):
        self.writes = 0

    def write(self, data) -> None:
        self.writes += 1

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name, default=None):
        return {"sockname": ("127.0.0.1", 8080), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass


# Latencies the clock gives the answers, in turn (seconds): live answers at 32 connections
# take 0.5 to 3 ms; and the gap before each request.
_LATENCIES = (0.0005, 0.0008, 0.0011, 0.0009, 0.0014, 0.0019, 0.0025, 0.003)
_GAP = 0.00005


class _Clock:
    """An event loop whose ``time()`` is a clock of its own, moved by the caller (``now``);
    every other call goes to the real loop."""

    def __init__(self, loop):
        self._real = loop
        self.now = loop.time()
        # time(), read in C: no Python frame of the benchmark's own on the path.
        self.time = functools.partial(getattr, self, "now")

    def __getattr__(self, name):
        return getattr(self._real, name)


class _ServerState:
    def __init__(self):
        self.connections: set = set()
        self.tasks: set = set()
        self.total_requests = 0


class _Config:
    loaded = True
    root_path = ""

    def __init__(self, app):
        self.loaded_app = app


def fast_path(loop, *flags: str) -> tuple:
    """katyusha's data server and one pooled upstream connection on fake transports, in process:
    (server, upstream, to_client, to_pod). ``server.data_received(_REQUEST)`` then
    ``upstream.data_received(_ANSWER)`` is one body-less request on the fast path. ``flags``:
    more of ``katyusha serve``'s flags."""
    from katyusha.http.connection import Connection
    from katyusha.proxy import config as settings
    from katyusha.proxy.cli import build_parser, flags_from_args
    from katyusha.proxy.runtime import Proxy, data_http

    flags = flags_from_args(build_parser().parse_args(
        ["--pod", f"{_UPSTREAM},name=backend,node=local", *flags]))
    config = settings.load(flags=flags, environ={})
    proxy = Proxy(config)
    pool = proxy.pools.get(_UPSTREAM)
    pool._loop = loop
    upstream = Connection(pool.origin, loop, pool._on_idle, pool.high_water, pool.max_head)
    to_pod = _Transport()
    upstream.connection_made(to_pod)
    upstream.reused = True
    pool._on_idle(upstream, True)
    server = data_http(config)(_Config(proxy.data), _ServerState(), {}, _loop=loop)
    to_client = _Transport()
    server.connection_made(to_client)
    return server, upstream, to_client, to_pod


def child(requests: int, top: int) -> None:
    """Measure the katyusha found first on sys.path; print the figures as JSON."""
    import asyncio
    import gc
    import itertools
    import time

    import uvloop

    async def run() -> dict:
        clock = _Clock(asyncio.get_running_loop())
        server, upstream, to_client, to_pod = fast_path(clock)
        latencies = itertools.cycle(_LATENCIES)

        def one() -> None:
            clock.now += _GAP
            server.data_received(_REQUEST)
            clock.now += next(latencies)
            upstream.data_received(_ANSWER)

        for _ in range(500):
            one()
        def many() -> None:
            for _ in range(requests):
                one()

        # The driver's own calls (this loop's, one()'s) are not the path's.
        per_code, frames = count_bytecodes(many, skip=(one.__code__,))
        rounds = []
        for _ in range(9):
            gc.collect()
            start = time.perf_counter()
            for _ in range(requests):
                one()
            rounds.append((time.perf_counter() - start) / requests * 1e6)
        sent = 500 + requests * 10
        if to_client.writes != sent or to_pod.writes != sent:
            raise RuntimeError(f"not every request took the fast path: {to_client.writes} answers, "
                               f"{to_pod.writes} requests to the pod, of {sent}")
        ranked = sorted(per_code.items(), key=lambda item: -item[1])[:top]
        return {
            "requests": requests,
            "bytecodes": round(sum(per_code.values()) / requests, 1),
            "frames": round(sum(frames.values()) / requests, 2),
            "us_min": round(min(rounds), 2),
            "top": [[f"{code.co_filename.rpartition('katyusha/')[2]}:{code.co_firstlineno} {code.co_name}",
                     round(n / requests, 1)] for code, n in ranked],
        }

    from katyusha.compiled import status

    figures = uvloop.run(run())
    figures["compiled_modules"] = len(status()["compiled"])
    print(json.dumps(figures))


def count(tree: str | None, requests: int, top: int, *, pure: str = "1") -> dict:
    """The figures of the installed katyusha (``tree`` None) or of the package in ``tree``.

    ``pure``: the child's ``KATYUSHA_PURE_PYTHON``: "1" (the default) counts the
    Python path, compiled modules or not; "0" uses the compiled ones where built.
    """
    env = {**os.environ, "KATYUSHA_PURE_PYTHON": pure}
    out = subprocess.run([sys.executable, "-c", _CHILD, tree or "", str(requests), str(top)],
                         capture_output=True, text=True, check=False, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"the measurement failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _print(name: str, figures: dict) -> None:
    print(f"{name}: {figures['bytecodes']} bytecodes and {figures['frames']} Python frames a request "
          f"({figures['us_min']} µs at best, {figures['requests']} requests)", flush=True)
    for where, n in figures["top"]:
        print(f"  {n:7.1f}  {where}")


def _alternate(first: str, second: str, measure, pairs: int, json_path: str | None, **meta) -> int:
    """Time ``first`` and ``second`` alternately (which first alternates too), ``pairs`` pairs:
    ``measure(name)`` is one run's figures. Prints each run and the best of all; JSON ``us_min``
    (both lists), ``ratio_best`` (first over second), ``faster_pairs`` (where first was), ``meta``."""
    runs: dict[str, list[float]] = {first: [], second: []}
    for pair in range(pairs):
        for name in (first, second) if pair % 2 == 0 else (second, first):
            figures = measure(name)
            runs[name].append(figures["us_min"])
            print(f"pair {pair + 1} {name:12s} {figures['us_min']:6.2f} µs a request at best "
                  f"({figures['bytecodes']} bytecodes, {figures['compiled_modules']} modules compiled)",
                  flush=True)
    best = {name: min(values) for name, values in runs.items()}
    ratio = round(best[first] / best[second], 3)
    faster = sum(a < b for a, b in zip(runs[first], runs[second], strict=True))
    print(f"best of all: {first} {best[first]:.2f} µs, {second} {best[second]:.2f} µs, "
          f"ratio {ratio:.3f}; {first} faster in {faster} of {pairs} pairs")
    if json_path:
        with open(json_path, "w") as file:
            json.dump({**meta, "us_min": runs, "ratio_best": ratio, "faster_pairs": faster}, file, indent=2)
    return 0


def compiled_vs_pure(pairs: int, requests: int, json_path: str | None) -> int:
    """The in-process path timed compiled and pure, alternately (which first alternates too)."""

    def measure(name: str) -> dict:
        figures = count(None, requests, 0, pure="1" if name == "pure" else "0")
        if name == "compiled" and not figures["compiled_modules"]:
            raise SystemExit("nothing compiled here: build first (python setup.py build_ext --inplace)")
        return figures

    return _alternate("compiled", "pure", measure, pairs, json_path)


def time_against(ref: str, pairs: int, requests: int, json_path: str | None) -> int:
    """The in-process path of this tree and of ``ref``, timed alternately (which first alternates too)."""
    from benchmarks.overhead import checkout

    with checkout(ref) as tree:
        return _alternate("this tree", ref, lambda name: count(None if name == "this tree" else tree, requests, 0),
                          pairs, json_path, against=ref)


def main(argv: list[str] | None = None) -> int:
    from benchmarks import plots
    from benchmarks.calls_per_request import write_beside
    from benchmarks.overhead import checkout

    parser = argparse.ArgumentParser(prog="python -m benchmarks.bytecodes_per_request",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--against", metavar="REF", help="also count the katyusha package at this git ref")
    parser.add_argument("--requests", type=int, default=2000, help="requests counted (and per timed round)")
    parser.add_argument("--top", type=int, default=12, help="functions listed, most bytecodes first")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--compiled-vs-pure", type=int, metavar="PAIRS", default=0,
                        help="instead: time this tree compiled and with KATYUSHA_PURE_PYTHON=1, "
                             "alternately, PAIRS times (needs the extensions built)")
    parser.add_argument("--time-against", metavar="REF",
                        help="instead: time this tree and the package at REF alternately (--pairs)")
    parser.add_argument("--pairs", type=int, default=6, help="pairs for --time-against")
    args = parser.parse_args(argv)
    if args.time_against:
        return time_against(args.time_against, args.pairs, args.requests, args.json)
    if args.compiled_vs_pure:
        return compiled_vs_pure(args.compiled_vs_pure, args.requests, args.json)
    versions: dict = {}
    versions["this tree"] = count(None, args.requests, args.top)
    _print("this tree", versions["this tree"])
    if args.against:
        with checkout(args.against) as tree:
            versions[args.against] = count(tree, args.requests, args.top)
        _print(args.against, versions[args.against])
    plots.write("bytecodes_per_request", write_beside(versions, args.against, "bytecodes", args.json), args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
