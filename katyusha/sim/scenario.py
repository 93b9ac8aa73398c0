"""The scenario file: nodes, regions, services, workloads, katyusha replicas, the autoscaler, placement.

Every reader raises :class:`~katyusha.core.errors.ConfigError` naming the
field path (``services[1].workload.rate``), as the fleet file's do. Values go
through the project's own parsers: service times as ``sim-backend
--service-time`` (katyusha.core.distributions), katyusha's settings as
``katyusha serve``'s keys (katyusha.proxy.config), the autoscaler's as the
control plane's ``config-autoscaler`` keys (katyusha.core.autoscaler_config).
docs/simulator.md lists every field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from katyusha.control.settings import check_retire_to
from katyusha.core.autoscaler_config import KPAConfig, parse_duration
from katyusha.core.distributions import Distribution, parse_service_time
from katyusha.core.errors import ConfigError
from katyusha.core.podstate import PodState
from katyusha.core.service import ServiceSettings
from katyusha.fleet.fields import listed, mapping, number, text, whole
from katyusha.sim.machine import Machine

SCHEDULERS = ("flow", "pod-at-a-time")
WORKLOADS = ("poisson", "step", "ramp", "sinusoid", "trace")


@dataclass(frozen=True)
class NodeGroup:
    """``count`` nodes alike: named ``name`` (one) or ``name-1`` .. ``name-N``."""

    name: str
    count: int = 1
    region: str = "cloud"
    cpu_m: int = 4000
    ram_mib: int = 8192
    max_pods: int = 110
    images: tuple[str, ...] = ()
    registry_mbps: float = 100.0
    speed: float = 1.0

    def node_names(self) -> list[str]:
        if self.count == 1:
            return [self.name]
        return [f"{self.name}-{i + 1}" for i in range(self.count)]


@dataclass(frozen=True)
class Workload:
    """Arrivals of one service: a Poisson process at a rate that follows ``kind``, or a trace."""

    kind: str = "poisson"
    rate: float = 0.0  # poisson; sinusoid's mean
    steps: tuple[tuple[float, float], ...] = ()  # step: (from second, rate)
    start_rate: float = 0.0  # ramp
    end_rate: float = 0.0
    ramp_start: float = 0.0
    ramp_end: float = 0.0
    amplitude: float = 0.0  # sinusoid
    period: float = 60.0
    times: tuple[float, ...] = ()  # trace: arrival times, sorted
    works: tuple[float, ...] = ()  # trace: each arrival's work (seconds at speed 1), when given
    requests: int | None = None  # stop after this many arrivals

    def rate_at(self, t: float) -> float:
        """Requests per second at simulated second ``t``."""
        kind = self.kind
        if kind == "poisson":
            return self.rate
        if kind == "step":
            rate = 0.0
            for since, value in self.steps:
                if t >= since:
                    rate = value
            return rate
        if kind == "ramp":
            if t <= self.ramp_start:
                return self.start_rate
            if t >= self.ramp_end:
                return self.end_rate
            share = (t - self.ramp_start) / (self.ramp_end - self.ramp_start)
            return self.start_rate + (self.end_rate - self.start_rate) * share
        if kind == "sinusoid":
            return max(0.0, self.rate + self.amplitude * math.sin(2 * math.pi * t / self.period))
        return 0.0

    @property
    def peak_rate(self) -> float:
        """An upper bound of :meth:`rate_at` (for thinning)."""
        if self.kind == "step":
            return max((rate for _, rate in self.steps), default=0.0)
        if self.kind == "ramp":
            return max(self.start_rate, self.end_rate)
        if self.kind == "sinusoid":
            return self.rate + abs(self.amplitude)
        return self.rate


@dataclass(frozen=True)
class Service:
    """One service: its pods' image, requests, concurrency and service time, and its workload."""

    name: str
    image: str
    image_size_mb: float = 200.0
    start_s: float = 1.0
    cpu_m: int = 500
    ram_mib: int = 256
    container_concurrency: int = 1
    queue_depth: int | None = None
    timeout_s: float = 30.0
    service_time: Distribution = field(default_factory=lambda: parse_service_time("const:100ms"))
    speed: Mapping[str, float] = field(default_factory=dict)  # node or node group -> factor
    pods: int = 0  # pods started warm at time 0 (placed by the scheduler)
    autoscale: bool = True
    annotations: Mapping[str, Any] = field(default_factory=dict)
    workload: Workload = Workload()


# What the live system spends on a request beyond the app's service time, measured on this
# machine by `python -m benchmarks.sim_vs_live --calibrate` (docs/simulator.md, "Overheads"):
# the medians of three runs on 2026-12-05 (until then 0.7 and 0.64 ms, an earlier build's).
HOP_S = 0.332e-3  # 0.332 ms measured (runs: 0.332, 0.383, 0.280)
POD_OVERHEAD_S = 0.30e-3  # 0.300 ms measured (runs: 0.300, 0.363, 0.294)


@dataclass(frozen=True)
class Scenario:
    """A whole scenario, validated."""

    seed: int = 0
    duration: float = 60.0
    drain: float = 60.0
    nodes: tuple[NodeGroup, ...] = ()
    latency: Mapping[tuple[str, str], float] = field(default_factory=dict)
    services: tuple[Service, ...] = ()
    replicas: int = 1
    katyusha_region: str = "cloud"
    settings: Mapping[str, Any] = field(default_factory=dict)  # katyusha serve keys
    autoscaler: bool = True
    kpa_keys: Mapping[str, Any] = field(default_factory=dict)
    retire_to: PodState = PodState.WARMDISK
    scheduler: str = "flow"
    sample_interval: float = 2.0
    record_requests: bool = True
    hop_s: float = HOP_S  # one way between katyusha and a pod, each way, on top of the regions' latency
    pod_overhead_s: float = POD_OVERHEAD_S  # per request in a pod beyond its service time, slot held
    release_s: float = 0.0  # katyusha holds the pod's slot this long after the response reached it
    pod_release_s: float = 0.0  # the pod (nonna) frees its slot this long after the response left it
    machine: Machine | None = None  # the cores the overheads share (None: the overheads are constants)
    base: Path | None = None

    def proxy_config(self, settings: Mapping[str, Any] | None = None):
        """``settings`` (default: the scenario's) read as ``katyusha serve`` reads its keys."""
        from katyusha.proxy.config import validate

        raw = dict(self.settings if settings is None else settings)
        try:
            return validate(raw)
        except ConfigError as exc:
            raise ConfigError(f"katyusha.settings.{exc.key}", str(exc)[len(exc.key) + 2:]) from None

    def service_settings(self, service: str, settings: Mapping[str, Any] | None = None,
                         config=None) -> ServiceSettings:
        """What one service's balancer decides with: the settings as ``katyusha serve`` applies them."""
        from katyusha.proxy.config import ServiceSpec

        if config is None:
            config = self.proxy_config(settings)
        return config.service_settings(ServiceSpec(name=service))

    def kpa(self, service: Service) -> KPAConfig:
        """The service's KPA settings: the scenario's keys, its annotations over them."""
        try:
            config = KPAConfig.from_mapping(dict(self.kpa_keys))
        except ConfigError as exc:
            raise ConfigError(f"autoscaler.{exc.key}", str(exc)[len(exc.key) + 2:]) from None
        index = self.services.index(service)
        try:
            return config.with_annotations(dict(service.annotations))
        except ConfigError as exc:
            raise ConfigError(f"services[{index}].annotations.{exc.key}", str(exc)[len(exc.key) + 2:]) from None

    def node_region(self) -> dict[str, str]:
        return {name: group.region for group in self.nodes for name in group.node_names()}

    def one_way(self, a: str, b: str) -> float:
        """Seconds from region ``a`` to region ``b`` (0 within a region unless given)."""
        got = self.latency.get((a, b))
        if got is None:
            got = self.latency.get((b, a), 0.0)
        return got


# -- reading ----------------------------------------------------------------------------

_TOP = {"seed", "duration", "drain", "nodes", "regions", "services", "katyusha", "autoscaler", "placement",
        "record", "overhead", "machine"}
_NODE = {"name", "count", "region", "cpu", "ram-mb", "max-pods", "images", "registry-mbps", "speed"}
_SERVICE = {"name", "image", "image-size-mb", "start-time", "cpu", "ram-mb", "container-concurrency",
            "queue-depth", "timeout", "service-time", "speed", "pods", "autoscale", "annotations", "workload"}
_WORKLOAD = {"kind", "rate", "steps", "from", "to", "start", "end", "amplitude", "period", "file", "times", "work",
             "requests"}
_KATYUSHA = {"replicas", "region", "settings"}
_SIM_AUTOSCALER = {"enabled", "retire-to"}
_PLACEMENT = {"scheduler"}
_RECORD = {"interval", "requests"}
_OVERHEAD = {"hop", "pod", "release", "pod-release"}
_MACHINE = {"cores", "cpu-per-request", "background", "window"}


def load(path: str | Path, *, seed: int | None = None) -> Scenario:
    """Read and validate a scenario file. Raises ConfigError naming the field path, OSError if unreadable."""
    path = Path(path)
    with open(path, encoding="utf-8") as handle:
        try:
            document = yaml.safe_load(handle)
        except yaml.YAMLError as exc:
            raise ConfigError(str(path), f"not valid YAML: {exc}") from None
    return parse(document, base=path.parent, seed=seed)


def _duration(value: Any, where: str, *, positive: bool = False) -> float:
    seconds = parse_duration(where, value)
    if seconds < 0 or (positive and seconds == 0):
        raise ConfigError(where, f"must be a {'positive' if positive else 'non-negative'} duration, not {value!r}")
    return seconds


def _cores(value: Any, where: str) -> int:
    millicores = round(number(value, where, strict=True) * 1000)
    if millicores < 1:
        raise ConfigError(where, f"must be at least 0.001 cores, not {value!r}")
    return millicores


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, f"must be true or false, not {value!r}")
    return value


def parse(document: Any, *, base: Path | None = None, seed: int | None = None) -> Scenario:
    """A :class:`Scenario` from a parsed YAML document. Raises ConfigError naming the field path."""
    top = mapping(document, "", _TOP)
    values: dict[str, Any] = {"base": base}
    values["seed"] = seed if seed is not None else whole(top.get("seed", 0), "seed", low=0)
    values["duration"] = _duration(top.get("duration", 60), "duration", positive=True)
    values["drain"] = _duration(top.get("drain", 60), "drain")
    groups = tuple(_node_group(item, f"nodes[{i}]") for i, item in enumerate(listed(top.get("nodes"), "nodes")))
    if not groups:
        raise ConfigError("nodes", "must list at least one node")
    seen: set[str] = set()
    for i, group in enumerate(groups):
        for name in group.node_names():
            if name in seen:
                raise ConfigError(f"nodes[{i}].name", f"node name {name!r} repeats")
            seen.add(name)
    values["nodes"] = groups
    values["latency"] = _latency(top.get("regions"))
    services = tuple(_service(item, f"services[{i}]", base, groups)
                     for i, item in enumerate(listed(top.get("services"), "services")))
    if not services:
        raise ConfigError("services", "must list at least one service")
    names = [s.name for s in services]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"services[{i}].name", f"service name {name!r} repeats")
    values["services"] = services
    katyusha = mapping(top.get("katyusha"), "katyusha", _KATYUSHA)
    values["replicas"] = whole(katyusha.get("replicas", 1), "katyusha.replicas", low=1, high=1000)
    values["katyusha_region"] = text(katyusha.get("region", "cloud"), "katyusha.region")
    values["settings"] = mapping(katyusha.get("settings"), "katyusha.settings", None)
    autoscaler = mapping(top.get("autoscaler"), "autoscaler", None)
    values["autoscaler"] = _bool(autoscaler.get("enabled", True), "autoscaler.enabled")
    values["retire_to"] = check_retire_to(autoscaler.get("retire-to", "warmdisk"), "autoscaler.retire-to")
    values["kpa_keys"] = {k: v for k, v in autoscaler.items() if k not in _SIM_AUTOSCALER}
    placement = mapping(top.get("placement"), "placement", _PLACEMENT)
    scheduler = placement.get("scheduler", "flow")
    if scheduler not in SCHEDULERS:
        raise ConfigError("placement.scheduler", f"must be one of {', '.join(SCHEDULERS)}, not {scheduler!r}")
    values["scheduler"] = scheduler
    record = mapping(top.get("record"), "record", _RECORD)
    values["sample_interval"] = _duration(record.get("interval", 2), "record.interval", positive=True)
    values["record_requests"] = _bool(record.get("requests", True), "record.requests")
    overhead = mapping(top.get("overhead"), "overhead", _OVERHEAD)
    values["hop_s"] = _duration(overhead.get("hop", HOP_S), "overhead.hop")
    values["pod_overhead_s"] = _duration(overhead.get("pod", POD_OVERHEAD_S), "overhead.pod")
    values["release_s"] = _duration(overhead.get("release", 0), "overhead.release")
    values["pod_release_s"] = _duration(overhead.get("pod-release", 0), "overhead.pod-release")
    if top.get("machine") is not None:
        values["machine"] = _machine(top["machine"])
    scenario = Scenario(**values)
    # Validate the settings now, so a bad key fails before the run, naming its path.
    scenario.proxy_config()
    for service in services:
        scenario.kpa(service)
    return scenario


def _machine(value: Any) -> Machine:
    spec = mapping(value, "machine", _MACHINE)
    if "cores" not in spec or "cpu-per-request" not in spec:
        raise ConfigError("machine", "needs cores and cpu-per-request")
    cores = whole(spec["cores"], "machine.cores", low=1, high=1024)
    background = number(spec.get("background", 0), "machine.background")
    if background >= cores:
        raise ConfigError("machine.background", f"must be below the cores ({cores}), not {spec['background']!r}")
    return Machine(cores=cores, cpu_per_request_s=_duration(spec["cpu-per-request"], "machine.cpu-per-request"),
                   background=background, window_s=_duration(spec.get("window", 1), "machine.window", positive=True))


def _node_group(item: Any, where: str) -> NodeGroup:
    node = mapping(item, where, _NODE)
    images = listed(node.get("images"), f"{where}.images")
    return NodeGroup(
        name=text(node.get("name"), f"{where}.name"),
        count=whole(node.get("count", 1), f"{where}.count", low=1),
        region=text(node.get("region", "cloud"), f"{where}.region"),
        cpu_m=_cores(node.get("cpu", 4), f"{where}.cpu"),
        ram_mib=whole(node.get("ram-mb", 8192), f"{where}.ram-mb", low=1),
        max_pods=whole(node.get("max-pods", 110), f"{where}.max-pods", low=0),
        images=tuple(text(image, f"{where}.images[{i}]") for i, image in enumerate(images)),
        registry_mbps=number(node.get("registry-mbps", 100), f"{where}.registry-mbps", strict=True),
        speed=number(node.get("speed", 1), f"{where}.speed", strict=True),
    )


def _latency(value: Any) -> dict[tuple[str, str], float]:
    regions = mapping(value, "regions", {"latency"})
    out: dict[tuple[str, str], float] = {}
    for i, item in enumerate(listed(regions.get("latency"), "regions.latency")):
        where = f"regions.latency[{i}]"
        entry = mapping(item, where, {"from", "to", "one-way"})
        a = text(entry.get("from"), f"{where}.from")
        b = text(entry.get("to"), f"{where}.to")
        out[(a, b)] = _duration(entry.get("one-way", 0), f"{where}.one-way")
    return out


def _service(item: Any, where: str, base: Path | None, groups: tuple[NodeGroup, ...]) -> Service:
    svc = mapping(item, where, _SERVICE)
    name = text(svc.get("name"), f"{where}.name")
    speed_raw = svc.get("speed", {})
    known = {g.name for g in groups} | {n for g in groups for n in g.node_names()}
    speed = {}
    for key, factor in mapping(speed_raw, f"{where}.speed", None).items():
        if key not in known:
            raise ConfigError(f"{where}.speed.{key}", "not a node or node group of this scenario")
        speed[key] = number(factor, f"{where}.speed.{key}", strict=True)
    annotations = mapping(svc.get("annotations"), f"{where}.annotations", None)
    depth = svc.get("queue-depth")
    return Service(
        name=name,
        image=text(svc.get("image", name), f"{where}.image"),
        image_size_mb=number(svc.get("image-size-mb", 200), f"{where}.image-size-mb"),
        start_s=_duration(svc.get("start-time", 1), f"{where}.start-time"),
        cpu_m=_cores(svc.get("cpu", 0.5), f"{where}.cpu"),
        ram_mib=whole(svc.get("ram-mb", 256), f"{where}.ram-mb", low=1),
        container_concurrency=whole(svc.get("container-concurrency", 1), f"{where}.container-concurrency", low=0),
        queue_depth=None if depth is None else whole(depth, f"{where}.queue-depth", low=0),
        timeout_s=_duration(svc.get("timeout", 30), f"{where}.timeout", positive=True),
        service_time=parse_service_time(svc.get("service-time", "const:100ms"), key=f"{where}.service-time"),
        speed=speed,
        pods=whole(svc.get("pods", 0), f"{where}.pods", low=0),
        autoscale=_bool(svc.get("autoscale", True), f"{where}.autoscale"),
        annotations=annotations,
        workload=_workload(svc.get("workload"), f"{where}.workload", base),
    )


def _rate(value: Any, where: str) -> float:
    return number(value, where)


def _workload(value: Any, where: str, base: Path | None) -> Workload:
    spec = mapping(value, where, _WORKLOAD)
    if not spec:
        return Workload(kind="poisson", rate=0.0)
    kind = spec.get("kind", "poisson")
    if kind not in WORKLOADS:
        raise ConfigError(f"{where}.kind", f"must be one of {', '.join(WORKLOADS)}, not {kind!r}")
    requests = spec.get("requests")
    values: dict[str, Any] = {"kind": kind,
                              "requests": None if requests is None else whole(requests, f"{where}.requests", low=0)}
    allowed = {"poisson": {"rate"}, "step": {"steps"}, "ramp": {"from", "to", "start", "end"},
               "sinusoid": {"rate", "amplitude", "period"}, "trace": {"file", "times", "work"}}[kind]
    for key in spec:
        if key not in allowed | {"kind", "requests"}:
            raise ConfigError(f"{where}.{key}", f"does not apply to a {kind} workload "
                                                f"(allowed: {', '.join(sorted(allowed | {'kind', 'requests'}))})")
    if kind in ("poisson", "sinusoid"):
        values["rate"] = _rate(spec.get("rate", 0), f"{where}.rate")
    if kind == "sinusoid":
        values["amplitude"] = _rate(spec.get("amplitude", 0), f"{where}.amplitude")
        values["period"] = _duration(spec.get("period", 60), f"{where}.period", positive=True)
    if kind == "step":
        steps = []
        for i, item in enumerate(listed(spec.get("steps"), f"{where}.steps")):
            step = mapping(item, f"{where}.steps[{i}]", {"at", "rate"})
            steps.append((_duration(step.get("at", 0), f"{where}.steps[{i}].at"),
                          _rate(step.get("rate", 0), f"{where}.steps[{i}].rate")))
        if not steps:
            raise ConfigError(f"{where}.steps", "must list at least one {at, rate}")
        values["steps"] = tuple(sorted(steps))
    if kind == "ramp":
        values["start_rate"] = _rate(spec.get("from", 0), f"{where}.from")
        values["end_rate"] = _rate(spec.get("to", 0), f"{where}.to")
        values["ramp_start"] = _duration(spec.get("start", 0), f"{where}.start")
        values["ramp_end"] = _duration(spec.get("end", 60), f"{where}.end")
        if values["ramp_end"] <= values["ramp_start"]:
            raise ConfigError(f"{where}.end", "must be after start")
    if kind == "trace":
        values["times"], values["works"] = _trace(spec, where, base)
    return Workload(**values)


def _trace(spec: dict, where: str, base: Path | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Arrival times, sorted, and each one's work when the trace gives it (``work``, or a second
    column in the file: seconds at speed 1, replacing the service's draws), else ()."""
    works: list[float] = []
    if "times" in spec:
        raw = listed(spec["times"], f"{where}.times")
        times = [number(t, f"{where}.times[{i}]") for i, t in enumerate(raw)]
        if "work" in spec:
            raw_work = listed(spec["work"], f"{where}.work")
            if len(raw_work) != len(times):
                raise ConfigError(f"{where}.work", f"must have one entry per time ({len(times)}), "
                                                   f"got {len(raw_work)}")
            works = [_duration(w, f"{where}.work[{i}]") for i, w in enumerate(raw_work)]
    else:
        if "work" in spec:
            raise ConfigError(f"{where}.work", "goes with times; a file gives work as its second column")
        name = text(spec.get("file"), f"{where}.file")
        path = Path(name) if base is None or Path(name).is_absolute() else base / name
        times = []
        try:
            with open(path, encoding="utf-8") as handle:
                for line_no, line in enumerate(handle, 1):
                    cells = line.split(",")
                    cell = cells[0].strip()
                    if not cell or cell.startswith("#"):
                        continue
                    try:
                        times.append(float(cell))
                        if len(cells) > 1 and cells[1].strip():
                            works.append(float(cells[1]))
                    except ValueError:
                        if line_no == 1 and not times:
                            continue  # a header
                        raise ConfigError(f"{where}.file", f"{path}:{line_no}: not a time (and work) in seconds: "
                                                           f"{line.strip()!r}") from None
        except OSError as exc:
            raise ConfigError(f"{where}.file", f"cannot read {path}: {exc.strerror}") from None
        if works and len(works) != len(times):
            raise ConfigError(f"{where}.file", f"{path}: a work column must fill every row or none")
    if works and any(w < 0 for w in works):
        raise ConfigError(f"{where}.work", "must be >= 0")
    # A file's negative times are dropped (as before works were read); listed ones are kept.
    keep = (lambda t: True) if "times" in spec else (lambda t: t >= 0)
    if works:
        pairs = sorted((t, w) for t, w in zip(times, works, strict=True) if keep(t))
        return tuple(t for t, _ in pairs), tuple(w for _, w in pairs)
    return tuple(sorted(t for t in times if keep(t))), ()
