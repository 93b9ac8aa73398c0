"""Forwarder micro-benchmark: wrk against nginx, against nginx proxying, and against forward().

The forwarder is the smallest ASGI app around ``katyusha.http.forward`` on
uvicorn.Server (uvloop, one worker) with katyusha's lean HTTP protocol or
uvicorn's httptools one (``--http``), in front of nginx serving a small body;
its figures print next to nginx's, which is the peer to beat.

    python -m benchmarks.forward_micro [--duration 5] [--connections 32] [--http uvicorn]
    python -m benchmarks.forward_micro --profile   # cProfile of the forwarder
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import os
import pstats
import signal
import subprocess
import sys

from benchmarks import wrk
from benchmarks.peers import free_port, nginx_proxy, nginx_static, wait_port


def serve_forwarder(upstream: str, port: int, profile: str | None, http: str = "lean") -> None:
    """Run the forwarder in this process until SIGTERM/SIGINT."""
    import uvicorn
    import uvloop

    from katyusha.http import Pool, UpstreamError, forward
    from katyusha.http.server import LeanHTTPProtocol

    pool = Pool(upstream, max_idle=256)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        try:
            await forward(scope, receive, send, pool, timeout=10.0)
        except UpstreamError as exc:
            body = str(exc).encode()
            await send({"type": "http.response.start", "status": exc.status_hint,
                        "headers": [(b"content-length", b"%d" % len(body))]})
            await send({"type": "http.response.body", "body": body})

    protocol = LeanHTTPProtocol if http == "lean" else "httptools"
    config = uvicorn.Config(app, host="127.0.0.1", port=port, http=protocol, loop="none",
                            lifespan="off", access_log=False, log_level="warning",
                            server_header=False, date_header=False)
    server = uvicorn.Server(config)
    profiler = cProfile.Profile() if profile else None
    if profiler:
        profiler.enable()
    try:
        uvloop.run(server.serve())
    except KeyboardInterrupt:
        pass
    finally:
        if profiler:
            profiler.disable()
            profiler.dump_stats(profile)


@contextlib.contextmanager
def forwarder(upstream: str, profile: str | None = None, http: str = "lean"):
    port = free_port()
    argv = [sys.executable, "-m", "benchmarks.forward_micro", "--serve", upstream,
            "--port", str(port), "--http", http]
    if profile:
        argv += ["--profile-out", profile]
    popen = subprocess.Popen(argv, start_new_session=True)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}", popen
    finally:
        if popen.poll() is None:
            os.kill(popen.pid, signal.SIGINT)
        popen.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--profile", action="store_true",
                        help="profile the forwarder with cProfile and print the top functions")
    parser.add_argument("--http", choices=("lean", "uvicorn"), default="lean",
                        help="the forwarder's HTTP protocol (default lean)")
    parser.add_argument("--json", metavar="PATH", help="write the figures as JSON (and its PNGs beside it)")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--profile-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve_forwarder(args.serve, args.port, args.profile_out, args.http)
        return 0

    def measure(url: str):
        wrk.run(url, connections=args.connections, duration_s=1, threads=1)  # warm up
        return wrk.run(url, connections=args.connections, duration_s=args.duration, threads=1)

    profile_path = "/tmp/forward_micro.prof" if args.profile else None
    with nginx_static() as backend:
        direct = measure(backend.url + "/")
        with nginx_proxy([backend.url]) as proxy:
            via_nginx = measure(proxy.url + "/")
        with forwarder(backend.url, profile_path, args.http) as (url, _):
            via_forward = measure(url + "/")
    rows = [("nginx direct", direct), ("nginx proxy", via_nginx), ("forward()", via_forward)]
    print(f"wrk -t1 -c{args.connections} -d{args.duration:g}s, small body, 127.0.0.1")
    for name, result in rows:
        print(f"  {name:<13} {result.rps:>9.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
              f"p99 {result.p99_ms:6.2f} ms  errors {result.errors}")
    print(f"  forward()/nginx direct = {via_forward.rps / direct.rps:.2f}, "
          f"forward()/nginx proxy = {via_forward.rps / via_nginx.rps:.2f}")
    if profile_path:
        pstats.Stats(profile_path).sort_stats("tottime").print_stats(25)
    document = {"connections": args.connections, "duration_s": args.duration, "http": args.http,
                "systems": {name: {"rps": round(r.rps, 1), "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "errors": r.errors}
                            for name, r in rows},
                "ratio_vs_nginx_direct": round(via_forward.rps / direct.rps, 3),
                "ratio_vs_nginx_proxy": round(via_forward.rps / via_nginx.rps, 3)}
    from benchmarks import plots

    plots.save("forward_micro", document, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
