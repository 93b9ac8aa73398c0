"""``katyusha control``: the fleet's control plane as a process of its own, attached to running processes.

::

    katyusha control --fleet FLEET.yaml --processes PROCS.yaml [--host H] [--admin-port P] [--autoscale]

The fleet file says what the fleet is (pods, nodes, services, autoscaler);
the processes file says where its processes answer (katyusha.control.processes;
a fleet's state file is one). The control plane then keeps katyusha's pod
sets in step with pod states, autoscales when the fleet file says so, and
serves its admin API (katyusha.control.api) for ``katyusha fleet status|pod
--control URL``. It prints its dashboard's URL
(``dashboard: URL/dashboard``) and one ready line on stderr
(``katyusha-control ready data=URL admin=URL pid=N``; both URLs are the
admin port) and stops on SIGTERM or SIGINT, leaving every pod where it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from katyusha.config_values import read_yaml_mapping
from katyusha.core.errors import ConfigError

ROLE = "katyusha-control"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="katyusha control",
        description="Run a fleet's control plane (pod-set writer, autoscaler, placement, admin API) "
        "attached to katyusha, nonna and sim-backend processes that already run.",
        epilog="See docs/fleet.md, \"The control plane on its own\".",
    )
    p.add_argument("--fleet", metavar="FILE", help="fleet file (YAML); default: the one shipped with katyusha")
    p.add_argument("--processes", metavar="FILE", required=True,
                   help="where the processes answer (YAML or JSON; a fleet's state file works)")
    p.add_argument("--host", default="127.0.0.1", help="address the admin port listens on (127.0.0.1)")
    p.add_argument("--admin-port", type=int, help="admin port (default: the fleet file's autoscaler.admin-port; "
                   "0: kernel-chosen)")
    p.add_argument("--autoscale", action="store_true", default=None, help="run the autoscaler (as the fleet "
                   "file's autoscaler.enabled)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--admin-token", metavar="TOKEN", help="the fleet's admin token: asked of mutating "
                   "requests to this API and sent to every process (prefer --admin-token-file)")
    p.add_argument("--admin-token-file", metavar="FILE", help="file holding the admin token")
    p.add_argument("--admin-allow-open", action="store_true",
                   help="serve the admin port on a non-loopback --host with no token")
    return p


def main(argv: list[str]) -> int:
    """Run until SIGTERM/SIGINT; the exit status (2: bad flag or file, 1: could not start)."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    from katyusha.admintoken import check_exposure, resolve_token
    from katyusha.control.plane import ControlPlane
    from katyusha.control.processes import StaticProcesses
    from katyusha.fleet.spec import load_spec

    source = args.fleet or "(built-in default fleet)"
    if args.admin_port is not None and not 0 <= args.admin_port <= 65535:
        sys.stderr.write(f"katyusha control: --admin-port: must be a port from 0 to 65535, got {args.admin_port}\n")
        return 2
    try:
        token = resolve_token(args.admin_token, args.admin_token_file, token_key="--admin-token",
                              file_key="--admin-token-file")
        check_exposure(args.host, token, args.admin_allow_open, host_key="--host", token_key="--admin-token",
                       file_key="--admin-token-file", allow_key="--admin-allow-open")
    except ConfigError as exc:
        sys.stderr.write(f"katyusha control: {exc}\n")
        return 2
    try:
        spec = load_spec(args.fleet, {"autoscale": True} if args.autoscale else {})
    except ConfigError as exc:
        sys.stderr.write(f"katyusha control: {source}: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"katyusha control: cannot read {source}: {exc.strerror or exc}\n")
        return 2
    try:
        processes = StaticProcesses(read_yaml_mapping(args.processes, "--processes"), spec.pods)
    except ConfigError as exc:
        prefix = "" if exc.key == "--processes" else f"{args.processes}: "
        sys.stderr.write(f"katyusha control: {prefix}{exc}\n")
        return 2
    try:
        plane = ControlPlane(spec, processes, host=args.host, admin_port=args.admin_port, token=token)
    except OSError as exc:
        sys.stderr.write(f"katyusha control: {exc}\n")
        return 1
    return asyncio.run(_run(plane))


async def _run(plane) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await plane.start()
        sys.stderr.write(f"dashboard: {plane.admin_url}/dashboard\n")
        sys.stderr.write(f"{ROLE} ready data={plane.admin_url} admin={plane.admin_url} pid={os.getpid()}\n")
        sys.stderr.flush()
        await stop.wait()
    finally:
        with contextlib.suppress(Exception):
            await plane.stop()
    return 0
