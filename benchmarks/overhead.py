"""What it costs to put katyusha in the path: throughput, latency, memory, bodies.

Run as ``python -m benchmarks.overhead [--quick] [--json PATH]``. Needs nginx,
haproxy and wrk on PATH (``make bench-deps`` installs them); installs nothing.

One fast backend (nginx serving a small fixed body, one worker) and in front of
it, each with one worker and keep-alive to the backend: nothing (direct),
HAProxy, nginx, and katyusha as users run it (default policy, L1 queue on,
metrics on), plus katyusha with two workers (``katyusha-threads: "2"``). wrk
loads each at 32 and 256 connections, several rounds in alternating order; the
figures are medians over rounds. The figures that matter are the ratios: this
machine is shared and noisy, so an absolute number means little. ``--pin`` puts
each proxy on a core of its own and wrk and the backend on the others.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from benchmarks import peers, wrk
from benchmarks.hashsink import pattern, pattern_sha256
from katyusha.procs import Proc, exit_on_signals, script
from katyusha.progress import bar

CONNECTIONS = (32, 256)
BODY_MB = 100


# Runs katyusha's CLI from the tree in argv[1], ahead of the installed (editable) package.
_FROM_TREE = (
    "import sys; tree = sys.argv.pop(1); "
    "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f)]; "
    "sys.path.insert(0, tree); from katyusha.cli import main; sys.argv[0] = 'katyusha'; "
    "sys.exit(main())"
)


@contextlib.contextmanager
def katyusha(upstream: str, *, workers: int = 1, http_server: str | None = None,
             tree: str | None = None, env: dict | None = None) -> Iterator[peers.Running]:
    """katyusha as users run it: default policy, L1 queue and metrics on.

    ``http_server`` picks the data port's HTTP protocol ("lean", "uvicorn");
    None leaves the default. ``tree``: a folder holding another version's
    ``katyusha`` package, run instead of the installed one (``--against``).
    ``env``: more environment for the process (``KATYUSHA_PURE_PYTHON``).
    """
    port = peers.free_port()
    with tempfile.TemporaryDirectory(prefix="bench-katyusha-") as tmp:
        config = Path(tmp) / "katyusha.yaml"
        text = f'katyusha-threads: "{workers}"\n'
        if http_server:
            text += f"http-server: {http_server}\n"
        config.write_text(text)
        command = [script("katyusha")] if tree is None else [sys.executable, "-c", _FROM_TREE, tree]
        argv = [*command, "serve", "--port", str(port), "--admin-port", "0",
                "--pod", f"{upstream},name=backend,node=local", "--config", str(config)]
        proc = Proc(argv, ready_timeout=30, env=env)
        try:
            peers.wait_port(port)
            yield peers.Running(f"katyusha-{workers}w", f"http://127.0.0.1:{port}", proc.popen)
        finally:
            proc.terminate()
            proc.kill()


@contextlib.contextmanager
def direct(url: str) -> Iterator[peers.Running]:
    yield peers.Running("direct", url, None)  # type: ignore[arg-type]


class _Sampler:
    """A thread that samples something while a run lasts: ``with Sampler(...):``; :meth:`_run` samples."""

    def __init__(self):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


class AcceptQueue(_Sampler):
    """The deepest accept queue of a listening port in the first seconds of a run.

    Connections the kernel completed but the proxy has not accepted yet: wrk
    counts their first request's wait in its latency. wrk opens its
    connections when it starts, so the queue is read every 100 ms for the
    first ``WINDOW_S`` seconds only: each read of ``/proc/net/tcp`` (a
    listener's receive queue is its accept queue) costs the kernel several
    milliseconds. None where there is no such file.
    """

    WINDOW_S = 2.0

    def __init__(self, port: int):
        self.port = port
        self.deepest: int | None = None
        self._suffix = f":{port:04X}"
        super().__init__()

    def _read(self) -> int | None:
        try:
            lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
        except OSError:
            return None
        deepest = 0
        for line in lines:
            fields = line.split(None, 5)
            # local address, state 0A (LISTEN), tx_queue:rx_queue
            if fields[3] == "0A" and fields[1].endswith(self._suffix):
                deepest = max(deepest, int(fields[4].split(":")[1], 16))
        return deepest

    def _run(self) -> None:
        until = time.monotonic() + self.WINDOW_S
        while not self._stop.is_set() and time.monotonic() < until:
            queued = self._read()
            if queued is None:
                return
            self.deepest = max(self.deepest or 0, queued)
            self._stop.wait(0.1)


@contextlib.contextmanager
def checkout(ref: str) -> Iterator[str]:
    """A temporary folder holding the ``katyusha`` package as it is at git ``ref`` of this checkout."""
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix="bench-against-") as tmp:
        archive = subprocess.run(["git", "-C", str(root), "archive", ref, "katyusha"],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        yield tmp


class Pinning:
    """Which cores the proxy under test gets and which wrk and the backend get (``--pin``).

    The proxy gets the first core this process may run on, wrk and the backend
    the others; the same for every system, so the ratios stay fair (katyusha's
    two workers share the proxy's core). A process inherits the affinity of the
    thread that starts it, so :meth:`proxy` is entered around starting a proxy
    and :meth:`load` around the rest. Without ``--pin`` both do nothing.
    """

    def __init__(self, pin: bool):
        cores = sorted(os.sched_getaffinity(0))
        if pin and len(cores) < 2:
            raise SystemExit("--pin needs at least 2 cores")
        self.proxy_cores = {cores[0]} if pin else None
        self.load_cores = set(cores[1:]) if pin else None

    @contextlib.contextmanager
    def _on(self, cores: set[int] | None) -> Iterator[None]:
        if cores is None:
            yield
            return
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cores)
        try:
            yield
        finally:
            os.sched_setaffinity(0, before)

    def proxy(self) -> contextlib.AbstractContextManager[None]:
        return self._on(self.proxy_cores)

    def load(self) -> contextlib.AbstractContextManager[None]:
        return self._on(self.load_cores)

    def describe(self) -> str:
        if self.proxy_cores is None:
            return "not pinned"
        return f"proxy on core {sorted(self.proxy_cores)}, wrk and backend on {sorted(self.load_cores)}"


# The compiled modules (setup.py, KATYUSHA_COMPILE=1) used, or their .py.
COMPILED = {"KATYUSHA_PURE_PYTHON": "0"}
PURE = {"KATYUSHA_PURE_PYTHON": "1"}


def measure_throughput(backend_url: str, *, rounds: int, duration_s: float,
                       against: tuple[str, str] | None = None,
                       compiled_vs_pure: bool = False, pinning: Pinning | None = None) -> dict:
    pinning = pinning or Pinning(False)
    env = COMPILED if compiled_vs_pure else None
    systems = {
        "direct": lambda: direct(backend_url),
        "haproxy": lambda: peers.haproxy_proxy([backend_url]),
        "nginx": lambda: peers.nginx_proxy([backend_url]),
        "katyusha": lambda: katyusha(backend_url, workers=1, env=env),
        "katyusha-2w": lambda: katyusha(backend_url, workers=2),
        # The same proxy on uvicorn's own HTTP protocol: what the lean one buys.
        "katyusha-uvicorn": lambda: katyusha(backend_url, http_server="uvicorn"),
    }
    if against is not None:
        # The same proxy at another commit, in the same rounds: an A/B in one run.
        ref, tree = against
        systems["katyusha@" + ref] = lambda: katyusha(backend_url, tree=tree)
    if compiled_vs_pure:
        # The same tree with its compiled modules and as pure Python, in the same rounds.
        systems["katyusha-pure"] = lambda: katyusha(backend_url, env=PURE)
    samples: dict[str, dict[int, list[wrk.WrkResult]]] = {
        name: {c: [] for c in CONNECTIONS} for name in systems
    }
    queues: dict[str, dict[int, list[int | None]]] = {
        name: {c: [] for c in CONNECTIONS} for name in systems
    }
    names = list(systems)
    progress = bar(rounds * len(names), "overhead", "system")
    for round_no in range(rounds):
        # Alternate the order so no system always runs on a warmer or cooler machine.
        order = names[round_no % len(names):] + names[: round_no % len(names)]
        if round_no % 2:
            order.reverse()
        for name in order:
            with contextlib.ExitStack() as stack:
                with pinning.proxy():
                    running = stack.enter_context(systems[name]())
                url = running.url + "/"
                wrk.run(url, connections=32, duration_s=1)  # warm-up: pools, JIT-free caches
                for conns in CONNECTIONS:
                    with AcceptQueue(int(running.url.rsplit(":", 1)[1])) as queue:
                        result = wrk.run(url, connections=conns, duration_s=duration_s)
                    samples[name][conns].append(result)
                    queues[name][conns].append(queue.deepest)
                    print(f"  round {round_no + 1} {name:12s} c={conns:<4d} "
                          f"{result.rps:9.0f} req/s p50 {result.p50_ms:7.2f} ms "
                          f"p99 {result.p99_ms:7.2f} ms errors {result.errors} "
                          f"accept queue {queue.deepest}", flush=True)
            progress.update(1)
    progress.close()
    table = {}
    # On a shared machine the rounds differ more than the systems within one
    # round: the ratio of each round, then the median, is the steadier figure.
    per_round = [k.rps / h.rps for k, h in zip(samples["katyusha"][32], samples["haproxy"][32],
                                                strict=True)]
    table["_ratio_vs_haproxy_per_round"] = per_round
    if compiled_vs_pure:
        table["_pure_ratio_vs_haproxy_per_round"] = [
            k.rps / h.rps for k, h in zip(samples["katyusha-pure"][32], samples["haproxy"][32], strict=True)]
    for name, by_conns in samples.items():
        table[name] = {}
        for conns, results in by_conns.items():
            table[name][str(conns)] = {
                "rps": round(statistics.median(r.rps for r in results), 1),
                "p50_ms": round(statistics.median(r.p50_ms for r in results), 3),
                "p99_ms": round(statistics.median(r.p99_ms for r in results), 3),
                "errors": sum(r.errors for r in results),
                "rounds": len(results),
                # The deepest accept queue seen in any round (None: no /proc/net/tcp here).
                "accept_queue_max": max((q for q in queues[name][conns] if q is not None),
                                        default=None),
            }
    return table


def _open_connections(port: int, count: int) -> tuple[list[socket.socket], int]:
    socks = []
    for _ in range(count):
        try:
            sock = socket.socket()
            sock.setblocking(True)
            sock.settimeout(5)
            sock.connect(("127.0.0.1", port))
        except OSError:
            break
        socks.append(sock)
    return socks, len(socks)


def measure_memory(backend_url: str, *, connections: int) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    result: dict = {"connections_asked": connections, "nofile_limit": soft}
    with katyusha(backend_url) as running:
        port = int(running.url.rsplit(":", 1)[1])
        # Serve a few requests first so pools and caches exist, as in use.
        wrk.run(running.url + "/", connections=8, duration_s=1)
        time.sleep(0.5)
        result["idle_rss_mb"] = round(peers.rss_kb(running.pid) / 1024, 1)
        wanted = min(connections, soft - 100)
        socks, opened = _open_connections(port, wanted)
        try:
            # Each connection sends one request, so katyusha really serves them all.
            for sock in socks:
                sock.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
            answered = 0
            for sock in socks:
                with contextlib.suppress(OSError):
                    if sock.recv(65536).startswith(b"HTTP/1.1 200"):
                        answered += 1
            time.sleep(0.5)
            result["connections_held"] = opened
            result["connections_answered"] = answered
            result["rss_with_connections_mb"] = round(peers.rss_kb(running.pid) / 1024, 1)
            if opened < connections:
                result["note"] = (f"held {opened} of {connections} connections: the open-file "
                                  f"limit here is {soft}")
        finally:
            for sock in socks:
                sock.close()
    return result


class _RssWatch(_Sampler):
    def __init__(self, pid: int):
        self.pid = pid
        self.base = peers.rss_kb(pid)
        self.peak = self.base
        super().__init__()

    def _run(self) -> None:
        # The whole body transfer, not only the first seconds.
        while not self._stop.is_set():
            self.peak = max(self.peak, peers.rss_kb(self.pid))
            time.sleep(0.05)

    @property
    def growth_mb(self) -> float:
        return round((self.peak - self.base) / 1024, 1)


def measure_bodies(size_mb: int) -> dict:
    size = size_mb * 1024 * 1024
    expected = pattern_sha256(size)
    out: dict = {"size_mb": size_mb}
    with Proc([sys.executable, "-m", "benchmarks.hashsink"], ready_timeout=20) as sink, \
            katyusha(sink.url) as running:
        host, port = "127.0.0.1", int(running.url.rsplit(":", 1)[1])
        wrk.run(running.url + "/download?size=10", connections=4, duration_s=1)
        with _RssWatch(running.pid) as watch:
            started = time.monotonic()
            conn = http.client.HTTPConnection(host, port, timeout=120)
            conn.request("PUT", "/upload", body=pattern(size), encode_chunked=True,
                         headers={"Transfer-Encoding": "chunked"})
            reply = conn.getresponse()
            answer = json.loads(reply.read())
            conn.close()
            out["upload_s"] = round(time.monotonic() - started, 2)
        out["upload_ok"] = reply.status == 200 and answer == {"sha256": expected, "length": size}
        out["upload_rss_growth_mb"] = watch.growth_mb
        with _RssWatch(running.pid) as watch:
            started = time.monotonic()
            conn = http.client.HTTPConnection(host, port, timeout=120)
            conn.request("GET", f"/download?size={size}")
            reply = conn.getresponse()
            digest = hashlib.sha256()
            got = 0
            while chunk := reply.read(1024 * 1024):
                digest.update(chunk)
                got += len(chunk)
            conn.close()
            out["download_s"] = round(time.monotonic() - started, 2)
        out["download_ok"] = reply.status == 200 and got == size and digest.hexdigest() == expected
        out["download_rss_growth_mb"] = watch.growth_mb
    out["rss_growth_under_64mb"] = max(out["upload_rss_growth_mb"], out["download_rss_growth_mb"]) < 64
    return out


def print_table(table: dict) -> None:
    base = table["haproxy"]["32"]["rps"]
    print(f"\n{'system':14s} {'conns':>5s} {'req/s':>9s} {'vs haproxy':>10s} {'p50 ms':>8s} "
          f"{'p99 ms':>8s} {'errors':>6s}")
    for name, by_conns in table.items():
        for conns, fig in by_conns.items():
            ref = table["haproxy"][conns]["rps"] or base
            print(f"{name:14s} {conns:>5s} {fig['rps']:9.0f} {fig['rps'] / ref:10.2f} "
                  f"{fig['p50_ms']:8.2f} {fig['p99_ms']:8.2f} {fig['errors']:6d}")


_KEYS = ("ratio_rps_vs_haproxy", "added_p50_ms", "ratio_rps_vs_haproxy_256", "p99_ratio_vs_haproxy_256")


def _keys(table: dict, name: str) -> dict:
    """The goal keys of one katyusha system of the table (as the top-level ones are for ``katyusha``)."""
    return {
        "ratio_rps_vs_haproxy": round(table[name]["32"]["rps"] / table["haproxy"]["32"]["rps"], 3),
        "added_p50_ms": round(table[name]["32"]["p50_ms"] - table["direct"]["32"]["p50_ms"], 3),
        "ratio_rps_vs_haproxy_256": round(table[name]["256"]["rps"] / table["haproxy"]["256"]["rps"], 3),
        "p99_ratio_vs_haproxy_256": round(table[name]["256"]["p99_ms"] / table["haproxy"]["256"]["p99_ms"], 3),
    }


def describe(env: dict) -> str:
    """What ``katyusha serve --version`` says with ``env``: compiled modules in use or not."""
    out = subprocess.run([script("katyusha"), "serve", "--version"], capture_output=True, text=True,
                         check=False, env={**os.environ, **env})
    return (out.stdout or out.stderr).strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a run of under a minute, same keys")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON to PATH")
    parser.add_argument("--rounds", type=int, help="rounds per system (default 3, quick 1)")
    parser.add_argument("--duration", type=float, help="seconds per wrk run (default 10, quick 3)")
    parser.add_argument("--compiled-vs-pure", action="store_true",
                        help="also run katyusha with KATYUSHA_PURE_PYTHON=1 beside it (the tree's "
                             "compiled modules against their .py), in the same rounds (key pure)")
    parser.add_argument("--against", metavar="REF",
                        help="also run katyusha (one worker) as it is at git REF of this checkout, "
                             "in the same rounds (key ratio_rps_vs_against)")
    parser.add_argument("--pin", action="store_true",
                        help="run each proxy on the first core and wrk and the backend on the others "
                             "(the throughput rounds; key pinned)")
    args = parser.parse_args(argv)
    pinning = Pinning(args.pin)
    peers.require("nginx", "haproxy", "wrk")
    # Unwind on SIGTERM or Ctrl-C, so nginx, HAProxy and katyusha are all stopped.
    exit_on_signals()
    if args.compiled_vs_pure:
        for env in (COMPILED, PURE):
            print(f"katyusha with {env}: {describe(env)}")
    rounds = args.rounds or (1 if args.quick else 3)
    duration = args.duration or (3.0 if args.quick else 10.0)
    started = time.monotonic()
    with pinning.load(), peers.nginx_static() as backend, contextlib.ExitStack() as stack:
        print(f"backend: nginx at {backend.url}; {rounds} round(s) of {duration:g} s per run; "
              f"{pinning.describe()}")
        against = None if args.against is None else (args.against, stack.enter_context(
            checkout(args.against)))
        table = measure_throughput(backend.url, rounds=rounds, duration_s=duration, against=against,
                                   compiled_vs_pure=args.compiled_vs_pure, pinning=pinning)
        memory = measure_memory(backend.url, connections=2000 if args.quick else 10_000)
    bodies = measure_bodies(20 if args.quick else BODY_MB)
    per_round = table.pop("_ratio_vs_haproxy_per_round")
    pure_per_round = table.pop("_pure_ratio_vs_haproxy_per_round", None)
    print_table(table)
    ratio = table["katyusha"]["32"]["rps"] / table["haproxy"]["32"]["rps"]
    added = table["katyusha"]["32"]["p50_ms"] - table["direct"]["32"]["p50_ms"]
    result = {
        "systems": table,
        "ratio_rps_vs_haproxy": round(ratio, 3),
        "ratio_rps_vs_nginx": round(table["katyusha"]["32"]["rps"] / table["nginx"]["32"]["rps"], 3),
        "ratio_2w_vs_1w": round(table["katyusha-2w"]["32"]["rps"] / table["katyusha"]["32"]["rps"], 3),
        "ratio_rps_vs_haproxy_round_median": round(statistics.median(per_round), 3),
        "ratio_rps_vs_haproxy_256": round(
            table["katyusha"]["256"]["rps"] / table["haproxy"]["256"]["rps"], 3),
        # The tail at 256 connections: katyusha's p99 over HAProxy's (goal: at most 3).
        "p99_ratio_vs_haproxy_256": round(
            table["katyusha"]["256"]["p99_ms"] / table["haproxy"]["256"]["p99_ms"], 3),
        "added_p50_ms": round(added, 3),
        "ratio_rps_vs_against": (
            {conns: round(table["katyusha"][conns]["rps"]
                          / table["katyusha@" + args.against][conns]["rps"], 3)
             for conns in ("32", "256")} if args.against else None),
        "ratio_lean_vs_uvicorn": (
            round(table["katyusha"]["32"]["rps"] / table["katyusha-uvicorn"]["32"]["rps"], 3)
            if "katyusha-uvicorn" in table else None),
        "ratio_vs_haproxy_per_round": [round(r, 3) for r in per_round],
        # katyusha-pure's keys beside katyusha's (--compiled-vs-pure).
        "pure": (dict(_keys(table, "katyusha-pure"), ratio_vs_haproxy_per_round=[
            round(r, 3) for r in pure_per_round]) if pure_per_round is not None else None),
        "ratio_rps_compiled_vs_pure": (
            {conns: round(table["katyusha"][conns]["rps"] / table["katyusha-pure"][conns]["rps"], 3)
             for conns in ("32", "256")} if pure_per_round is not None else None),
        "memory": memory,
        "bodies": bodies,
        "pinned": pinning.describe() if args.pin else None,
        "quick": args.quick,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    print(f"\nkatyusha / haproxy req/s at 32 connections: {ratio:.3f} "
          f"(median of per-round ratios {result['ratio_rps_vs_haproxy_round_median']:.3f})")
    print(f"katyusha added p50 over direct: {added:.3f} ms")
    print(f"katyusha / haproxy at 256 connections: req/s {result['ratio_rps_vs_haproxy_256']:.3f}, "
          f"p99 {result['p99_ratio_vs_haproxy_256']:.2f}")
    print("deepest accept queue at 256 connections: katyusha "
          f"{table['katyusha']['256']['accept_queue_max']}, HAProxy "
          f"{table['haproxy']['256']['accept_queue_max']}")
    if pure_per_round is not None:
        print(f"per-round ratios at 32: compiled {result['ratio_vs_haproxy_per_round']}, "
              f"pure {result['pure']['ratio_vs_haproxy_per_round']}")
        for name, keys in (("compiled", _keys(table, "katyusha")), ("pure", result["pure"])):
            print(f"{name:8s} " + ", ".join(f"{key} {keys[key]}" for key in _KEYS))
        print(f"compiled / pure req/s: {result['ratio_rps_compiled_vs_pure']}")
    print(f"memory: {json.dumps(memory)}")
    print(f"bodies: {json.dumps(bodies)}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
        for png in write_plots(args.json, table):
            print(f"wrote {png}")
    return 0


def write_plots(json_path: str, table: dict) -> list:
    """Throughput and p99 per system and connection count, as PNGs beside the JSON."""
    from benchmarks import plots

    def by_connections(field: str) -> dict:
        return {f"{conns} conns": {name: rows[conns][field] for name, rows in table.items() if conns in rows}
                for conns in next(iter(table.values()))}  # fmt: skip

    written = [
        plots.bars(plots.beside(json_path, "throughput"), by_connections("rps"),
                   title="proxy throughput (wrk, nginx backend)", ylabel="requests per second"),
        plots.bars(plots.beside(json_path, "p99"), by_connections("p99_ms"),
                   title="p99 latency (wrk)", ylabel="p99 latency (ms)"),
    ]
    return [path for path in written if path is not None]


if __name__ == "__main__":
    sys.exit(main())
