"""``katyusha fleet compose``: the fleet file as a compose file, one container per process.

:func:`render` turns a :class:`~katyusha.fleet.spec.FleetSpec` into the text of
``docker-compose.yml`` and of the Prometheus scrape config its ``monitoring``
profile mounts (``deploy/prometheus/compose.yml``). The repository's copies are
generated from the shipped default fleet file, and a test checks they are
unchanged, so ``docker compose up`` and ``make fleet`` run the same fleet: the
same pods, nodes and settings, with the flags the local runner gives each process.

Inside the compose network every process has fixed ports (see :data:`PORTS`)
and is reached by its service name; only katyusha (and Prometheus) publish
ports on the host, bound to 127.0.0.1 unless ``BIND_ADDRESS`` says otherwise.
Every service has a healthcheck that asks its admin port whether the process
serves (not whether its pod is warm: a cold pod's containers are healthy).

The fleet has no control plane in containers yet; a fleet file with the
autoscaler on is refused (:class:`ComposeError`). Its service belongs in
:func:`control_plane_service`, the one place to add it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from katyusha.core.errors import ConfigError
from katyusha.fleet.spec import FleetSpec, PodSpec

COMPOSE_FILE = "docker-compose.yml"
PROMETHEUS_FILE = "deploy/prometheus/compose.yml"
PROJECT = "katyusha"
IMAGE = "${KATYUSHA_IMAGE:-katyusha:local}"
BASE_IMAGE = "${BASE_IMAGE:-python:3.11-slim}"
PROMETHEUS_IMAGE = "${PROMETHEUS_IMAGE:-prom/prometheus:v2.42.0}"
BIND = "${BIND_ADDRESS:-127.0.0.1}"
SCRAPE_INTERVAL = "5s"
# Room on top of katyusha's own drain (shutdown-timeout) before the engine sends SIGKILL.
STOP_MARGIN_S = 10


@dataclass(frozen=True)
class Ports:
    """The fixed ports of one kind of process inside its container."""

    data: int
    admin: int


PORTS = {"sim-backend": Ports(9001, 9002), "nonna": Ports(8080, 9090), "katyusha": Ports(8080, 9080)}
PROMETHEUS_PORT = 9090

# Health = the process answers on its admin port. /state and /stats answer 200
# whatever the pod's state (their /healthz answers 503 while the pod is cold).
_PROBE = "import sys, urllib.request as u; u.urlopen(sys.argv[1], timeout=2)"
_HEALTH_TIMING = {"interval": "5s", "timeout": "3s", "retries": 6, "start_period": "30s"}


class ComposeError(Exception):
    """The fleet cannot be written as a compose file (the message says why)."""


def sim_name(pod: PodSpec) -> str:
    return f"{pod.name}-sim"


def nonna_name(pod: PodSpec) -> str:
    return f"{pod.name}-nonna"


def katyusha_name(replica: int) -> str:
    """Replica 0 is ``katyusha``; more replicas are ``katyusha-1``, ``katyusha-2``, ..."""
    return "katyusha" if replica == 0 else f"katyusha-{replica}"


def _url(service: str, port: int, path: str = "") -> str:
    return f"http://{service}:{port}{path}"


def _healthcheck(url: str) -> dict:
    return {"test": ["CMD", "python", "-c", _PROBE, url], **_HEALTH_TIMING}


def _sim(pod: PodSpec) -> dict:
    p, ports = pod.params, PORTS["sim-backend"]
    command = [
        "sim-backend", "--host", "0.0.0.0", "--port", str(ports.data), "--admin-port", str(ports.admin),
        "--pod", pod.name, "--node", pod.node, "--state", p.state,
        "--service-time", p.service_time, "--speed", f"{p.speed:g}",
        "--image-size-mb", f"{p.image_size_mb:g}", "--pull-mbps", f"{p.pull_mbps:g}", "--start-s", f"{p.start_s:g}",
    ]  # fmt: skip
    return _process(command, "sim-backend", pod, _url("127.0.0.1", ports.admin, "/state"))


def _nonna(pod: PodSpec) -> dict:
    p, ports, sim = pod.params, PORTS["nonna"], PORTS["sim-backend"]
    command = [
        "nonna", "--host", "0.0.0.0", "--port", str(ports.data), "--admin-port", str(ports.admin),
        "--upstream", _url(sim_name(pod), sim.data),
        "--upstream-health", _url(sim_name(pod), sim.admin, "/healthz"),
        "--concurrency", str(p.concurrency), "--queue-depth", str(p.queue_depth),
        "--pod", pod.name, "--node", pod.node,
    ]  # fmt: skip
    service = _process(command, "nonna", pod, _url("127.0.0.1", ports.admin, "/stats"))
    service["depends_on"] = {sim_name(pod): {"condition": "service_healthy"}}
    return service


def _process(command: list[str], role: str, pod: PodSpec, health_url: str) -> dict:
    return {
        "image": IMAGE,
        "pull_policy": "never",
        "command": command,
        "labels": {"io.katyusha.role": role, "io.katyusha.pod": pod.name, "io.katyusha.node": pod.node},
        "healthcheck": _healthcheck(health_url),
    }


def pod_flag(pod: PodSpec) -> str:
    """katyusha's ``--pod`` value for one pod: what the runner PUTs on /pods (docs/katyusha.md)."""
    nonna = PORTS["nonna"]
    return (
        f"{_url(nonna_name(pod), nonna.data)},name={pod.name},node={pod.node},"
        f"admin={_url(nonna_name(pod), nonna.admin)},concurrency={pod.params.concurrency}"
    )


def _katyusha(spec: FleetSpec, replica: int) -> dict:
    k, ports = spec.katyusha, PORTS["katyusha"]
    # Pods that start warm serve from the start; the others are out of katyusha's set, as with the runner.
    serving = [pod for pod in spec.pods if pod.params.state == "warm"]
    command = [
        "katyusha", "serve", "--host", "0.0.0.0", "--port", str(ports.data), "--admin-port", str(ports.admin),
        "--policy", k.policy, *(arg for pod in serving for arg in ("--pod", pod_flag(pod))), *k.args,
    ]  # fmt: skip
    data, admin = k.ports(replica)
    suffix = "" if replica == 0 else f"_{replica}"
    return {
        "image": IMAGE,
        "pull_policy": "never",
        "command": command,
        "labels": {"io.katyusha.role": "katyusha", "io.katyusha.replica": str(replica)},
        "ports": [
            f"{BIND}:${{KATYUSHA_PORT{suffix}:-{data}}}:{ports.data}",
            f"{BIND}:${{KATYUSHA_ADMIN_PORT{suffix}:-{admin}}}:{ports.admin}",
        ],
        "healthcheck": _healthcheck(_url("127.0.0.1", ports.admin, "/healthz")),
        "stop_grace_period": f"{int(drain_seconds(command[2:]) + STOP_MARGIN_S)}s",
        # Started once every pod is up, as the runner does; pods that start warm are in its set from the start.
        "depends_on": {
            nonna_name(pod): {"condition": "service_healthy" if pod in serving else "service_started"}
            for pod in spec.pods
        },
    }


def drain_seconds(serve_args: list[str]) -> float:
    """katyusha's ``shutdown-timeout`` for ``katyusha serve`` flags, read by katyusha's own parser.

    Raises ComposeError when the flags are not valid ``katyusha serve`` flags.
    """
    from katyusha.proxy import cli, config

    try:
        args = cli.build_parser().parse_args(serve_args)
        return config.load(flags=cli.flags_from_args(args), environ={}).shutdown_timeout
    except ConfigError as exc:
        raise ComposeError(f"katyusha.args: {exc}") from None
    except SystemExit:  # argparse already said what was wrong on stderr
        raise ComposeError("katyusha.args: not valid `katyusha serve` flags") from None


def control_plane_service(spec: FleetSpec) -> dict[str, dict]:
    """The control plane's service(s), when the fleet has one; none yet.

    An autoscaled fleet needs a control plane container that attaches to the
    pods and replicas by service name; until it exists such a fleet is refused
    rather than written as a frozen fleet. Raises ComposeError.

    Adding it: return ``{"control": {...}}`` (the image, its command with
    every replica's and pod's admin URL by service name, a healthcheck on its
    admin port, ``depends_on`` katyusha), give :func:`_katyusha` its
    ``--demand-url``, and add its admin port to :func:`prometheus_document`.
    """
    if spec.autoscaler.enabled:
        raise ComposeError("the compose fleet has no control plane yet: autoscaling runs only with `katyusha fleet up`")
    return {}


def _prometheus() -> dict:
    return {
        "image": PROMETHEUS_IMAGE,
        "profiles": ["monitoring"],
        "command": [
            f"--config.file=/etc/prometheus/{Path(PROMETHEUS_FILE).name}",
            "--storage.tsdb.path=/prometheus",
            f"--web.listen-address=:{PROMETHEUS_PORT}",
        ],
        "volumes": [f"./{PROMETHEUS_FILE}:/etc/prometheus/{Path(PROMETHEUS_FILE).name}:ro"],
        "ports": [f"{BIND}:${{PROMETHEUS_PORT:-{PROMETHEUS_PORT}}}:{PROMETHEUS_PORT}"],
        "healthcheck": {
            # promtool is in both images; `check healthy` is not in Debian's 2.42, an instant query is.
            "test": ["CMD", "promtool", "query", "instant", f"http://127.0.0.1:{PROMETHEUS_PORT}", "vector(1)"],
            **_HEALTH_TIMING,
        },
    }


def compose_document(spec: FleetSpec) -> dict:
    """The compose file for ``spec`` as a mapping. Raises ComposeError."""
    services: dict[str, dict] = {}
    for pod in spec.pods:
        services[sim_name(pod)] = _sim(pod)
        services[nonna_name(pod)] = _nonna(pod)
    for replica in range(spec.katyusha.replicas):
        services[katyusha_name(replica)] = _katyusha(spec, replica)
    services.update(control_plane_service(spec))
    services["prometheus"] = _prometheus()
    # One service builds the image; the others use it (pull_policy: never keeps
    # Docker Compose from looking for it in a registry).
    first = next(iter(services))
    build = {"context": ".", "dockerfile": "Dockerfile", "args": {"BASE_IMAGE": BASE_IMAGE}}
    services[first] = {"image": IMAGE, "build": build, **{k: v for k, v in services[first].items()
                                                         if k not in ("image", "pull_policy")}}
    return {"name": PROJECT, "services": services}


def prometheus_document(spec: FleetSpec) -> dict:
    """The monitoring profile's scrape config: every process of the compose fleet."""
    k, nonna, sim = PORTS["katyusha"], PORTS["nonna"], PORTS["sim-backend"]
    replicas = [f"{katyusha_name(i)}:{k.admin}" for i in range(spec.katyusha.replicas)]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "scrape_configs": [
            # katyusha's series carry the pod they are about in their own `pod` label.
            {"job_name": "katyusha", "static_configs": [{"targets": replicas}]},
            {"job_name": "nonna", "static_configs": [
                {"targets": [f"{nonna_name(pod)}:{nonna.admin}"], "labels": {"pod": pod.name, "node": pod.node}}
                for pod in spec.pods
            ]},
            # sim-backend labels its series with the same pod and node itself.
            {"job_name": "sim-backend", "honor_labels": True, "static_configs": [
                {"targets": [f"{sim_name(pod)}:{sim.admin}"], "labels": {"pod": pod.name, "node": pod.node}}
                for pod in spec.pods
            ]},
        ],
    }  # fmt: skip


_COMPOSE_HEADER = """\
# The local fleet in containers: the same fleet as `make fleet` ({source}),
# one container per process. Generated by `katyusha fleet compose`; edit the
# fleet file and regenerate, not this file (a test checks they agree).
#
#   make wheelhouse                 # the image installs the project from wheels built here
#   docker compose up --build -d    # or: podman-compose up --build -d
#   curl http://127.0.0.1:8080/     # katyusha; its admin port (/pods, /metrics) is 9080
#   docker compose --profile monitoring up -d    # plus Prometheus on 127.0.0.1:9090
#
# Variables: KATYUSHA_PORT, KATYUSHA_ADMIN_PORT, PROMETHEUS_PORT (host ports),
# BIND_ADDRESS (127.0.0.1), BASE_IMAGE (python:3.11-slim), KATYUSHA_IMAGE,
# PROMETHEUS_IMAGE. Inside the network: sim-backend {sim.data} (admin {sim.admin}),
# nonna {nonna.data} (admin {nonna.admin}), katyusha {k.data} (admin {k.admin}). See docs/containers.md.

"""

_PROMETHEUS_HEADER = """\
# Prometheus scrape config of the compose fleet's `monitoring` profile: every
# katyusha, nonna and sim-backend container by service name. Generated by
# `katyusha fleet compose` from {source}; regenerate, do not edit.

"""


def _dump(document: dict) -> str:
    # Lists of scalars (commands, ports) inline; everything else in block style.
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=110)


def render(spec: FleetSpec, source: str = "katyusha/fleet/default.yaml") -> dict[str, str]:
    """File path (relative to the repository) -> text, for both generated files. Raises ComposeError."""
    ports = {"sim": PORTS["sim-backend"], "nonna": PORTS["nonna"], "k": PORTS["katyusha"]}
    return {
        COMPOSE_FILE: _COMPOSE_HEADER.format(source=source, **ports) + _dump(compose_document(spec)),
        PROMETHEUS_FILE: _PROMETHEUS_HEADER.format(source=source) + _dump(prometheus_document(spec)),
    }


def main(argv: list[str]) -> int:
    """``katyusha fleet compose [--fleet FILE] [--dir DIR] [--check]``; returns the exit status.

    Writes (or with ``--check`` compares) the compose file and its scrape
    config under DIR. 0: written or unchanged; 1: ``--check`` found a file
    that differs; 2: a bad fleet file or one compose cannot run.
    """
    import argparse
    import sys

    from katyusha.fleet.spec import load_spec

    p = argparse.ArgumentParser(
        prog="katyusha fleet compose",
        description=f"Write {COMPOSE_FILE} and {PROMETHEUS_FILE} for a fleet file (one container a process).",
    )
    p.add_argument("--fleet", metavar="FILE", help="fleet file (YAML); default: the one shipped with katyusha")
    p.add_argument("--dir", default=".", help="the repository root to write under (default: .)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs")
    args = p.parse_args(argv)
    try:
        texts = render(load_spec(args.fleet), source=args.fleet or "katyusha/fleet/default.yaml")
    except (ConfigError, ComposeError) as exc:
        sys.stderr.write(f"katyusha fleet compose: {args.fleet or '(built-in default)'}: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"katyusha fleet compose: cannot read {args.fleet}: {exc.strerror or exc}\n")
        return 2
    stale = []
    for name, text in texts.items():
        path = Path(args.dir) / name
        current = path.read_text() if path.exists() else None
        if current == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check:
        for name in stale:
            sys.stderr.write(f"katyusha fleet compose: {name} differs from the fleet file; run `katyusha fleet compose`\n")
        return 1 if stale else 0
    sys.stdout.write("".join(f"wrote {name}\n" for name in stale) or "up to date\n")
    return 0
