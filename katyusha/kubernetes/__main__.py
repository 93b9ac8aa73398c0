"""``python -m katyusha.kubernetes control``: the control plane as a Kubernetes Deployment (docs/kubernetes.md).

::

    python -m katyusha.kubernetes control --namespace NS --identity POD \\
        --katyusha katyusha-admin:admin --scale default=hello:hello [--config-autoscaler FILE] \\
        [--host 0.0.0.0 --admin-port 8090]

It serves ``/healthz``, ``/status`` and ``/metrics`` on its admin port
(katyusha.kubernetes.controlapi) and, once listening, prints the ready line
``katyusha-kubernetes-control ready data=URL admin=URL pid=N`` (both URLs
the admin port's) on stderr. Exit status 2 for a bad flag or file, 1 when
no cluster configuration works or the port cannot be bound; SIGTERM or
SIGINT stops it and gives the Lease up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys

from katyusha.config_values import read_yaml_mapping
from katyusha.core.autoscaler_config import KPAConfig
from katyusha.core.errors import ConfigError

PROG = "python -m katyusha.kubernetes"
ROLE = "katyusha-kubernetes-control"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description="katyusha's Kubernetes tools (docs/kubernetes.md).")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("control", help="autoscale Deployments from katyusha's demand, one leader at a time")
    c.add_argument("--namespace", default=os.environ.get("POD_NAMESPACE", "default"),
                   help="namespace of the Lease, katyusha and the Deployments ($POD_NAMESPACE, else default)")
    c.add_argument("--identity", default=os.environ.get("POD_NAME") or socket.gethostname(),
                   help="this candidate's name in the Lease ($POD_NAME, else the host name)")
    c.add_argument("--lease", default="katyusha-control", help="the Lease's name (katyusha-control)")
    c.add_argument("--katyusha", required=True, metavar="SERVICE:PORT",
                   help="katyusha's admin Service and port name, e.g. katyusha-admin:admin")
    c.add_argument("--scale", action="append", required=True, metavar="KEY=DEPLOYMENT[:SERVICE]",
                   help="a service to autoscale: katyusha's name for it, its Deployment, its Service (repeat)")
    c.add_argument("--config-autoscaler", metavar="FILE", help="YAML of config-autoscaler keys (docs/autoscaler.md)")
    c.add_argument("--kubeconfig", help="kubeconfig file (default: the service account inside a pod)")
    c.add_argument("--context", help="kubeconfig context")
    c.add_argument("--lease-duration", type=float, default=15.0)
    c.add_argument("--renew-deadline", type=float, default=10.0)
    c.add_argument("--retry-period", type=float, default=2.0)
    c.add_argument("--host", default="0.0.0.0", help="address of the admin port (0.0.0.0: the kubelet probes it)")
    c.add_argument("--admin-port", type=int, default=8090, help="port of /healthz, /status, /metrics (0: any)")
    c.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")  # fmt: skip
    try:
        base = KPAConfig.from_mapping(
            read_yaml_mapping(args.config_autoscaler, "--config-autoscaler") if args.config_autoscaler else None
        )
        from katyusha.kubernetes.controlplane import ScaleTarget
        from katyusha.kubernetes.discovery import ServiceRef

        name, _, port = args.katyusha.partition(":")
        katyusha = ServiceRef.parse(f"{args.namespace}/{name}" + (f":{port}" if port else ""))
        targets = [ScaleTarget.parse(text, args.namespace) for text in args.scale]
    except ConfigError as exc:
        sys.stderr.write(f"{PROG} control: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"{PROG} control: cannot read {args.config_autoscaler}: {exc.strerror or exc}\n")
        return 2
    return asyncio.run(_run(args, base, katyusha, targets))


async def _run(args, base, katyusha, targets) -> int:
    from katyusha.control.server import EmbeddedServer
    from katyusha.kubernetes.connect import ConnectError, api_client
    from katyusha.kubernetes.controlapi import build_app
    from katyusha.kubernetes.controlplane import KubernetesControlPlane
    from katyusha.kubernetes.leader import LeaderElector

    try:
        api = await api_client(args.kubeconfig, args.context)
    except ConnectError as exc:
        sys.stderr.write(f"{PROG} control: {exc}\n")
        return 1
    try:
        elector = LeaderElector(
            api, args.namespace, args.lease, args.identity, lease_duration=args.lease_duration,
            renew_deadline=args.renew_deadline, retry_period=args.retry_period,
        )  # fmt: skip
    except ConfigError as exc:
        await api.close()
        sys.stderr.write(f"{PROG} control: {exc}\n")
        return 2
    plane = KubernetesControlPlane(api, elector, katyusha, targets, base)
    try:
        server = EmbeddedServer(build_app(plane), args.host, args.admin_port)
    except OSError as exc:
        await api.close()
        sys.stderr.write(f"{PROG} control: {exc.strerror or exc}\n")
        return 1
    task = asyncio.create_task(plane.run())
    await server.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    sys.stderr.write(f"{ROLE} ready data={server.url} admin={server.url} pid={os.getpid()} "
                     f"identity={args.identity}\n")  # fmt: skip
    sys.stderr.flush()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await server.stop()
    await api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
