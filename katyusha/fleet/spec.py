"""The fleet file: what a local fleet is made of, validated strictly before anything starts.

A fleet file is YAML (see docs/fleet.md for every field). :func:`load_spec`
reads it, applies the command-line overrides and returns a :class:`FleetSpec`
whose pods are fully expanded (:class:`PodSpec`, one per pod). Every mistake
raises :class:`~katyusha.core.errors.ConfigError` whose key is the field path
(``groups[1].service_time``), so the runner can refuse at once.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from katyusha.config_values import parse_bool
from katyusha.control.settings import AutoscaleSettings, parse_section
from katyusha.core.autoscaler_config import KPAConfig
from katyusha.core.distributions import parse_service_time
from katyusha.core.errors import ConfigError
from katyusha.core.fleetplan import ServiceSpec
from katyusha.core.placement import FitBasis, Node
from katyusha.core.podstate import WALK_TARGETS, PodState, in_order
from katyusha.core.policies import DEFAULT_POLICY, POLICY_NAMES
from katyusha.fleet.fields import mapping, number, text, whole
from katyusha.fleet.topology import DEFAULT_SERVICE, derived_nodes, parse_nodes, parse_services
from sim_backend.config import APPS

# States a pod can be started in (and moved to); "active" is reached by serving, not chosen.
INITIAL_STATES = tuple(state.value for state in in_order(WALK_TARGETS))


@dataclass(frozen=True)
class PodParams:
    """What makes one emulated pod behave as it does (sim-backend and nonna flags)."""

    service_time: str = "exp:20ms"
    speed: float = 1.0
    concurrency: int = 1
    queue_depth: int = 10
    image_size_mb: float = 200.0
    pull_mbps: float = 100.0
    start_s: float = 1.0
    state: str = PodState.WARM.value
    # The application the pod's sim-backend runs (its --app): the emulated one, or a real one such as sentiment.
    app: str = "emulated"


@dataclass(frozen=True)
class PodSpec:
    name: str
    node: str
    group: str
    params: PodParams
    # Fixed ports (sim data, sim admin, nonna data, nonna admin); zeros let the kernel choose.
    ports: tuple[int, int, int, int] = (0, 0, 0, 0)
    service: str = DEFAULT_SERVICE


@dataclass(frozen=True)
class KatyushaSpec:
    replicas: int = 1
    port: int = 8080
    admin_port: int | None = None  # None: port + 1000, or 0 when port is 0
    policy: str = DEFAULT_POLICY
    args: tuple[str, ...] = ()

    def ports(self, replica: int) -> tuple[int, int]:
        """Data and admin port of replica ``replica`` (0-based); 0 means kernel-chosen."""
        if self.port == 0:
            data = 0
        else:
            data = self.port + replica
        if self.admin_port is None:
            admin = 0 if self.port == 0 else self.port + 1000 + replica
        else:
            admin = 0 if self.admin_port == 0 else self.admin_port + replica
        return data, admin


@dataclass(frozen=True)
class RunnerSpec:
    poll_interval_s: float = 0.5
    ready_timeout_s: float = 60.0
    stop_timeout_s: float = 20.0
    restart: bool = True


@dataclass(frozen=True)
class FleetSpec:
    host: str = "127.0.0.1"
    nodes: int = 2
    katyusha: KatyushaSpec = field(default_factory=KatyushaSpec)
    runner: RunnerSpec = field(default_factory=RunnerSpec)
    pods: tuple[PodSpec, ...] = ()
    autoscaler: AutoscaleSettings = field(default_factory=AutoscaleSettings)
    # The placement view: every node (listed, or derived from `nodes: N`) and every service.
    node_list: tuple[Node, ...] = ()
    services: tuple[ServiceSpec, ...] = ()
    placement_basis: FitBasis = FitBasis.REQUESTS
    # Each autoscaled katyusha service's settings (None: katyusha's default service).
    scaling_configs: tuple[tuple[str | None, KPAConfig], ...] = ()

    @property
    def node_names(self) -> list[str]:
        if self.node_list:
            return [node.name for node in self.node_list]
        return [f"node-{i + 1}" for i in range(self.nodes)]

    def units(self) -> dict[str | None, tuple[str, ...]]:
        """Each autoscaled katyusha service and the fleet services whose slots it wakes, in order.

        Every pod of a local fleet joins katyusha's default service (None), so
        one autoscaler decides for all; a scale-up is offered to the services
        in the fleet file's order.
        """
        return {None: tuple(service.name for service in self.services)}

    def scaling(self) -> dict[str | None, KPAConfig]:
        """Each autoscaled katyusha service's settings: the autoscaler section, then the service's annotations."""
        return dict(self.scaling_configs) or {None: self.autoscaler.kpa}

    def topology(self) -> dict:
        """Nodes, services and each pod's service, as JSON for the state file (``katyusha fleet status``)."""
        return {
            "nodes": [
                {"name": n.name, "cpu_m": n.cpu, "ram_mib": n.ram, "max_pods": n.max_pods,
                 "labels": dict(n.labels), "taints": [str(t) for t in n.taints]}
                for n in self.node_list
            ],  # fmt: skip
            "services": [s.to_json() for s in self.services],
            "pod_services": {pod.name: pod.service for pod in self.pods},
        }


def default_fleet_path() -> Path:
    """The fleet file shipped with the package."""
    return Path(str(resources.files("katyusha.fleet").joinpath("default.yaml")))


def load_spec(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> FleetSpec:
    """Read and validate a fleet file (the shipped default when ``path`` is None).

    ``overrides`` holds command-line values keyed by field name (``pods``,
    ``nodes``, ``replicas``, ``policy``, ``port``, ``admin_port``, ``host``,
    ``pod_port_base``, a :class:`PodParams` field, or a :class:`RunnerSpec`
    field); a pod field given there applies to every pod. Raises ConfigError
    naming the field path, OSError when the file cannot be read.
    """
    source = Path(path) if path is not None else default_fleet_path()
    try:
        doc = yaml.safe_load(source.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(str(source), f"not valid YAML: {exc}") from None
    if doc is None:
        doc = {}
    return build_spec(doc, overrides or {})


_TOP_KEYS = {
    "host", "nodes", "pods", "pod_port_base", "katyusha", "runner", "defaults", "groups", "overrides",
    "autoscale", "autoscaler", "services", "placement",
}  # fmt: skip
_GROUP_KEYS = {"name", "count", "node", "service"}
_POD_KEYS = {f.name for f in fields(PodParams)}


def build_spec(doc: Any, overrides: dict[str, Any]) -> FleetSpec:
    """Validate a parsed fleet document plus overrides; see :func:`load_spec`."""
    doc = mapping(doc, "", _TOP_KEYS)
    flags = dict(overrides)
    host = text(flags.pop("host", None) or doc.get("host", "127.0.0.1"), "host")
    listed = _listed_nodes(doc.get("nodes"), flags)
    nodes = len(listed) if listed else whole(_pick(flags, "nodes", doc, 2), "nodes", low=1)
    node_names = [n.name for n in listed] if listed else [f"node-{i + 1}" for i in range(nodes)]
    services, annotations = parse_services(doc.get("services"))
    total = whole(_pick(flags, "pods", doc, 4), "pods", low=1)
    port_base = whole(_pick(flags, "pod_port_base", doc, 0), "pod_port_base", low=0, high=65535)
    basis = _placement(doc.get("placement"))

    katyusha = _katyusha(doc.get("katyusha", {}), flags)
    runner = _runner(doc.get("runner", {}), flags)

    autoscale_flag = flags.pop("autoscale", None)
    autoscale_doc = doc.get("autoscale")
    if autoscale_doc is not None and not isinstance(autoscale_doc, bool):
        raise ConfigError("autoscale", f"must be true or false, not {autoscale_doc!r}")
    enabled = autoscale_flag if autoscale_flag is not None else autoscale_doc
    autoscaler = parse_section(doc.get("autoscaler"), enabled=enabled)
    scaling = _scaling(autoscaler.kpa, services, annotations)

    pod_flags = {key: flags.pop(key) for key in list(flags) if key in _POD_KEYS}
    if flags:
        raise ConfigError(sorted(flags)[0], "unknown setting")
    # An autoscaled fleet's pods are slots that start down; the autoscaler wakes them.
    base = PodParams(state=PodState.NULL.value) if autoscaler.enabled else PodParams()
    defaults = _params(base, doc.get("defaults", {}), "defaults")
    groups = _groups(doc.get("groups"), defaults, total, node_names, [s.name for s in services])
    pods = _expand(groups, node_names, port_base)
    pods = _apply_overrides(pods, doc.get("overrides", {}))
    if pod_flags:
        pods = [replace(pod, params=_params(pod.params, pod_flags, "", flag=True)) for pod in pods]
    if port_base:
        last = port_base + 4 * len(pods) - 1
        if last > 65535:
            raise ConfigError("pod_port_base", f"{len(pods)} pods need ports up to {last}, above 65535")
    if not listed:
        listed = derived_nodes(node_names, dict(Counter(pod.node for pod in pods)), services)
    return FleetSpec(
        host=host, nodes=nodes, katyusha=katyusha, runner=runner, pods=tuple(pods), autoscaler=autoscaler,
        node_list=listed, services=services, placement_basis=basis, scaling_configs=tuple(scaling.items()),
    )


def _placement(raw: Any) -> FitBasis:
    """The ``placement:`` section: ``basis`` (requests, the default, or measured)."""
    doc = mapping(raw, "placement", {"basis"})
    value = doc.get("basis", FitBasis.REQUESTS.value)
    try:
        return FitBasis(value)
    except ValueError:
        allowed = ", ".join(basis.value for basis in FitBasis)
        raise ConfigError("placement.basis", f"must be one of {allowed}, not {value!r}") from None


def _scaling(kpa: KPAConfig, services: tuple[ServiceSpec, ...], annotations: dict[str, dict]) -> dict:
    """The autoscaled services' settings: ``kpa`` with the first service's annotations.

    Every service's pods join katyusha's default service, so they share one
    autoscaler: annotations go on the first service (an error elsewhere).
    """
    first = services[0].name
    for i, service in enumerate(services):
        if i and service.name in annotations:
            raise ConfigError(f"services[{i}].annotations", f"the services share katyusha's default service and "
                              f"its one autoscaler: put annotations on the first service ({first})")  # fmt: skip
    try:
        return {None: kpa.with_annotations(annotations.get(first))}
    except ConfigError as exc:
        message = str(exc)[len(exc.key) + 2 :]
        raise ConfigError(f"services[0].annotations.{exc.key}", message) from None


def _listed_nodes(raw: Any, flags: dict[str, Any]) -> tuple[Node, ...]:
    """The fleet file's ``nodes:`` list, or () when ``nodes`` is a count; ``--nodes`` must agree with a list."""
    if not isinstance(raw, list):
        return ()
    listed = parse_nodes(raw)
    flag = flags.get("nodes")
    if flag is not None and flag != len(listed):
        raise ConfigError("nodes", f"the fleet file lists {len(listed)} nodes; a count of {flag} does not match")
    flags.pop("nodes", None)
    return listed


def _katyusha(raw: Any, flags: dict[str, Any]) -> KatyushaSpec:
    doc = mapping(raw, "katyusha", {"replicas", "port", "admin_port", "policy", "args"})
    replicas = whole(_pick(flags, "replicas", doc, 1), "katyusha.replicas", low=1, high=64)
    port = whole(_pick(flags, "port", doc, 8080), "katyusha.port", low=0, high=65535)
    admin = _pick(flags, "admin_port", doc, None)
    if admin is not None:
        admin = whole(admin, "katyusha.admin_port", low=0, high=65535)
    policy = text(_pick(flags, "policy", doc, DEFAULT_POLICY), "katyusha.policy")
    if policy.strip().lower().replace("_", "-") not in POLICY_NAMES:
        raise ConfigError("katyusha.policy", f"unknown policy {policy!r}; allowed: {', '.join(POLICY_NAMES)}")
    args = doc.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str | int | float) for a in args):
        raise ConfigError("katyusha.args", "must be a list of strings (extra `katyusha serve` flags)")
    spec = KatyushaSpec(replicas, port, admin, policy, tuple(str(a) for a in args))
    for i in (0, replicas - 1):
        data, adm = spec.ports(i)
        if data > 65535 or adm > 65535:
            raise ConfigError("katyusha.port", f"replica {i} would listen above port 65535")
    return spec


def _runner(raw: Any, flags: dict[str, Any]) -> RunnerSpec:
    doc = mapping(raw, "runner", {f.name for f in fields(RunnerSpec)})
    base = RunnerSpec()
    poll = number(_pick(flags, "poll_interval_s", doc, base.poll_interval_s), "runner.poll_interval_s", low=0.05)
    ready = number(_pick(flags, "ready_timeout_s", doc, base.ready_timeout_s), "runner.ready_timeout_s", low=1)
    stop = number(_pick(flags, "stop_timeout_s", doc, base.stop_timeout_s), "runner.stop_timeout_s", low=0.5)
    restart = parse_bool("runner.restart", _pick(flags, "restart", doc, base.restart))
    return RunnerSpec(poll, ready, stop, restart)


def _groups(
    raw: Any, defaults: PodParams, total: int, nodes: list[str], services: list[str]
) -> list[tuple[str, int, str | None, PodParams, str]]:
    """Return (name, count, node or None, params, service) for every group, counts resolved against ``total``."""
    if raw is None:
        if len(services) > 1:
            raise ConfigError("groups", "required when there are several services (each group names its service)")
        return [("pod", total, None, defaults, services[0])]
    if not isinstance(raw, list) or not raw:
        raise ConfigError("groups", "must be a non-empty list of groups")
    parsed = []
    seen: set[str] = set()
    for i, item in enumerate(raw):
        where = f"groups[{i}]"
        doc = mapping(item, where, _GROUP_KEYS | _POD_KEYS)
        if "name" not in doc and len(raw) > 1:
            raise ConfigError(f"{where}.name", "required when there is more than one group")
        name = text(doc.get("name", "pod"), f"{where}.name")
        if not re.fullmatch(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*", name):
            raise ConfigError(f"{where}.name", f"{name!r} must be lower-case letters, digits and dashes")
        if name in seen:
            raise ConfigError(f"{where}.name", f"{name!r} is used by another group")
        seen.add(name)
        count = doc.get("count")
        if count is not None:
            count = whole(count, f"{where}.count", low=1)
        node = doc.get("node")
        if node is not None:
            node = text(node, f"{where}.node")
            if node not in nodes:
                raise ConfigError(f"{where}.node", f"{node!r} is not one of {', '.join(nodes)}")
        service = doc.get("service")
        if service is None and len(services) > 1:
            raise ConfigError(f"{where}.service", f"required when there are several services ({', '.join(services)})")
        service = services[0] if service is None else text(service, f"{where}.service")
        if service not in services:
            raise ConfigError(f"{where}.service", f"{service!r} is not one of the services: {', '.join(services)}")
        params = _params(defaults, {k: v for k, v in doc.items() if k in _POD_KEYS}, where)
        parsed.append((name, count, node, params, service))

    fixed = sum(group[1] for group in parsed if group[1] is not None)
    open_groups = [i for i, group in enumerate(parsed) if group[1] is None]
    if fixed > total or (fixed < total and not open_groups) or (open_groups and fixed + len(open_groups) > total):
        raise ConfigError(
            "groups",
            f"counts add up to {fixed} with {len(open_groups)} group(s) taking the rest, "
            f"which does not fit pods: {total} (give one group no count to take the rest)",
        )
    rest = total - fixed
    resolved = []
    for i, (name, count, node, params, service) in enumerate(parsed):
        if count is None:
            share, extra = divmod(rest, len(open_groups))
            count = share + (1 if open_groups.index(i) < extra else 0)
        resolved.append((name, count, node, params, service))
    return resolved


def _expand(groups, nodes: list[str], port_base: int) -> list[PodSpec]:
    pods = []
    for name, count, pinned, params, service in groups:
        for k in range(count):
            index = len(pods)
            node = pinned or nodes[index % len(nodes)]
            ports = (0, 0, 0, 0)
            if port_base:
                first = port_base + 4 * index
                ports = (first, first + 1, first + 2, first + 3)
            pods.append(PodSpec(f"{name}-{k + 1}", node, name, params, ports, service))
    return pods


def _apply_overrides(pods: list[PodSpec], raw: Any) -> list[PodSpec]:
    doc = mapping(raw, "overrides", None)
    names = {pod.name for pod in pods}
    for key in doc:
        if key not in names:
            raise ConfigError(f"overrides.{key}", f"no such pod (pods are {', '.join(sorted(names))})")
    out = []
    for pod in pods:
        if pod.name in doc:
            where = f"overrides.{pod.name}"
            changes = mapping(doc[pod.name], where, _POD_KEYS)
            pod = replace(pod, params=_params(pod.params, changes, where))
        out.append(pod)
    return out


def _params(base: PodParams, raw: Any, where: str, *, flag: bool = False) -> PodParams:
    doc = mapping(raw, where or "pod settings", _POD_KEYS)

    def key(name: str) -> str:
        if flag:
            return "--" + name.replace("_", "-")
        return f"{where}.{name}" if where else name

    values: dict[str, Any] = {}
    for name, value in doc.items():
        k = key(name)
        if name == "service_time":
            written = text(value, k)
            parse_service_time(written, key=k)
            values[name] = written
        elif name in ("state", "app"):
            allowed = INITIAL_STATES if name == "state" else APPS
            written = text(value, k)
            if written not in allowed:
                raise ConfigError(k, f"{written!r} is not one of {', '.join(allowed)}")
            values[name] = written
        elif name in ("concurrency", "queue_depth"):
            values[name] = whole(value, k, low=0)
        elif name in ("speed", "pull_mbps"):
            values[name] = number(value, k, low=0, strict=True)
        else:
            values[name] = number(value, k, low=0)
    return replace(base, **values)


def _pick(flags: dict[str, Any], name: str, doc: dict, default: Any) -> Any:
    if flags.get(name) is not None:
        return flags.pop(name)
    flags.pop(name, None)
    return doc.get(name, default)
