"""nonna's settings, read from a YAML file, ``NONNA_*`` environment variables and flags.

Precedence, low to high: defaults, the YAML file, the environment, flags.
Every source uses the same keys, spelled as the flags without the dashes
(``queue-depth`` in YAML, ``NONNA_QUEUE_DEPTH`` in the environment,
``--queue-depth`` on the command line). Unknown keys and bad values raise
ConfigError naming the flag. Field docs are in docs/nonna.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from katyusha import config_values as values
from katyusha.admintoken import check_exposure, resolve_token
from katyusha.core.errors import ConfigError
from katyusha.http import tls
from katyusha.http.limits import EDGE_SETTINGS, EdgeFields

ENV_PREFIX = "NONNA_"
ENV_CONFIG_FILE = "NONNA_CONFIG"

# With no concurrency limit nothing ever waits, so an unbounded depth costs nothing.
UNLIMITED_DEPTH_DEFAULT = None


@dataclass(frozen=True)
class NonnaConfig(EdgeFields):
    """nonna's settings; the data port's limits, timeouts and TLS are the shared EdgeFields."""

    host: str = "127.0.0.1"
    port: int = 9101
    admin_port: int = 9102
    upstream: str = "http://127.0.0.1:9001"
    concurrency: int = 1
    queue_depth: int | None = None  # resolved by effective_queue_depth
    pod: str = "pod-1"
    node: str = "node-1"
    timeout: float = 30.0
    upstream_health: str | None = None
    stats_period: float = 2.0
    shutdown_timeout: float | None = None  # resolved by effective_shutdown_timeout
    admin_token: str | None = None
    admin_token_file: str | None = None
    admin_allow_open: bool = False

    @property
    def effective_queue_depth(self) -> int | None:
        """The depth in force: as set, else 10 x concurrency; None (unbounded) with no limit."""
        if self.queue_depth is not None:
            return self.queue_depth
        if self.concurrency == 0:
            return UNLIMITED_DEPTH_DEFAULT
        return 10 * self.concurrency

    @property
    def effective_shutdown_timeout(self) -> float:
        """How long shutdown waits for requests: as set, else ``timeout`` plus 5 s to stream them out."""
        return self.shutdown_timeout if self.shutdown_timeout is not None else self.timeout + 5.0

    @property
    def upstream_hostport(self) -> tuple[str, int]:
        parts = urlsplit(self.upstream)
        return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 80)


_NAME_RE = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")


def _flag(key: str) -> str:
    return "--" + key


def _with_flag(parse: Callable[[str, object], Any]) -> Callable[[str, object], Any]:
    """A shared parser whose errors name the flag (``--timeout``) rather than the key."""
    return lambda key, raw: parse(_flag(key), raw)


def parse_int(low: int, high: int | None = None) -> Callable[[str, object], int]:
    return _with_flag(values.int_in_range(low, high))


parse_duration = _with_flag(values.parse_seconds)
parse_url = _with_flag(values.parse_url)
parse_host = _with_flag(values.parse_host)
parse_optional_url = _with_flag(values.parse_optional_url)


def parse_origin(key: str, raw: object) -> str:
    """An http:// (or https://) URL with no path: the application is proxied path for path."""
    url = values.parse_url(_flag(key), raw, ("http", "https"))
    parts = urlsplit(url)
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(_flag(key), f"must be http://host:port with no path or query, got {raw!r}")
    return url


def parse_optional_duration(key: str, raw: object) -> float | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return parse_duration(key, raw)


def parse_name(key: str, raw: object) -> str:
    if not isinstance(raw, str) or not _NAME_RE.match(raw.strip()):
        raise ConfigError(_flag(key), f"must be 1-253 letters, digits, '.', '-', '_' or ':', got {raw!r}")
    return raw.strip()


parse_optional_text = _with_flag(values.parse_optional_text)
parse_bool = _with_flag(values.parse_bool)


def parse_optional_depth(key: str, raw: object) -> int | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return parse_int(0)(key, raw)


# key -> (field, parser, help)
SETTINGS: dict[str, tuple[str, Callable[[str, object], Any], str]] = {
    "host": ("host", parse_host, "address both ports listen on"),
    "port": ("port", parse_int(0, 65535), "data port (0: the kernel picks)"),
    "admin-port": ("admin_port", parse_int(0, 65535), "admin port (0: the kernel picks)"),
    "upstream": ("upstream", parse_origin, "the application's base URL"),
    "concurrency": ("concurrency", parse_int(0), "requests executing at once (0: unlimited)"),
    "queue-depth": ("queue_depth", parse_optional_depth,
                    "requests that may wait beyond the concurrency (default 10 x concurrency)"),
    "pod": ("pod", parse_name, "pod name reported in Nonna-Pod"),
    "node": ("node", parse_name, "node name reported in Nonna-Node"),
    "timeout": ("timeout", parse_duration, "longest time a request may wait and execute (then 504)"),
    "upstream-health": ("upstream_health", parse_optional_url,
                        "URL whose 2xx makes /healthz 200 (default: a TCP connect to the upstream)"),
    "stats-period": ("stats_period", parse_duration, "length of a /stats reporting period"),
    "shutdown-timeout": ("shutdown_timeout", parse_optional_duration,
                         "on SIGTERM, longest wait for queued and in-flight requests "
                         "(default: timeout + 5s)"),
    # The data port's limits, timeouts and TLS (katyusha.http.limits, shared with katyusha).
    **{key: (field_name, _with_flag(parse), doc)
       for key, (field_name, parse, doc) in EDGE_SETTINGS.items()},
    "admin-token": ("admin_token", parse_optional_text,
                    "bearer token mutating admin requests must carry (prefer --admin-token-file)"),
    "admin-token-file": ("admin_token_file", parse_optional_text, "file holding the admin token"),
    "admin-allow-open": ("admin_allow_open", parse_bool,
                         "true: serve the admin port on a non-loopback --host with no token"),
}


def env_name(key: str) -> str:
    return ENV_PREFIX + key.upper().replace("-", "_")


def validate(raw: Mapping[str, object], source: Mapping[str, str] | None = None) -> NonnaConfig:
    """Turn ``{key: raw value}`` into a NonnaConfig.

    Raises ConfigError naming the flag, or the name in ``source`` (key to the
    environment variable or file that gave the value) when there is one.
    """
    values: dict[str, Any] = {}
    for key, value in raw.items():
        named = (source or {}).get(key)
        if key not in SETTINGS:
            raise ConfigError(named or _flag(str(key)), f"unknown setting (known: {', '.join(SETTINGS)})")
        field_name, parse, _ = SETTINGS[key]
        try:
            values[field_name] = parse(key, value)
        except ConfigError as exc:
            if named is None:
                raise
            raise ConfigError(f"{named} ({exc.key})", str(exc).split(": ", 1)[1]) from None
    config = NonnaConfig(**values)
    try:
        tls.check(config)
    except ConfigError as exc:
        raise ConfigError(_flag(exc.key), str(exc).split(": ", 1)[1]) from None
    token = resolve_token(config.admin_token, config.admin_token_file, token_key="--admin-token",
                          file_key="--admin-token-file")
    check_exposure(config.host, token, config.admin_allow_open, host_key="--host", token_key="--admin-token",
                   file_key="--admin-token-file", allow_key="--admin-allow-open")
    return replace(config, admin_token=token)


def load_yaml(path: str) -> dict[str, object]:
    """The settings in a YAML mapping of keys (flag names without dashes) to values.

    Raises ConfigError (named --config) when the file is unreadable or not a mapping.
    """
    document = values.read_yaml_mapping(path, "--config")
    return {str(k).replace("_", "-"): v for k, v in document.items()}


def from_env(environ: Mapping[str, str]) -> dict[str, object]:
    """Settings from ``NONNA_*`` variables; an unknown ``NONNA_*`` name is a ConfigError."""
    by_env = {env_name(key): key for key in SETTINGS}
    out: dict[str, object] = {}
    for name, value in environ.items():
        if name in by_env:
            out[by_env[name]] = value
        elif name.startswith(ENV_PREFIX) and name != ENV_CONFIG_FILE:
            raise ConfigError(name, "unknown environment setting (see docs/nonna.md)")
    return out


def load(
    *,
    flags: Mapping[str, object] | None = None,
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> NonnaConfig:
    """Merge YAML < environment < flags and validate. ``config_file`` defaults to $NONNA_CONFIG."""
    environ = os.environ if environ is None else environ
    merged: dict[str, object] = {}
    source: dict[str, str] = {}
    path = config_file or environ.get(ENV_CONFIG_FILE)
    if path:
        from_file = load_yaml(path)
        merged.update(from_file)
        source.update({key: f"{path}: {key}" for key in from_file})
    from_environ = from_env(environ)
    merged.update(from_environ)
    source.update({key: env_name(key) for key in from_environ})
    for key, value in (flags or {}).items():
        merged[key] = value
        source.pop(key, None)
    return validate(merged, source)
