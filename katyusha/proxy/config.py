"""katyusha's settings: one model, read from a YAML file, the environment and flags.

Precedence, low to high: defaults, the YAML file, environment variables,
command-line flags. Every source speaks the same keys (see :data:`SETTINGS`),
including the seed's ``config-ikukantai`` ConfigMap keys exactly as they are,
so a ConfigMap's ``data:`` section (or the whole ConfigMap document) works as
the YAML file unchanged. ConfigMap values are strings: they are parsed
strictly ("true"/"false", "8"). Unknown keys and bad values raise
:class:`ConfigError` naming the key; :func:`validate` is the single point that
turns raw values into a :class:`ProxyConfig`.
"""

from __future__ import annotations

import importlib.util
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from katyusha.admintoken import check_exposure, resolve_token
from katyusha.config_values import (
    int_in_range,
    parse_bool,
    parse_host,
    parse_non_negative_float,
    parse_optional_text,
    parse_optional_url,
    parse_positive_float,
    parse_seconds,
    read_yaml_mapping,
)
from katyusha.core.errors import ConfigError
from katyusha.core.forwarding import parse_trusted_proxies
from katyusha.core.health import HealthSettings
from katyusha.core.hedge import HedgeSettings
from katyusha.core.membership import PodSpec
from katyusha.core.policies import DEFAULT_POLICY
from katyusha.core.service import ServiceSettings
from katyusha.http import tls
from katyusha.http.limits import EDGE_SETTINGS, EdgeFields
from katyusha.kubernetes.refs import (
    Port,
    ServiceRef,
    parse_namespace,
    parse_pod_name,
    parse_port,
    parse_service,
    with_ports,
)
from katyusha.proxy.services_config import (
    DEFAULT_SERVICE,
    ServiceSpec,
    parse_hedge_budget,
    parse_hedge_delay,
    parse_pod,
    parse_pods,
    parse_policy,
    parse_services,
)

__all__ = ["PodSpec", "ProxyConfig", "ServiceSpec", "load", "parse_pod", "validate"]

ENV_CONFIG_FILE = "KATYUSHA_CONFIG"
# Variables named KATYUSHA_* that are no setting: the config file, and the build's
# and the import's switches of the compiled modules (setup.py, katyusha.compiled).
ENV_NOT_SETTINGS = frozenset({ENV_CONFIG_FILE, "KATYUSHA_PURE_PYTHON", "KATYUSHA_COMPILE"})


@dataclass(frozen=True)
class ProxyConfig(EdgeFields):
    """Every setting of ``katyusha serve``; field docs are in docs/katyusha.md.

    The data port's limits, timeouts and TLS files are the fields of
    :class:`~katyusha.http.limits.EdgeFields`, shared with nonna.
    """

    host: str = "127.0.0.1"
    port: int = 8080
    admin_port: int = 8081
    listen_fd: int | None = None
    pods: tuple[PodSpec, ...] = ()
    policy: str = DEFAULT_POLICY
    enable_katyusha: bool = True
    threads: int = 1
    enable_junbanmachi: bool = True
    enable_fukabunsan: bool = True
    enable_outoushuugou: bool = True
    concurrent_request: int = 1000
    queue_length: int = 10_000
    request_timeout: float = 30.0
    retries: int = 2
    keep_nonna_headers: bool = False
    connect_timeout: float = 2.0
    upstream_timeout: float = 60.0
    upstream_connections: int = 256
    demand_url: str | None = None
    probe_rate: float = 4.0
    stale_after: float = 2.0
    pod_capacity_factor: float = 1.0
    pod_capacity_extra: int = 1
    slow_pod_hold: float = 0.5
    share_pods: bool = True
    shutdown_timeout: float = 30.0
    seed: int | None = None
    log_level: str = "warning"
    http_server: str = "lean"
    services: tuple[ServiceSpec, ...] = ()
    trace_picks: int = 0
    priority_header: str | None = None
    priority_classes: int = 2
    discovery: str = "static"
    kubeconfig: str | None = None
    kubernetes_namespace: str = "default"
    kubernetes_service: ServiceRef | None = None
    kubernetes_port: Port = None
    kubernetes_admin_port: Port = None
    kubernetes_subset: bool = False
    kubernetes_peers: ServiceRef | None = None
    kubernetes_pod_name: str | None = None
    trusted_proxies: tuple = ()
    health_path: str | None = None
    health_interval: float = 2.0
    health_down_interval: float = 0.5
    health_fast_interval: float = 0.1
    health_timeout: float = 1.0
    health_rise: int = 2
    health_fall: int = 3
    outlier_consecutive_failures: int = 5
    outlier_base_ejection_time: float = 30.0
    outlier_max_ejection_time: float = 300.0
    max_ejection_percent: float = 10.0
    retry_budget: float = 0.2
    retry_budget_min: float = 10.0
    hedge: bool = False
    hedge_delay: float | None = None
    hedge_budget: float = 0.05
    admin_token: str | None = None
    admin_token_file: str | None = None
    admin_allow_open: bool = False

    @property
    def l1_limit(self) -> int | None:
        """The L1 concurrency limit in force: None when junbanmachi or katyusha itself is off."""
        if not self.enable_katyusha or not self.enable_junbanmachi:
            return None
        return self.concurrent_request

    @property
    def effective_policy(self) -> str:
        """The policy that picks pods: round-robin when fukabunsan or katyusha itself is off."""
        if not self.enable_katyusha or not self.enable_fukabunsan:
            return "round-robin"
        return self.policy

    @property
    def uses_feedback(self) -> bool:
        """Whether piggybacked load feeds the table, the policy and the response pool."""
        return self.enable_katyusha and self.enable_outoushuugou

    @property
    def service_specs(self) -> tuple[ServiceSpec, ...]:
        """The services: the ``services:`` section, else one service ``default`` from the global keys."""
        return self.services or (ServiceSpec(name=DEFAULT_SERVICE, pods=self.pods,
                                             kubernetes=self.kubernetes_service),)

    @property
    def kubernetes_targets(self) -> dict[str, ServiceRef]:
        """The Kubernetes Service each service follows, by service name (namespaces filled in)."""
        return {spec.name: spec.kubernetes.in_namespace(self.kubernetes_namespace)
                for spec in self.service_specs if spec.kubernetes is not None}

    @property
    def kubernetes_replicas(self) -> tuple[ServiceRef, str] | None:
        """With ``kubernetes-subset``: katyusha's admin Service (the replicas) and this replica's pod name."""
        if not self.kubernetes_subset or self.kubernetes_peers is None or self.kubernetes_pod_name is None:
            return None
        return self.kubernetes_peers.in_namespace(self.kubernetes_namespace), self.kubernetes_pod_name

    @property
    def default_service(self) -> str:
        """The service the admin routes act on without ``service=``: ``default``, else the first listed."""
        names = [spec.name for spec in self.service_specs]
        return DEFAULT_SERVICE if DEFAULT_SERVICE in names else names[0]

    @property
    def health(self) -> HealthSettings:
        """Probes, active checks and outlier ejection (every service alike). Raises ConfigError naming the key."""
        return HealthSettings(
            path=self.health_path, interval=self.health_interval, down_interval=self.health_down_interval,
            fast_interval=self.health_fast_interval,
            timeout=self.health_timeout, rise=self.health_rise, fall=self.health_fall,
            consecutive=self.outlier_consecutive_failures, base_ejection=self.outlier_base_ejection_time,
            max_ejection=self.outlier_max_ejection_time, max_ejection_percent=self.max_ejection_percent,
        )

    def service_settings(self, spec: ServiceSpec) -> ServiceSettings:
        """What ``spec`` decides with: its own keys, else the global ones, with the switches applied."""
        limit = self.l1_limit
        if limit is not None and spec.concurrent_request is not None:
            limit = spec.concurrent_request
        policy = self.effective_policy
        if self.enable_katyusha and self.enable_fukabunsan:
            policy = spec.policy or self.policy
        return ServiceSettings(
            name=spec.name,
            policy=policy,
            l1_limit=limit,
            queue_length=self.queue_length if spec.queue_length is None else spec.queue_length,
            request_timeout=(self.request_timeout if spec.request_timeout is None
                             else spec.request_timeout),
            capacity_factor=(self.pod_capacity_factor if spec.pod_capacity_factor is None
                             else spec.pod_capacity_factor),
            capacity_extra=(self.pod_capacity_extra if spec.pod_capacity_extra is None
                            else spec.pod_capacity_extra),
            # Holding a slow pod out is load-aware placement: off with fukabunsan.
            slow_hold=((self.slow_pod_hold if spec.slow_pod_hold is None else spec.slow_pod_hold)
                       if self.enable_katyusha and self.enable_fukabunsan else 0.0),
            share_pods=self.share_pods if spec.share_pods is None else spec.share_pods,
            uses_feedback=self.uses_feedback,
            stale_after=self.stale_after,
            retries=self.retries,
            retry_budget=self.retry_budget,
            retry_budget_min=self.retry_budget_min,
            priority_classes=self.priority_classes if self.priority_header else 1,
            trace_picks=self.trace_picks,
            health=self.health,
            hedge=self.hedge_settings(spec),
        )

    def hedge_settings(self, spec: ServiceSpec) -> HedgeSettings:
        """``spec``'s hedging: its own keys, else the global ones; off while katyusha is a pass-through."""
        enabled = self.hedge if spec.hedge is None else spec.hedge
        return HedgeSettings(
            enabled=enabled and self.enable_katyusha,
            delay=self.hedge_delay if spec.hedge_delay == "global" else spec.hedge_delay,  # type: ignore[arg-type]
            budget=self.hedge_budget if spec.hedge_budget is None else spec.hedge_budget,
        )

    def to_json(self) -> dict:
        """The settings as keys (as a user writes them) to values, plus what is in force."""
        values = asdict(self)
        out = {s.key: values[s.field] for s in SETTINGS}
        out["pods"] = [pod.to_json() for pod in self.pods]
        out["services"] = [spec.to_json() for spec in self.services]
        for key in ("kubernetes-service", "kubernetes-peers"):
            ref = getattr(self, BY_KEY[key].field)
            out[key] = ref.to_json() if ref is not None else None
        out["hedge-delay"] = "auto" if self.hedge_delay is None else self.hedge_delay
        out["trusted-proxies"] = [str(network) for network in self.trusted_proxies]
        # The token itself is never shown, only whether one is in force.
        out["admin-token"] = "(set)" if self.admin_token else None
        out["effective"] = {
            "l1_limit": self.l1_limit,
            "policy": self.effective_policy,
            "feedback": self.uses_feedback,
            "services": {spec.name: {"policy": settings.policy, "l1_limit": settings.l1_limit}
                         for spec in self.service_specs
                         for settings in (self.service_settings(spec),)},
        }
        return out


# -- value parsers: (key, raw) -> value; raise ConfigError naming the key --------

def parse_optional_fd(key: str, raw: object) -> int | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return int_in_range(3)(key, raw)


def parse_optional_seed(key: str, raw: object) -> int | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return int_in_range(0)(key, raw)


_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


def parse_log_level(key: str, raw: object) -> str:
    if not isinstance(raw, str) or raw.strip().lower() not in _LOG_LEVELS:
        raise ConfigError(key, f"must be one of {', '.join(_LOG_LEVELS)}; got {raw!r}")
    return raw.strip().lower()


_HTTP_SERVERS = ("lean", "uvicorn")


def parse_http_server(key: str, raw: object) -> str:
    if not isinstance(raw, str) or raw.strip().lower() not in _HTTP_SERVERS:
        raise ConfigError(key, f"must be one of {', '.join(_HTTP_SERVERS)}; got {raw!r}")
    return raw.strip().lower()


_HEADER_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")


def parse_optional_header(key: str, raw: object) -> str | None:
    """An HTTP header name (kept in lower case), or None when empty."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str) or not _HEADER_RE.match(raw.strip()):
        raise ConfigError(key, f"must be an HTTP header name, got {raw!r}")
    return raw.strip().lower()


_DISCOVERY = ("static", "kubernetes")


def parse_discovery(key: str, raw: object) -> str:
    if not isinstance(raw, str) or raw.strip().lower() not in _DISCOVERY:
        raise ConfigError(key, f"must be one of {', '.join(_DISCOVERY)}; got {raw!r}")
    return raw.strip().lower()


def parse_optional_path(key: str, raw: object) -> str | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        raise ConfigError(key, f"must be a file path, got {raw!r}")
    return raw.strip()


def parse_url_path(key: str, raw: object) -> str | None:
    """A URL path starting with '/' (health-path), or None when empty."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str) or not raw.strip().startswith("/") or any(c.isspace() for c in raw.strip()):
        raise ConfigError(key, f"must be a path starting with '/', got {raw!r}")
    return raw.strip()


def parse_percent(key: str, raw: object) -> float:
    value = parse_non_negative_float(key, raw)
    if value > 100:
        raise ConfigError(key, f"must be a number from 0 to 100, got {raw!r}")
    return value


@dataclass(frozen=True)
class Setting:
    """One key: how it is spelled in YAML, the environment and flags, and how it is parsed."""

    key: str
    field: str
    env: str
    parse: Callable[[str, object], Any]
    doc: str

    @property
    def flag(self) -> str:
        return "--" + self.key


def _setting(key: str, field_name: str, parse: Callable[[str, object], Any], doc: str) -> Setting:
    prefix = "" if key.startswith(("katyusha-", "ikukantai-")) else "KATYUSHA_"
    env = prefix + key.upper().replace("-", "_")
    return Setting(key, field_name, env, parse, doc)


SETTINGS: tuple[Setting, ...] = (
    # The seed's config-ikukantai ConfigMap keys, spelled as the seed spells them.
    _setting("ikukantai-enable-katyusha", "enable_katyusha", parse_bool,
             "false: a plain round-robin pass-through (no L1 queue, no feedback)"),
    _setting("katyusha-threads", "threads", int_in_range(1, 256),
             "worker processes sharing the data port"),
    _setting("katyusha-enable-junbanmachi", "enable_junbanmachi", parse_bool,
             "false: dispatch at once, no L1 concurrency limit"),
    _setting("katyusha-enable-fukabunsan", "enable_fukabunsan", parse_bool,
             "false: pods are picked round robin, whatever the policy"),
    _setting("katyusha-enable-outoushuugou", "enable_outoushuugou", parse_bool,
             "false: piggybacked load is ignored (no response pool)"),
    _setting("katyusha-junbanmachi-concurrent-request", "concurrent_request", int_in_range(1),
             "the L1 limit: requests katyusha has in flight at once"),
    # katyusha's own keys.
    _setting("host", "host", parse_host, "address both ports listen on"),
    _setting("port", "port", int_in_range(0, 65535), "data port (0: the kernel picks)"),
    _setting("admin-port", "admin_port", int_in_range(0, 65535), "admin port (0: the kernel picks)"),
    _setting("listen-fd", "listen_fd", parse_optional_fd,
             "serve the data port on this inherited listening socket instead of binding host:port"),
    _setting("pods", "pods", parse_pods, "the pods at start"),
    _setting("policy", "policy", parse_policy, "the load-balancing policy"),
    _setting("queue-length", "queue_length", int_in_range(0), "most requests waiting in L1 (more: 503)"),
    _setting("request-timeout", "request_timeout", parse_seconds,
             "how long a request may wait in L1 before 504 (503 when no pod was ready)"),
    _setting("retries", "retries", int_in_range(0, 10),
             "extra tries on another pod for idempotent requests that failed before any response"),
    _setting("keep-nonna-headers", "keep_nonna_headers", parse_bool,
             "true: pass nonna's Nonna-* headers on to clients"),
    _setting("connect-timeout", "connect_timeout", parse_seconds, "upstream connect timeout"),
    _setting("upstream-timeout", "upstream_timeout", parse_seconds,
             "longest wait for a pod's response head (then 504)"),
    _setting("upstream-connections", "upstream_connections", int_in_range(1),
             "kept-alive connections per pod"),
    _setting("demand-url", "demand_url", parse_optional_url,
             "POSTed {waiting, in_flight, ready_pods} when a request waits for a pod"),
    _setting("probe-rate", "probe_rate", parse_positive_float,
             "prequal: probe rounds a second; each asks two pods' nonna /stats"),
    _setting("stale-after", "stale_after", parse_seconds, "age after which a pod's report is ignored"),
    _setting("pod-capacity-factor", "pod_capacity_factor", parse_non_negative_float,
             "requests in flight per pod: its concurrency times this (at least 1); 0: no per-pod cap"),
    _setting("pod-capacity-extra", "pod_capacity_extra", int_in_range(0, 1000),
             "requests a pod may hold beyond pod-capacity-factor x its concurrency"),
    _setting("slow-pod-hold", "slow_pod_hold", parse_non_negative_float,
             "0: off; else a pod 2.5x slower than the median or more is left out while the L1 queue is"
             " shorter than this x the other pods' slots x (its slowness - 1)"),
    _setting("share-pods", "share_pods", parse_bool,
             "false: each replica holds a pod to its capacity whatever other katyusha replicas send it;"
             " true: a pod's room is cut by the requests others hold there by its report, by half its"
             " slots of concurrency at most"),
    _setting("shutdown-timeout", "shutdown_timeout", parse_seconds,
             "on SIGTERM, longest wait for queued and in-flight requests"),
    _setting("seed", "seed", parse_optional_seed, "seed of the policies' random choices"),
    _setting("log-level", "log_level", parse_log_level, "uvicorn log level"),
    _setting("http-server", "http_server", parse_http_server,
             "the data port's HTTP/1.1 protocol: lean (katyusha.http.server) or uvicorn (httptools)"),
    _setting("services", "services", parse_services,
             "several services, routed by Host then path prefix (YAML list; see docs/katyusha.md)"),
    _setting("trace-picks", "trace_picks", int_in_range(0, 100_000),
             "picks per service kept for the admin GET /trace (0: off)"),
    _setting("priority-header", "priority_header", parse_optional_header,
             "request header giving the L1 priority class (0 lowest); unset: one class"),
    _setting("priority-classes", "priority_classes", int_in_range(2, 64),
             "how many L1 priority classes priority-header may name (0 to N-1)"),
    # Discovery from Kubernetes EndpointSlices (docs/kubernetes.md).
    _setting("discovery", "discovery", parse_discovery,
             "static (pods from settings and the admin API) or kubernetes (also from EndpointSlices)"),
    _setting("kubeconfig", "kubeconfig", parse_optional_path,
             "kubeconfig file for discovery (unset: the pod's service account, else $KUBECONFIG, ~/.kube/config)"),
    _setting("kubernetes-namespace", "kubernetes_namespace", parse_namespace,
             "namespace of Services named without one (unset: $POD_NAMESPACE, else default)"),
    _setting("kubernetes-service", "kubernetes_service", parse_service,
             "the default service's Kubernetes Service to follow: [NAMESPACE/]NAME[:PORT]"),
    _setting("kubernetes-port", "kubernetes_port", parse_port,
             "its port to send to: a name or number (unset: the Service's only port)"),
    _setting("kubernetes-admin-port", "kubernetes_admin_port", parse_port,
             "its pods' nonna admin port, a name or number (unset: none)"),
    _setting("kubernetes-subset", "kubernetes_subset", parse_bool,
             "true: share the pods with the other replicas when their container concurrency is set"),
    _setting("kubernetes-peers", "kubernetes_peers", parse_service,
             "with kubernetes-subset: katyusha's admin Service, whose ready pods are the replicas"),
    _setting("kubernetes-pod-name", "kubernetes_pod_name", parse_pod_name,
             "with kubernetes-subset: this replica's pod name (unset: $POD_NAME)"),
    # The data port's limits, timeouts and TLS (katyusha.http.limits, shared with nonna).
    *(_setting(key, field_name, parse, doc) for key, (field_name, parse, doc) in EDGE_SETTINGS.items()),
    # Forwarding and trust (docs/reliability.md).
    _setting("trusted-proxies", "trusted_proxies", parse_trusted_proxies,
             "CIDR blocks of proxies whose X-Forwarded-*/Forwarded chains are kept and appended to"),
    # Pod health: probes, active checks, outlier ejection (docs/reliability.md).
    _setting("health-path", "health_path", parse_url_path,
             "path probed on pods with no nonna admin URL (and checked every health-interval); unset: TCP"),
    _setting("health-interval", "health_interval", parse_seconds,
             "seconds between active checks of a serving pod (with health-path)"),
    _setting("health-down-interval", "health_down_interval", parse_seconds,
             "seconds between probes of a pod out of the ready set"),
    _setting("health-fast-interval", "health_fast_interval", parse_seconds,
             "seconds to the next probe or check while a pod is rising or falling (after a success "
             "while out, or a failed check while serving)"),
    _setting("health-timeout", "health_timeout", parse_seconds, "longest wait for one probe's answer"),
    _setting("health-rise", "health_rise", int_in_range(1, 100),
             "probes in a row that must succeed before a pod is back in the ready set"),
    _setting("health-fall", "health_fall", int_in_range(1, 100),
             "active checks in a row that must fail before a serving pod leaves the ready set"),
    _setting("outlier-consecutive-failures", "outlier_consecutive_failures", int_in_range(0, 1000),
             "5xx answers or failed tries in a row that eject a pod (0: no ejection)"),
    _setting("outlier-base-ejection-time", "outlier_base_ejection_time", parse_seconds,
             "a pod's first ejection lasts this long, its n-th n times as long"),
    _setting("outlier-max-ejection-time", "outlier_max_ejection_time", parse_seconds,
             "the longest one ejection lasts"),
    _setting("max-ejection-percent", "max_ejection_percent", parse_percent,
             "most of a service's pods ejected at once, in percent (at least one, never the last)"),
    _setting("retry-budget", "retry_budget", parse_non_negative_float,
             "retries may add at most this share of the requests of the last 10 s"),
    _setting("retry-budget-min", "retry_budget_min", parse_non_negative_float,
             "retries a second allowed whatever the share (so a quiet service can retry)"),
    # Hedged requests (docs/katyusha.md, katyusha.core.hedge).
    _setting("hedge", "hedge", parse_bool,
             "true: an idempotent request with no body (or one of at most 64 KiB) that has not answered after hedge-delay "
             "is sent to a second pod too; the first answer wins"),
    _setting("hedge-delay", "hedge_delay", parse_hedge_delay,
             "auto (the service's recent p95 latency) or a duration"),
    _setting("hedge-budget", "hedge_budget", parse_hedge_budget,
             "hedges may add at most this share of requests (0.05 or 5%)"),
    # Admin tokens (docs/reliability.md).
    _setting("admin-token", "admin_token", parse_optional_text,
             "bearer token mutating admin requests must carry (prefer admin-token-file)"),
    _setting("admin-token-file", "admin_token_file", parse_optional_text, "file holding the admin token"),
    _setting("admin-allow-open", "admin_allow_open", parse_bool,
             "true: serve the admin port on a non-loopback host with no token"),
)
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
BY_ENV: dict[str, Setting] = {s.env: s for s in SETTINGS}
_FIELDS = {f.name for f in fields(ProxyConfig)}
assert all(s.field in _FIELDS for s in SETTINGS)


def validate(raw: Mapping[str, object]) -> ProxyConfig:
    """Turn ``{key: raw value}`` into a ProxyConfig; the one place values are checked.

    Raises ConfigError naming the first unknown key or bad value.
    """
    values: dict[str, Any] = {}
    for key, value in raw.items():
        setting = BY_KEY.get(key)
        if setting is None:
            raise ConfigError(str(key), f"unknown setting (known: {', '.join(BY_KEY)})")
        values[setting.field] = setting.parse(key, value)
    if values.get("services") and values.get("pods"):
        raise ConfigError("pods", "with services: set, give each service its pods (services[i].pods)")
    if values.get("kubernetes_service") is not None:
        values["kubernetes_service"] = with_ports("kubernetes-service", values["kubernetes_service"],
                                                  values.get("kubernetes_port"), values.get("kubernetes_admin_port"))
    config = ProxyConfig(**values)
    check_discovery(config)
    tls.check(config)
    config.health  # noqa: B018 - validates the health settings together, naming the key
    token = resolve_token(config.admin_token, config.admin_token_file)
    check_exposure(config.host, token, config.admin_allow_open)
    return replace(config, admin_token=token)


def check_discovery(config: ProxyConfig) -> None:
    """The discovery settings agree with each other and with the install. Raises ConfigError naming the key."""
    if config.kubernetes_service is None:
        for key in ("kubernetes-port", "kubernetes-admin-port"):
            if getattr(config, BY_KEY[key].field) is not None:
                raise ConfigError(key, "applies to kubernetes-service, which is not set")
    elif config.services:
        raise ConfigError("kubernetes-service", "with services: set, give each service its own "
                                                "(services[i].kubernetes)")
    elif config.pods:
        raise ConfigError("pods", "the default service takes its pods from pods or from kubernetes-service, "
                                  "not both")
    targets = config.kubernetes_targets
    if config.discovery != "kubernetes":
        if targets:
            raise ConfigError("discovery", f"service {next(iter(targets))!r} follows a Kubernetes Service, "
                                           "but discovery is static: set discovery to kubernetes")
        return
    if not targets:
        raise ConfigError("kubernetes-service", "discovery kubernetes needs a Service to follow: "
                                                "kubernetes-service, or services[i].kubernetes")
    followed: dict[str, str] = {}
    for name, ref in targets.items():
        if ref.key in followed:
            raise ConfigError("services", f"services {followed[ref.key]!r} and {name!r} both follow {ref.key}")
        followed[ref.key] = name
    if config.kubernetes_subset:
        if config.kubernetes_peers is None:
            raise ConfigError("kubernetes-peers", "kubernetes-subset needs katyusha's admin Service, "
                                                  "whose ready pods are the replicas")
        if config.kubernetes_pod_name is None:
            raise ConfigError("kubernetes-pod-name", "kubernetes-subset needs this replica's pod name "
                                                     "(or POD_NAME in the environment)")
    try:
        installed = importlib.util.find_spec("kubernetes_asyncio") is not None
    except (ImportError, ValueError):
        installed = False
    if not installed:
        raise ConfigError("discovery", "kubernetes needs the kubernetes extra, which is not installed: "
                                       "pip install 'katyusha[kubernetes]'")


def load_yaml(path: str) -> dict[str, object]:
    """The settings in a YAML file: plain keys, a ConfigMap ``data:`` section, or a whole ConfigMap.

    Raises ConfigError (key "config") when the file cannot be read or is not such a mapping.
    """
    document = read_yaml_mapping(path, "config")
    if "kind" in document or "apiVersion" in document:
        if document.get("kind") != "ConfigMap":
            raise ConfigError("kind", f"{path}: only a ConfigMap document is accepted, got {document.get('kind')!r}")
        document = document.get("data") or {}
    elif set(document) == {"data"} and isinstance(document["data"], dict):
        document = document["data"]
    if not isinstance(document, dict):
        raise ConfigError("data", f"{path}: the ConfigMap data must be a mapping")
    return {str(k): v for k, v in document.items()}


def from_env(environ: Mapping[str, str]) -> dict[str, object]:
    """The settings given as environment variables (see ``Setting.env``).

    A ``KATYUSHA_*`` variable that names no setting is an error, so a typo is
    never silently ignored. Raises ConfigError naming the variable.
    """
    out: dict[str, object] = {}
    for name, value in environ.items():
        setting = BY_ENV.get(name)
        if setting is not None:
            out[setting.key] = value
        elif name.startswith("KATYUSHA_") and name not in ENV_NOT_SETTINGS:
            raise ConfigError(name, "unknown environment setting (see docs/katyusha.md)")
    return out


def load(
    *,
    flags: Mapping[str, object] | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ProxyConfig:
    """Merge the YAML file, the environment and ``flags`` (keys to raw values), then validate.

    ``config_file`` defaults to ``$KATYUSHA_CONFIG``. Raises ConfigError.
    """
    environ = os.environ if environ is None else environ
    merged: dict[str, object] = {}
    path = config_file or environ.get(ENV_CONFIG_FILE)
    if path:
        merged.update(load_yaml(path))
    merged.update(from_env(environ))
    merged.update(flags or {})
    # In a pod the downward API gives these (deploy/kubernetes/katyusha.yaml); read only when needed.
    if _says(merged, "discovery", "kubernetes"):
        fallbacks = [("kubernetes-namespace", "POD_NAMESPACE")]
        if _says(merged, "kubernetes-subset", "true"):
            fallbacks.append(("kubernetes-pod-name", "POD_NAME"))
        for key, variable in fallbacks:
            if key not in merged and environ.get(variable):
                merged[key] = environ[variable]
    return validate(merged)


def _says(raw: Mapping[str, object], key: str, word: str) -> bool:
    value = raw.get(key)
    return value is True if word == "true" and isinstance(value, bool) else str(value).strip().lower() == word
