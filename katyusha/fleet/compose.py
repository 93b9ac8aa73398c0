"""``katyusha fleet compose``: the fleet file as a compose file, one container per process.

:func:`render` turns a fleet file into the text of ``docker-compose.yml``, of
the Prometheus scrape config its ``monitoring`` profile mounts
(``deploy/prometheus/compose.yml``) and of the control plane's two files
(below). The repository's copies are generated from the shipped default
fleet file, and a test checks they are unchanged, so ``docker compose up``
and ``make fleet`` run the same fleet: the same pods, nodes and settings,
with the flags the local runner gives each process, and a control plane.

The control plane is one more service, ``control`` (``katyusha control``),
given the fleet file and a processes file naming every other service; both
are generated here too (``deploy/containers/fleet.yaml``, a copy of the fleet
file, and ``deploy/containers/processes.yaml``) and mounted read-only, so the
four generated files never drift apart.

Inside the compose network every process has fixed ports (see :data:`PORTS`)
and is reached by its service name; only katyusha, the control plane (and
Prometheus) publish ports on the host. Data ports are bound to 127.0.0.1
unless ``BIND_ADDRESS`` says otherwise; admin ports, which move pods and
take no token yet, to 127.0.0.1 always (:data:`ADMIN_BIND`). Every service
has a healthcheck that asks its admin port whether the process serves (not
whether its pod is warm: a cold pod's containers are healthy).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from katyusha.core.errors import ConfigError
from katyusha.fleet.prometheus import rules_text
from katyusha.fleet.spec import FleetSpec, PodSpec, default_fleet_path, load_spec

DEFAULT_SOURCE = "katyusha/fleet/default.yaml"
COMPOSE_FILE = "docker-compose.yml"
PROMETHEUS_FILE = "deploy/prometheus/compose.yml"
RULES_FILE = "deploy/prometheus/rules.yml"  # a copy of katyusha/fleet/prometheus-rules.yml
FLEET_FILE = "deploy/containers/fleet.yaml"
# The admin token every process of the compose fleet asks of mutating admin requests.
TOKEN_FILE = "deploy/compose/admin-token"
TOKEN_SECRET = "admin-token"
TOKEN_ROLES = ("katyusha", "nonna", "sim-backend", "control")
PROCESSES_FILE = "deploy/containers/processes.yaml"
# Where the control service finds them (mounted read-only).
MOUNT_DIR = "/etc/katyusha"
PROJECT = "katyusha"
IMAGE = "${KATYUSHA_IMAGE:-katyusha:local}"
BASE_IMAGE = "${BASE_IMAGE:-python:3.11-slim}"
PROMETHEUS_IMAGE = "${PROMETHEUS_IMAGE:-prom/prometheus:v2.42.0}"
BIND = "${BIND_ADDRESS:-127.0.0.1}"
# Admin ports move pods and read the fleet; they ask for the token (see admin_token)
# and are published on loopback only, whatever BIND_ADDRESS says.
ADMIN_BIND = "127.0.0.1"
SCRAPE_INTERVAL = "5s"
# Room on top of katyusha's own drain (shutdown-timeout) before the engine sends SIGKILL.
STOP_MARGIN_S = 10


@dataclass(frozen=True)
class Ports:
    """The fixed ports of one kind of process inside its container."""

    data: int | None  # None: the process has only an admin port
    admin: int


CONTROL = "control"  # the control plane's service name and role
PORTS = {
    "sim-backend": Ports(9001, 9002), "nonna": Ports(8080, 9090), "katyusha": Ports(8080, 9080),
    CONTROL: Ports(None, 9070),
}  # fmt: skip
# The control plane's host port when the fleet file leaves autoscaler.admin-port kernel-chosen (0).
CONTROL_HOST_PORT = 9070
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
        *(["--app", p.app] if p.app != "emulated" else []),
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


def _nonna_urls(pod: PodSpec) -> tuple[str, str]:
    """The data and admin URLs of a pod's nonna inside the compose network."""
    nonna = PORTS["nonna"]
    return _url(nonna_name(pod), nonna.data), _url(nonna_name(pod), nonna.admin)


def pod_flag(pod: PodSpec) -> str:
    """katyusha's ``--pod`` value for one pod: what the control plane PUTs on /pods (docs/katyusha.md)."""
    data, admin = _nonna_urls(pod)
    return f"{data},name={pod.name},node={pod.node},admin={admin},concurrency={pod.params.concurrency}"


def _katyusha(spec: FleetSpec, replica: int) -> dict:
    k, ports = spec.katyusha, PORTS["katyusha"]
    # Pods that start warm serve from the start; the others (null, cold, warmdisk: an autoscaled
    # fleet's slots among them) stay out of katyusha's set until the control plane adds them.
    serving = [pod for pod in spec.pods if pod.params.state == "warm"]
    demand = _url(CONTROL, PORTS[CONTROL].admin, "/demand")
    command = [
        "katyusha", "serve", "--host", "0.0.0.0", "--port", str(ports.data), "--admin-port", str(ports.admin),
        "--policy", k.policy, *(["--demand-url", demand] if spec.autoscaler.enabled else []),
        *(arg for pod in serving for arg in ("--pod", pod_flag(pod))), *k.args,
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
            f"{ADMIN_BIND}:${{KATYUSHA_ADMIN_PORT{suffix}:-{admin}}}:{ports.admin}",
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
        # The token comes with admin_token(); only the drain is read here, so the admin port's
        # exposure check (0.0.0.0 without a token) is not this function's question.
        args = cli.build_parser().parse_args([*serve_args, "--admin-allow-open", "true"])
        return config.load(flags=cli.flags_from_args(args), environ={}).shutdown_timeout
    except ConfigError as exc:
        raise ComposeError(f"katyusha.args: {exc}") from None
    except SystemExit:  # argparse already said what was wrong on stderr
        raise ComposeError("katyusha.args: not valid `katyusha serve` flags") from None


def control_plane_service(spec: FleetSpec) -> dict[str, dict]:
    """The control plane's service: ``katyusha control`` on the generated fleet and processes files.

    It attaches to every replica and pod by service name (:func:`processes_document`),
    keeps katyusha's sets in step with the pods' states, autoscales when the
    fleet file says so (katyusha then POSTs its demand to it), and serves the
    admin API ``katyusha fleet status|pod --control URL`` use, published on
    loopback at ``CONTROL_PORT`` (default: the fleet file's
    ``autoscaler.admin-port``, or 9070 when that is 0).
    """
    port = PORTS[CONTROL].admin
    host_port = spec.autoscaler.admin_port or CONTROL_HOST_PORT
    command = [
        "katyusha", "control", "--fleet", _mounted(FLEET_FILE), "--processes", _mounted(PROCESSES_FILE),
        "--host", "0.0.0.0", "--admin-port", str(port),
    ]  # fmt: skip
    return {CONTROL: {
        "image": IMAGE,
        "pull_policy": "never",
        "command": command,
        "labels": {"io.katyusha.role": CONTROL},
        "volumes": [f"./{name}:{_mounted(name)}:ro" for name in (FLEET_FILE, PROCESSES_FILE)],
        "ports": [f"{ADMIN_BIND}:${{CONTROL_PORT:-{host_port}}}:{port}"],
        "healthcheck": _healthcheck(_url("127.0.0.1", port, "/healthz")),
        # katyusha waits for the pods; the control plane for katyusha (it fills a replica's set when it can).
        "depends_on": {katyusha_name(i): {"condition": "service_healthy"} for i in range(spec.katyusha.replicas)},
    }}  # fmt: skip


def _mounted(name: str) -> str:
    return f"{MOUNT_DIR}/{Path(name).name}"


def processes_document(spec: FleetSpec) -> dict:
    """The control plane's processes file (katyusha.control.processes): every process by service name."""
    k, sim = PORTS["katyusha"], PORTS["sim-backend"]
    replicas = [katyusha_name(i) for i in range(spec.katyusha.replicas)]
    pods = []
    for pod in spec.pods:
        data, admin = _nonna_urls(pod)
        pods.append({"name": pod.name, "sim": {"data": _url(sim_name(pod), sim.data), "admin": _url(sim_name(pod), sim.admin)},
                     "nonna": {"data": data, "admin": admin}})  # fmt: skip
    return {
        "katyusha": [{"name": name, "data": _url(name, k.data), "admin": _url(name, k.admin)} for name in replicas],
        "pods": pods,
    }


def admin_token(document: dict) -> dict:
    """Give every fleet process (katyusha, nonna, sim-backend, control) the admin token.

    Inside a container the admin ports listen on 0.0.0.0, which no process
    accepts without a token (docs/reliability.md), so the compose file carries
    one as a secret: ``TOKEN_FILE`` (a placeholder in the repository; replace
    it) mounted at ``/run/secrets/admin-token`` and passed with
    ``--admin-token-file``. Healthchecks and Prometheus read ``/healthz``,
    ``/state``, ``/stats`` and ``/metrics``, which stay open.
    """
    for service in document["services"].values():
        if service.get("labels", {}).get("io.katyusha.role") not in TOKEN_ROLES:
            continue
        service["command"] = [*service["command"], "--admin-token-file", f"/run/secrets/{TOKEN_SECRET}"]
        service["secrets"] = [TOKEN_SECRET]
    document["secrets"] = {TOKEN_SECRET: {"file": f"./{TOKEN_FILE}"}}
    return document


def _prometheus() -> dict:
    return {
        "image": PROMETHEUS_IMAGE,
        "profiles": ["monitoring"],
        "command": [
            f"--config.file=/etc/prometheus/{Path(PROMETHEUS_FILE).name}",
            "--storage.tsdb.path=/prometheus",
            f"--web.listen-address=:{PROMETHEUS_PORT}",
        ],
        "volumes": [f"./{PROMETHEUS_FILE}:/etc/prometheus/{Path(PROMETHEUS_FILE).name}:ro",
                    f"./{RULES_FILE}:/etc/prometheus/{Path(RULES_FILE).name}:ro"],
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
    return admin_token({"name": PROJECT, "services": services})


def prometheus_document(spec: FleetSpec) -> dict:
    """The monitoring profile's scrape config: every process of the compose fleet."""
    k, nonna, sim = PORTS["katyusha"], PORTS["nonna"], PORTS["sim-backend"]
    replicas = [f"{katyusha_name(i)}:{k.admin}" for i in range(spec.katyusha.replicas)]
    return {
        "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
        "rule_files": [Path(RULES_FILE).name],
        "scrape_configs": [
            # katyusha's series carry the pod they are about in their own `pod` label.
            {"job_name": "katyusha", "static_configs": [{"targets": replicas}]},
            # The autoscaler's series (none while it is off: an empty page, still `up`).
            {"job_name": CONTROL, "static_configs": [{"targets": [f"{CONTROL}:{PORTS[CONTROL].admin}"]}]},
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
# one container per process, and its control plane. Generated by `katyusha fleet
# compose` with {fleet_file} and {processes_file}; edit the fleet
# file and regenerate, not these files (a test checks they agree).
#
#   make wheelhouse                 # the image installs the project from wheels built here
#   docker compose up --build -d    # or: podman-compose up --build -d
#   curl http://127.0.0.1:8080/     # katyusha; its admin port (/pods, /metrics) is 9080
#   katyusha fleet status --control http://127.0.0.1:{control}
#   katyusha fleet pod pod-2 state cold --control http://127.0.0.1:{control}
#   docker compose --profile monitoring up -d    # plus Prometheus on 127.0.0.1:9090
#
# Variables: KATYUSHA_PORT, KATYUSHA_ADMIN_PORT, CONTROL_PORT, PROMETHEUS_PORT (host
# ports), BIND_ADDRESS (127.0.0.1; admin ports stay on 127.0.0.1), BASE_IMAGE
# (python:3.11-slim), KATYUSHA_IMAGE, PROMETHEUS_IMAGE. Inside the network:
# sim-backend {sim.data} (admin {sim.admin}), nonna {nonna.data} (admin {nonna.admin}),
# katyusha {k.data} (admin {k.admin}), control (admin {c.admin}). See docs/containers.md.

"""

_PROMETHEUS_HEADER = """\
# Prometheus scrape config of the compose fleet's `monitoring` profile: every
# katyusha, control, nonna and sim-backend container by service name. Generated
# by `katyusha fleet compose` from {source}; regenerate, do not edit.

"""

_FLEET_HEADER = """\
# The compose fleet's fleet file, mounted read-only into its `control` service:
# a copy of {source}. Generated by `katyusha fleet compose`; edit the
# source and regenerate, not this copy.

"""

_PROCESSES_HEADER = """\
# Where the compose fleet's processes answer, by service name: the `control`
# service's `katyusha control --processes` file (docs/fleet.md). Generated by
# `katyusha fleet compose` from {source}; regenerate, do not edit.

"""


def _dump(document: dict) -> str:
    # Lists of scalars (commands, ports) inline; everything else in block style.
    return yaml.safe_dump(document, sort_keys=False, default_flow_style=None, width=110)


def render(fleet: str | Path | None = None) -> dict[str, str]:
    """File path (relative to the repository) -> text, for every generated file of fleet file ``fleet``.

    ``fleet`` None is the shipped default. Raises ConfigError (a bad fleet
    file), ComposeError (one compose cannot run), OSError (cannot read it).
    """
    path = Path(fleet) if fleet is not None else default_fleet_path()
    source = str(fleet) if fleet is not None else DEFAULT_SOURCE
    spec = load_spec(path)
    fleet_text = path.read_text()
    ports = {"sim": PORTS["sim-backend"], "nonna": PORTS["nonna"], "k": PORTS["katyusha"], "c": PORTS[CONTROL]}
    header = _COMPOSE_HEADER.format(source=source, fleet_file=FLEET_FILE, processes_file=PROCESSES_FILE,
                                    control=spec.autoscaler.admin_port or CONTROL_HOST_PORT, **ports)  # fmt: skip
    return {
        COMPOSE_FILE: header + _dump(compose_document(spec)),
        PROMETHEUS_FILE: _PROMETHEUS_HEADER.format(source=source) + _dump(prometheus_document(spec)),
        RULES_FILE: rules_text(),
        FLEET_FILE: _FLEET_HEADER.format(source=source) + fleet_text,
        PROCESSES_FILE: _PROCESSES_HEADER.format(source=source) + _dump(processes_document(spec)),
    }


def main(argv: list[str]) -> int:
    """``katyusha fleet compose [--fleet FILE] [--dir DIR] [--check]``; returns the exit status.

    Writes (or with ``--check`` compares) the compose file and its scrape
    config under DIR. 0: written or unchanged; 1: ``--check`` found a file
    that differs; 2: a bad fleet file or one compose cannot run.
    """
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog="katyusha fleet compose",
        description=f"Write {COMPOSE_FILE} and, beside it, {PROMETHEUS_FILE}, {FLEET_FILE} and "
        f"{PROCESSES_FILE} for a fleet file (one container a process, and a control plane).",
    )
    p.add_argument("--fleet", metavar="FILE", help="fleet file (YAML); default: the one shipped with katyusha")
    p.add_argument("--dir", default=".", help="the repository root to write under (default: .)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file differs")
    args = p.parse_args(argv)
    try:
        texts = render(args.fleet)
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
            path.chmod(0o644)  # mounted into containers that run as nobody, whatever the umask
    token = Path(args.dir) / TOKEN_FILE
    if not args.check and not token.exists():
        # A fresh token for a new folder; the repository's own is a placeholder to replace.
        import secrets

        token.parent.mkdir(parents=True, exist_ok=True)
        token.write_text(secrets.token_urlsafe(24) + "\n")
        token.chmod(0o644)  # read by the containers' user (nobody) through the secret's bind mount
        stale.append(TOKEN_FILE)
    if args.check:
        for name in stale:
            sys.stderr.write(f"katyusha fleet compose: {name} differs from the fleet file; run `katyusha fleet compose`\n")
        return 1 if stale else 0
    sys.stdout.write("".join(f"wrote {name}\n" for name in stale) or "up to date\n")
    return 0
