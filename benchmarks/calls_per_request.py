"""Python calls per request on katyusha's body-less path, beside another commit's: a steadier figure than req/s.

Run as ``python -m benchmarks.calls_per_request [--against REF] [--connections N]
[--requests N] [--json PATH]``. Needs nginx.

One nginx backend serving a small body; katyusha in front as users run it
(one worker, default policy, L1 queue and metrics on) under cProfile, switched
on by a signal after a warm-up; then ``--connections`` keep-alive connections
send ``--requests`` ``GET /`` each, one at a time (a light closed-loop client,
so the count, not the machine's speed, fixes the work). The profile's call
counts over the requests sent are the figures: ``python_calls`` (functions
written in Python) and ``all_calls`` (built-ins included). With ``--against``
the same is measured for the ``katyusha`` package at that git ref of this
checkout, and ``ratio_python_calls`` is this tree's over it. JSON: ``versions``
(``this tree`` and REF: ``requests``, ``python_calls``, ``all_calls``),
``against``, ``ratio_python_calls``; a bar plot beside it. Counts barely
move between runs, where req/s on a shared 2-core machine moves by a third.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import peers, plots
from benchmarks.overhead import _FROM_TREE, checkout
from katyusha.procs import Proc, exit_on_signals

# katyusha's CLI under cProfile: SIGUSR2 starts the profile, SIGUSR1 writes it to argv[1] and exits.
_PROFILED = (
    "import cProfile, signal, sys; out = sys.argv.pop(1); profile = cProfile.Profile()\n"
    "def stop(*_):\n    profile.disable(); profile.dump_stats(out); sys.exit(0)\n"
    "signal.signal(signal.SIGUSR1, stop)\n"
    "signal.signal(signal.SIGUSR2, lambda *_: profile.enable())\n"
)
_INSTALLED = "from katyusha.cli import main; sys.argv[0] = 'katyusha'; sys.exit(main())"


async def _client(port: int, connections: int, requests: int) -> int:
    """``requests`` keep-alive ``GET /`` on each of ``connections``, one at a time; the 200s answered."""
    async def one() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        ok = 0
        try:
            for _ in range(requests):
                writer.write(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                ok += head.startswith(b"HTTP/1.1 200")
        finally:
            writer.close()
        return ok

    return sum(await asyncio.gather(*(one() for _ in range(connections))))


def count_calls(backend_url: str, tree: str | None, connections: int, requests: int) -> dict:
    """Calls per request of the installed katyusha (``tree`` None) or of the package in ``tree``."""
    with tempfile.TemporaryDirectory(prefix="bench-calls-") as tmp:
        config = Path(tmp) / "katyusha.yaml"
        config.write_text('katyusha-threads: "1"\n')
        out = str(Path(tmp) / "katyusha.prof")
        port = peers.free_port()
        code = _PROFILED + (_INSTALLED if tree is None else _FROM_TREE)
        argv = [sys.executable, "-c", code, out, *([tree] if tree else []), "serve", "--port", str(port),
                "--admin-port", "0", "--pod", f"{backend_url},name=backend,node=local", "--config", str(config)]
        # The Python path's calls: compiled modules (setup.py), if built, are not used.
        proc = Proc(argv, ready_timeout=30, env={"KATYUSHA_PURE_PYTHON": "1"})
        try:
            peers.wait_port(port)
            warm = asyncio.run(_client(port, connections, 200))
            os.kill(proc.popen.pid, signal.SIGUSR2)
            time.sleep(0.2)
            answered = asyncio.run(_client(port, connections, requests))
            time.sleep(0.2)
            os.kill(proc.popen.pid, signal.SIGUSR1)
            proc.popen.wait(15)
        finally:
            proc.terminate()
            proc.kill()
        sent = connections * requests
        if warm != connections * 200 or answered != sent:
            raise RuntimeError(f"not every request answered 200: warm-up {warm}, measured {answered} of {sent}")
        stats = pstats.Stats(out).stats  # type: ignore[attr-defined]
    python = sum(v[1] for k, v in stats.items() if not k[0].startswith("~"))
    every = sum(v[1] for v in stats.values())
    return {"requests": sent, "python_calls": round(python / sent, 1), "all_calls": round(every / sent, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.calls_per_request", description=__doc__.split("\n")[0])
    parser.add_argument("--against", metavar="REF", help="also count the katyusha package at this git ref")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--requests", type=int, default=1000, help="requests per connection (measured)")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    peers.require("nginx")
    exit_on_signals()
    versions: dict = {}
    with peers.nginx_static() as backend:
        versions["this tree"] = mine = count_calls(backend.url, None, args.connections, args.requests)
        print(f"this tree: {mine['python_calls']} Python calls a request ({mine['all_calls']} with built-ins), "
              f"{mine['requests']} requests", flush=True)
        if args.against:
            with checkout(args.against) as tree:
                versions[args.against] = theirs = count_calls(backend.url, tree, args.connections, args.requests)
            print(f"{args.against}: {theirs['python_calls']} Python calls a request ({theirs['all_calls']} with built-ins)")
    plots.write("calls_per_request", write_beside(versions, args.against, "python_calls", args.json), args.json)
    return 0


def write_beside(versions: dict, against: str | None, key: str, json_path: str | None) -> dict:
    """The JSON of a count of this tree beside REF's: ``versions``, ``against`` and
    ``ratio_<key>`` (this tree's over REF's, printed); written to ``json_path`` when given."""
    out = {"versions": versions, "against": against,
           f"ratio_{key}": (round(versions["this tree"][key] / versions[against][key], 3)
                            if against else None)}
    if against:
        print(f"ratio this tree / {against}: {out[f'ratio_{key}']}")
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    sys.exit(main())
