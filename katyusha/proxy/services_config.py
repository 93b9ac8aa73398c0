"""Pods and services in katyusha's settings: the ``pods`` key and the ``services:`` section.

::

    services:
      - name: hello
        hosts: [hello.local]        # optional; routed by Host, port ignored
        path-prefix: /              # optional; longest prefix wins after host
        policy: jsq-piggyback       # optional, else the global one
        katyusha-junbanmachi-concurrent-request: 100   # optional L1 settings,
        queue-length: 1000                              # else the global ones
        request-timeout: 10s
        pod-capacity-factor: 1
        hedge: true                 # optional hedging settings, else the global ones
        hedge-delay: auto
        hedge-budget: 5%
        pods: [{url: http://127.0.0.1:9101, name: pod-1, node: node-1, concurrency: 1}]
      - name: shop                  # with discovery: kubernetes, its pods from EndpointSlices
        kubernetes: {service: demo/shop, port: http, admin-port: nonna-admin}

Every error is a ConfigError naming the field path (``services[1].pods[0].url``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yaml

from katyusha.config_values import (
    int_in_range,
    parse_bool,
    parse_non_negative_float,
    parse_optional_url,
    parse_seconds,
    parse_seconds_or_zero,
    parse_url,
)
from katyusha.core.errors import ConfigError
from katyusha.core.membership import PodSpec
from katyusha.core.policies import POLICY_NAMES
from katyusha.core.routing import Router
from katyusha.kubernetes.refs import ServiceRef, parse_target

DEFAULT_SERVICE = "default"
_POD_OPTIONS = ("name", "node", "admin", "concurrency")
_NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")
_SERVICE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HOST_RE = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9*]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)$")


def parse_policy(key: str, raw: object) -> str:
    if not isinstance(raw, str) or raw.strip() not in POLICY_NAMES:
        raise ConfigError(key, f"must be one of {', '.join(POLICY_NAMES)}; got {raw!r}")
    return raw.strip()


def parse_hedge_delay(key: str, raw: object) -> float | None:
    """``auto`` (None: the service's recent p95) or a duration ("50ms", 0.05)."""
    if isinstance(raw, str) and raw.strip().lower() == "auto":
        return None
    try:
        return parse_seconds_or_zero(key, raw)
    except ConfigError:
        raise ConfigError(key, f'must be auto or a duration (e.g. "50ms", 0.05), got {raw!r}') from None


def parse_hedge_budget(key: str, raw: object) -> float:
    """A share of requests: a number from 0 to 1, or a percentage ("5%")."""
    share: float | None = None
    if isinstance(raw, str) and raw.strip().endswith("%"):
        try:
            share = float(raw.strip()[:-1]) / 100.0
        except ValueError:
            share = None
        if share is None or not math.isfinite(share):
            raise ConfigError(key, f'must be a share from 0 to 1 or a percentage ("5%"), got {raw!r}')
    else:
        share = parse_non_negative_float(key, raw)
    if not 0 <= share <= 1:
        raise ConfigError(key, f'must be a share from 0 to 1 or a percentage ("5%"), got {raw!r}')
    return share


def parse_pod(key: str, raw: object) -> PodSpec:
    """One pod from ``"URL,name=N,node=M,admin=URL,concurrency=C"`` or a mapping with those keys."""
    if isinstance(raw, str):
        url, *options = [part.strip() for part in raw.strip().split(",")]
        values: dict[str, Any] = {"url": url}
        for option in options:
            name, sep, value = option.partition("=")
            if not sep or name not in _POD_OPTIONS:
                raise ConfigError(
                    key, f"pod {raw!r}: expected name=, node=, admin= or concurrency= after the URL, got {option!r}"
                )
            values[name] = value
    elif isinstance(raw, Mapping):
        unknown = set(raw) - {"url", *_POD_OPTIONS}
        if unknown:
            raise ConfigError(key, f"pod {dict(raw)!r}: unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        values = dict(raw)
    else:
        raise ConfigError(key, f'each pod is "URL,name=..,node=..,admin=..,concurrency=.." or a mapping, got {raw!r}')
    if "url" not in values:
        raise ConfigError(key, f"pod {raw!r}: the url field is required")
    url = parse_url(f"{key}.url", values["url"], ("http", "https"))
    if urlsplit(url).path not in ("", "/") or urlsplit(url).query:
        raise ConfigError(f"{key}.url", f"must be an origin (http://host:port) with no path, got {url!r}")
    name = values.get("name") or urlsplit(url).netloc
    node = values.get("node") or ""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ConfigError(f"{key}.name", f"must be 1-253 characters of letters, digits, '.', '-', '_', ':', got {name!r}")
    if not isinstance(node, str) or (node and not _NAME_RE.match(node)):
        raise ConfigError(f"{key}.node", f"must be letters, digits, '.', '-', '_', ':', got {node!r}")
    admin = parse_optional_url(f"{key}.admin", values.get("admin"))
    concurrency = values.get("concurrency")
    if concurrency is not None:
        concurrency = int_in_range(0, 1_000_000)(f"{key}.concurrency", concurrency)
    return PodSpec(name=name, url=url, node=node, admin=admin, concurrency=concurrency)


def parse_pods(key: str, raw: object, *, indexed: bool = False) -> tuple[PodSpec, ...]:
    """A list of pods; a string (env var, ConfigMap value) holds specs separated by spaces or ';'.

    With ``indexed`` each pod's errors name it as ``key[i]``.
    """
    if raw is None:
        return ()
    if isinstance(raw, str):
        items: Iterable[object] = [s for s in re.split(r"[;\s]+", raw) if s]
    elif isinstance(raw, list | tuple):
        items = raw
    else:
        raise ConfigError(key, f"must be a list of pods, got {raw!r}")
    pods = tuple(parse_pod(f"{key}[{i}]" if indexed else key, item) for i, item in enumerate(items))
    names = [p.name for p in pods]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(key, f"pod names must be unique; repeated: {', '.join(duplicates)}")
    return pods


@dataclass(frozen=True)
class ServiceSpec:
    """One service as configured; None fields take the global setting."""

    name: str
    hosts: tuple[str, ...] = ()
    path_prefix: str = "/"
    pods: tuple[PodSpec, ...] = ()
    policy: str | None = None
    concurrent_request: int | None = None
    queue_length: int | None = None
    request_timeout: float | None = None
    pod_capacity_factor: float | None = None
    pod_capacity_extra: int | None = None
    slow_pod_hold: float | None = None
    share_pods: bool | None = None
    hedge: bool | None = None
    hedge_delay: float | None | str = "global"  # "global": the global hedge-delay (None is auto)
    hedge_budget: float | None = None
    kubernetes: ServiceRef | None = None  # the Kubernetes Service its pods come from (discovery: kubernetes)

    def to_json(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "hosts": list(self.hosts),
                               "path-prefix": self.path_prefix,
                               "pods": [pod.to_json() for pod in self.pods]}
        if self.kubernetes is not None:
            out["kubernetes"] = self.kubernetes.to_json()
        for key, field_name in _OPTIONAL:
            value = getattr(self, field_name)
            if value is not None:
                out[key] = value
        if self.hedge_delay != "global":
            out["hedge-delay"] = "auto" if self.hedge_delay is None else self.hedge_delay
        return out


# Per-service keys that default to the global setting of the same name.
_OPTIONAL = (
    ("policy", "policy"),
    ("katyusha-junbanmachi-concurrent-request", "concurrent_request"),
    ("queue-length", "queue_length"),
    ("request-timeout", "request_timeout"),
    ("pod-capacity-factor", "pod_capacity_factor"),
    ("pod-capacity-extra", "pod_capacity_extra"),
    ("slow-pod-hold", "slow_pod_hold"),
    ("share-pods", "share_pods"),
    ("hedge", "hedge"),
    ("hedge-budget", "hedge_budget"),
)
_OPTIONAL_PARSERS = {
    "policy": parse_policy,
    "katyusha-junbanmachi-concurrent-request": int_in_range(1),
    "queue-length": int_in_range(0),
    "request-timeout": parse_seconds,
    "pod-capacity-factor": parse_non_negative_float,
    "pod-capacity-extra": int_in_range(0, 1000),
    "slow-pod-hold": parse_non_negative_float,
    "share-pods": parse_bool,
    "hedge": parse_bool,
    "hedge-budget": parse_hedge_budget,
}
_SERVICE_KEYS = ("name", "hosts", "path-prefix", "pods", "kubernetes", *(key for key, _ in _OPTIONAL),
                 "hedge-delay")


def parse_service(key: str, raw: object) -> ServiceSpec:
    """One entry of ``services:``. Raises ConfigError naming the field path."""
    if not isinstance(raw, Mapping):
        raise ConfigError(key, f"must be a mapping with name, hosts, path-prefix, policy, pods; got {raw!r}")
    unknown = sorted(str(k) for k in raw if k not in _SERVICE_KEYS)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown field (known: {', '.join(_SERVICE_KEYS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not _SERVICE_RE.match(name):
        raise ConfigError(f"{key}.name", "required: 1-63 letters, digits, '.', '-', '_' "
                                         f"(starting with a letter or digit), got {name!r}")
    hosts = raw.get("hosts") or []
    if isinstance(hosts, str):
        hosts = [hosts]
    if not isinstance(hosts, list):
        raise ConfigError(f"{key}.hosts", f"must be a list of host names, got {hosts!r}")
    for index, host in enumerate(hosts):
        if not isinstance(host, str) or not _HOST_RE.match(host):
            raise ConfigError(f"{key}.hosts[{index}]", f"must be a host name without port, got {host!r}")
    prefix = raw.get("path-prefix", "/")
    if not isinstance(prefix, str) or not prefix.startswith("/") or any(c in prefix for c in "?# "):
        raise ConfigError(f"{key}.path-prefix", f"must be a path starting with '/', got {prefix!r}")
    options = {field_name: _OPTIONAL_PARSERS[option](f"{key}.{option}", raw[option])
               for option, field_name in _OPTIONAL if raw.get(option) is not None}
    if raw.get("hedge-delay") is not None:
        options["hedge_delay"] = parse_hedge_delay(f"{key}.hedge-delay", raw["hedge-delay"])
    pods = parse_pods(f"{key}.pods", raw.get("pods"), indexed=True)
    kubernetes = None
    if raw.get("kubernetes") is not None:
        kubernetes = parse_target(f"{key}.kubernetes", raw["kubernetes"])
        if pods:
            raise ConfigError(f"{key}.pods", "a service takes its pods from pods or from kubernetes, not both")
    return ServiceSpec(
        name=name,
        hosts=tuple(host.lower() for host in hosts),
        path_prefix=prefix,
        pods=pods,
        kubernetes=kubernetes,
        **options,
    )


def parse_services(key: str, raw: object) -> tuple[ServiceSpec, ...]:
    """The ``services:`` list (a YAML/JSON string too, from the environment or ``--set``).

    Raises ConfigError naming the field path, for duplicate names, and for
    two services answering the same host and path prefix.
    """
    if raw is None:
        return ()
    if isinstance(raw, str):
        try:
            raw = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(key, f"not a YAML list of services: {exc}") from None
        if raw is None:
            return ()
    if not isinstance(raw, list | tuple):
        raise ConfigError(key, f"must be a list of services, got {raw!r}")
    services = tuple(parse_service(f"{key}[{index}]", item) for index, item in enumerate(raw))
    seen: dict[str, int] = {}
    for index, service in enumerate(services):
        if service.name in seen:
            raise ConfigError(f"{key}[{index}].name",
                              f"duplicate service name {service.name!r} (also {key}[{seen[service.name]}])")
        seen[service.name] = index
    Router([(s.name, s.hosts, s.path_prefix) for s in services])
    return services
