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

import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any
from urllib.parse import urlsplit

from katyusha.config_values import (
    int_in_range,
    parse_bool,
    parse_host,
    parse_non_negative_float,
    parse_optional_url,
    parse_positive_float,
    parse_seconds,
    parse_url,
    read_yaml_mapping,
)
from katyusha.core.errors import ConfigError
from katyusha.core.policies import DEFAULT_POLICY, POLICY_NAMES

ENV_CONFIG_FILE = "KATYUSHA_CONFIG"


@dataclass(frozen=True)
class PodSpec:
    """A pod katyusha may send requests to: its data URL, name, node and (optional) nonna admin URL.

    ``concurrency`` is the pod's container concurrency (0: unlimited; None:
    not given, learned from its ``Nonna-Concurrency`` reports instead).
    """

    name: str
    url: str
    node: str = ""
    admin: str | None = None
    concurrency: int | None = None


@dataclass(frozen=True)
class ProxyConfig:
    """Every setting of ``katyusha serve``; field docs are in docs/katyusha.md."""

    host: str = "127.0.0.1"
    port: int = 8080
    admin_port: int = 8081
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
    shutdown_timeout: float = 30.0
    seed: int | None = None
    log_level: str = "warning"
    http_server: str = "lean"

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

    def to_json(self) -> dict:
        """The settings as keys (as a user writes them) to values, plus what is in force."""
        values = asdict(self)
        out = {s.key: values[s.field] for s in SETTINGS}
        out["pods"] = [asdict(p) for p in self.pods]
        out["effective"] = {
            "l1_limit": self.l1_limit,
            "policy": self.effective_policy,
            "feedback": self.uses_feedback,
        }
        return out


# -- value parsers: (key, raw) -> value; raise ConfigError naming the key --------

def parse_policy(key: str, raw: object) -> str:
    if not isinstance(raw, str) or raw.strip() not in POLICY_NAMES:
        raise ConfigError(key, f"must be one of {', '.join(POLICY_NAMES)}; got {raw!r}")
    return raw.strip()


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
    url = parse_url(f"{key}.url", values["url"])
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


_POD_OPTIONS = ("name", "node", "admin", "concurrency")
_NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")


def parse_pods(key: str, raw: object) -> tuple[PodSpec, ...]:
    """A list of pods; a string (env var, ConfigMap value) holds specs separated by spaces or ';'."""
    if raw is None:
        return ()
    if isinstance(raw, str):
        items: Iterable[object] = [s for s in re.split(r"[;\s]+", raw) if s]
    elif isinstance(raw, list | tuple):
        items = raw
    else:
        raise ConfigError(key, f"must be a list of pods, got {raw!r}")
    pods = tuple(parse_pod(key, item) for item in items)
    names = [p.name for p in pods]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(key, f"pod names must be unique; repeated: {', '.join(duplicates)}")
    return pods


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
             "prequal: probes of each pod's nonna /stats per second"),
    _setting("stale-after", "stale_after", parse_seconds, "age after which a pod's report is ignored"),
    _setting("pod-capacity-factor", "pod_capacity_factor", parse_non_negative_float,
             "requests in flight per pod: its concurrency times this (at least 1); 0: no per-pod cap"),
    _setting("shutdown-timeout", "shutdown_timeout", parse_seconds,
             "on SIGTERM, longest wait for queued and in-flight requests"),
    _setting("seed", "seed", parse_optional_seed, "seed of the policies' random choices"),
    _setting("log-level", "log_level", parse_log_level, "uvicorn log level"),
    _setting("http-server", "http_server", parse_http_server,
             "the data port's HTTP/1.1 protocol: lean (katyusha.http.server) or uvicorn (httptools)"),
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
    return ProxyConfig(**values)


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
        elif name.startswith("KATYUSHA_") and name != ENV_CONFIG_FILE:
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
    return validate(merged)
