"""``katyusha fleet up|status|pod``: the command line of the local fleet (see docs/fleet.md)."""

from __future__ import annotations

import argparse
import sys

from katyusha.core.errors import ConfigError
from katyusha.fleet import statefile
from katyusha.fleet.spec import INITIAL_STATES, load_spec

USAGE = """usage: katyusha fleet COMMAND [ARGS]

commands:
  up                       start a local fleet and keep it running (Ctrl-C stops it)
  status                   show a running fleet: processes, pod states, load tables, nodes
  pod NAME state STATE     move one pod to another state (null, cold, warmdisk, warm)
                           through the fleet's control plane
  compose                  write docker-compose.yml for the fleet file (see docs/containers.md)

status and pod find the fleet by its state file (--state-file, --port) or talk
to a control plane directly (--control URL, e.g. one run by `katyusha control`).

run `katyusha fleet COMMAND --help` for the flags of one command.
"""


def _up_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="katyusha fleet up",
        description="Start katyusha in front of a fleet of emulated pods (sim-backend + nonna), on loopback.",
        epilog="Flags override the fleet file; a pod flag applies to every pod. See docs/fleet.md.",
    )
    p.add_argument("--fleet", metavar="FILE", help="fleet file (YAML); default: the one shipped with katyusha")
    p.add_argument("--state-file", metavar="PATH", help="where to record the running fleet (default: see docs)")
    fleet = p.add_argument_group("fleet")
    fleet.add_argument("--pods", type=int, help="number of pods")
    fleet.add_argument("--nodes", type=int, help="number of logical nodes the pods are spread over")
    fleet.add_argument("--replicas", type=int, help="katyusha replicas")
    fleet.add_argument("--policy", help="katyusha's load-balancing policy")
    fleet.add_argument("--autoscale", action="store_true", default=None,
                       help="run the autoscaler: pods start null and are woken and retired by demand "
                       "(settings: the fleet file's autoscaler section)")  # fmt: skip
    fleet.add_argument("--port", type=int, help="data port of katyusha replica 0 (replica i: port+i; 0: kernel-chosen)")
    fleet.add_argument("--admin-port", type=int, help="admin port of replica 0 (replica i: admin-port+i)")
    fleet.add_argument("--host", help="address every process listens on")
    fleet.add_argument("--pod-port-base", type=int, help="0: kernel-chosen pod ports; N: pod i uses N+4(i-1)..+3")
    pods = p.add_argument_group("every pod")
    pods.add_argument("--service-time", help="service-time distribution, e.g. exp:20ms, const:2ms")
    pods.add_argument("--speed", type=float, help="speed factor (service times are divided by it)")
    pods.add_argument("--concurrency", type=int, help="container concurrency (0: unlimited)")
    pods.add_argument("--queue-depth", type=int, help="nonna's queue depth")
    pods.add_argument("--image-size-mb", type=float, help="container image size")
    pods.add_argument("--pull-mbps", type=float, help="image pull bandwidth")
    pods.add_argument("--start-s", type=float, help="container start time")
    pods.add_argument("--state", choices=INITIAL_STATES, help="initial state")
    runner = p.add_argument_group("runner")
    runner.add_argument("--poll-interval", type=float, dest="poll_interval_s", help="seconds between pod state reads")
    runner.add_argument("--ready-timeout", type=float, dest="ready_timeout_s", help="seconds a process may take to start")
    runner.add_argument("--stop-timeout", type=float, dest="stop_timeout_s", help="seconds a process may take to stop")
    runner.add_argument("--no-restart", action="store_false", dest="restart", default=None,
                        help="do not restart a process that dies")  # fmt: skip
    monitoring = p.add_argument_group("monitoring")
    monitoring.add_argument("--prometheus", action="store_true",
                            help="also run Prometheus (Debian's `prometheus`) scraping every process, with the "
                            "rules of deploy/prometheus/rules.yml; its URL is in the ready table")
    monitoring.add_argument("--prometheus-port", type=int, default=0,
                            help="Prometheus's port with --prometheus (default: a free one)")
    admin = p.add_argument_group("admin token")
    admin.add_argument("--admin-token-file", metavar="FILE",
                       help="one admin token for every process and the control plane: mutating admin "
                       "requests then need 'Authorization: Bearer <token>' (see docs/reliability.md)")
    admin.add_argument("--admin-allow-open", action="store_true",
                       help="let admin ports listen on a non-loopback --host with no token")
    return p


_OVERRIDES = (
    "pods", "nodes", "replicas", "policy", "port", "admin_port", "host", "pod_port_base",
    "service_time", "speed", "concurrency", "queue_depth", "image_size_mb", "pull_mbps", "start_s",
    "state", "poll_interval_s", "ready_timeout_s", "stop_timeout_s", "restart", "autoscale",
)  # fmt: skip


# Fleet-file keys whose value a flag gave, so an error names the flag the user typed.
_FLAG_OF_KEY = {
    "pods": ("--pods", "pods"), "nodes": ("--nodes", "nodes"), "host": ("--host", "host"),
    "pod_port_base": ("--pod-port-base", "pod_port_base"),
    "katyusha.replicas": ("--replicas", "replicas"), "katyusha.policy": ("--policy", "policy"),
    "katyusha.port": ("--port", "port"), "katyusha.admin_port": ("--admin-port", "admin_port"),
    "runner.poll_interval_s": ("--poll-interval", "poll_interval_s"),
    "runner.ready_timeout_s": ("--ready-timeout", "ready_timeout_s"),
    "runner.stop_timeout_s": ("--stop-timeout", "stop_timeout_s"),
}  # fmt: skip


def up(argv: list[str]) -> int:
    args = _up_parser().parse_args(argv)
    overrides = {key: getattr(args, key) for key in _OVERRIDES if getattr(args, key) is not None}
    source = args.fleet or "(built-in default)"
    try:
        spec = load_spec(args.fleet, overrides)
    except ConfigError as exc:
        flag, given = _FLAG_OF_KEY.get(exc.key, (exc.key, ""))
        if given in overrides or exc.key.startswith("--"):
            sys.stderr.write(f"katyusha fleet: {flag}: {str(exc).split(': ', 1)[1]}\n")
        else:
            sys.stderr.write(f"katyusha fleet: {source}: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"katyusha fleet: cannot read {source}: {exc.strerror or exc}\n")
        return 2
    from pathlib import Path

    from katyusha.admintoken import check_exposure, resolve_token
    from katyusha.fleet.runner import run_fleet

    token_file = str(Path(args.admin_token_file).resolve()) if args.admin_token_file else None
    try:
        token = resolve_token(None, token_file, file_key="--admin-token-file")
        check_exposure(spec.host, token, args.admin_allow_open, host_key="--host", token_key="--admin-token-file",
                       file_key="--admin-token-file", allow_key="--admin-allow-open")
    except ConfigError as exc:
        sys.stderr.write(f"katyusha fleet: {exc}\n")
        return 2
    prometheus = None
    if args.prometheus:
        from katyusha.fleet.prometheus import MISSING, PrometheusServer, find_binary

        binary = find_binary()
        if binary is None:
            sys.stderr.write(f"katyusha fleet: {MISSING}\n")
            return 2
        prometheus = PrometheusServer(binary, spec.host, args.prometheus_port)
    return run_fleet(spec, Path(args.state_file) if args.state_file else None, source=source,
                     token_file=token_file, token=token, allow_open=args.admin_allow_open,
                     prometheus=prometheus)


def _finder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-file", metavar="PATH", help="the running fleet's state file")
    p.add_argument("--port", type=int, help="katyusha port the fleet was started with (finds its state file)")
    p.add_argument("--control", metavar="URL",
                   help="the control plane's admin URL (instead of finding the fleet by its state file)")
    p.add_argument("--admin-token-file", metavar="FILE",
                   help="the fleet's admin token (default: the file its state file names, if any)")


def _control_and_document(args) -> tuple[str | None, dict | None]:
    """The control plane's URL and the state file's document (None when ``--control`` is given). Raises NoFleet."""
    if args.control:
        return args.control.rstrip("/"), None
    _, document = statefile.find(args.state_file, args.port)
    control = document.get("control") or {}
    return control.get("admin"), document


def _token(args, document: dict | None) -> str | None:
    """The admin token: ``--admin-token-file``, else the file the state file names. Raises ConfigError."""
    from katyusha.admintoken import resolve_token

    path = args.admin_token_file or (document or {}).get("admin_token_file")
    return resolve_token(None, path, file_key="--admin-token-file")


async def _live_view(control: str | None, document: dict | None, token: str | None = None) -> dict:
    """The fleet's live view from its control plane, or read directly from the processes when none answers."""
    from katyusha.control.adminclient import AdminClient, AdminError
    from katyusha.control.fleetview import collect

    async with AdminClient(token=token) as client:
        if control is not None:
            try:
                return await client.get_json(control + "/fleet", timeout=30.0)
            except AdminError as exc:
                if document is None:
                    raise statefile.NoFleet(f"control plane {control} does not answer: {exc}") from None
        live = await collect(client, document)
        live["control_up"] = control is None
        return live


def status(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="katyusha fleet status", description="Show a running local fleet.")
    _finder(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = p.parse_args(argv)
    import asyncio
    import json

    from katyusha.fleet.statustext import nodes_text, status_text

    try:
        control, document = _control_and_document(args)
        live = asyncio.run(_live_view(control, document, _token(args, document)))
    except (statefile.NoFleet, ConfigError) as exc:
        sys.stderr.write(f"katyusha fleet status: {exc}\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps(live, indent=2) + "\n")
    else:
        sys.stdout.write(status_text(live) + nodes_text(live["nodes"], live.get("placement")))
    down = any(not r["up"] for r in live["replicas"]) or any(not (p["sim_up"] and p["nonna_up"]) for p in live["pods"])
    return 1 if down else 0


async def _move(control: str, name: str, target: str, timeout: float,
                token: str | None = None, sim_admin: str | None = None) -> tuple[int, dict | str]:
    import asyncio
    from urllib.parse import quote

    from katyusha.control.adminclient import AdminClient

    async with AdminClient(token=token) as client:
        move = asyncio.ensure_future(client.call("PUT", f"{control}/pods/{quote(name, safe='')}/state",
                                                 {"state": target, "timeout": timeout}, timeout=timeout + 30.0))  # fmt: skip
        if sim_admin is not None:
            await _follow(client, sim_admin, move)
        return await move


async def _follow(client, sim_admin: str, move) -> None:
    """A progress bar (on a terminal only) of the pod's transitions while ``move`` runs: image pull, start."""
    import asyncio

    from katyusha.control.adminclient import AdminError
    from katyusha.progress import SECONDS, bar

    progress = None
    shown = None
    try:
        while not move.done():
            try:
                transition = (await client.pod_state(sim_admin)).get("transition")
            except AdminError:
                transition = None
            if transition:
                total = max(transition["ends_at"] - transition["started_at"], 0.0)
                label = f"{transition['from']} -> {transition['to']}"
                if progress is None or shown != label:
                    _finish(progress)
                    progress, shown = bar(round(total, 1), label, "s", leave=True, bar_format=SECONDS), label
                progress.n = round(max(total - transition["remaining_s"], 0.0), 1)
                progress.refresh()
            await asyncio.wait({move}, timeout=0.2)
    finally:
        _finish(progress)


def _finish(progress) -> None:
    """Close a transition's bar at its end: the transition is over once the next one or the answer came."""
    if progress is not None:
        progress.n = progress.total or progress.n
        progress.close()


def pod(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="katyusha fleet pod",
        usage="katyusha fleet pod NAME state STATE [--timeout S] [--state-file PATH | --port P | --control URL]",
        description="Move one pod of a running fleet to another state through its control plane, draining "
        "it from katyusha first when it leaves service and adding it back once it is warm.",
    )
    p.add_argument("name", metavar="NAME", help="pod name, e.g. pod-1")
    p.add_argument("verb", metavar="state", choices=["state"], help="the word `state`")
    p.add_argument("target", metavar="STATE", help=f"one of {', '.join(INITIAL_STATES)}")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for drain and for the state (120)")
    _finder(p)
    args = p.parse_args(argv)
    import asyncio

    from katyusha.control.adminclient import AdminError

    if args.target not in INITIAL_STATES:
        sys.stderr.write(f"katyusha fleet pod: state {args.target!r} is not one of {', '.join(INITIAL_STATES)}\n")
        return 2
    try:
        control, document = _control_and_document(args)
        if control is None:
            raise statefile.NoFleet("this fleet records no control plane (give --control URL)")
        sim_admin = next((p["sim"].get("admin") for p in (document or {}).get("pods", [])
                          if p["name"] == args.name), None)  # fmt: skip
        status_code, payload = asyncio.run(_move(control, args.name, args.target, args.timeout,
                                                 _token(args, document), sim_admin))
    except (statefile.NoFleet, AdminError, ConfigError) as exc:
        sys.stderr.write(f"katyusha fleet pod: {exc}\n")
        return 1
    answer = payload if isinstance(payload, dict) else {"error": str(payload)}
    for line in answer.get("steps", []):
        sys.stdout.write(line + "\n")
    if status_code == 200:
        return 0
    sys.stderr.write(f"katyusha fleet pod: {answer.get('error', f'HTTP {status_code}')}\n")
    return 2 if status_code in (400, 404) else 1


def main(argv: list[str]) -> int:
    """Dispatch ``katyusha fleet ARGS``; returns the exit status."""
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    from katyusha.fleet.compose import main as compose

    commands = {"up": up, "status": status, "pod": pod, "compose": compose}
    command = commands.get(argv[0])
    if command is None:
        sys.stderr.write(f"katyusha fleet: unknown command {argv[0]!r}\n\n{USAGE}")
        return 2
    return command(argv[1:])
