"""The edge settings of a data port, shared by katyusha's and nonna's (one definition).

:class:`EdgeFields` is the dataclass both processes' configurations inherit,
so the keys, defaults and parsers are written once (:data:`EDGE_SETTINGS`);
:class:`EdgeLimits` is the part the HTTP server and client enforce. Each
setting, its default and the reason for it are in docs/katyusha.md
("Drop-in"); docs/nonna.md points there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from katyusha.config_values import (
    int_in_range,
    parse_bool,
    parse_optional_file,
    parse_seconds,
    parse_seconds_or_zero,
)


@dataclass(frozen=True)
class EdgeLimits:
    """What a data port tolerates from clients and pods; 0 turns a byte or count limit off.

    * ``header_timeout``: seconds from a request's first byte (a new
      connection's open) to the end of its head; then 408 and close.
    * ``body_timeout``: seconds without progress on a request body that is
      being read; then 408 (or a close once the response began).
    * ``keepalive_timeout``: seconds an idle kept-alive connection stays open.
    * ``max_body_bytes``: largest request body (413).
    * ``max_headers``: most header fields in a request head (431).
    * ``max_connections``: most client connections a process holds; more get
      a canned 503 and are closed.
    * ``max_response_head_bytes``: largest response head a pod may send (502).
    * ``upgrade_idle_timeout``: seconds an upgraded connection (WebSocket) may
      pass no byte either way before both sides are closed.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 75.0
    max_body_bytes: int = 256 * 1024 * 1024
    max_headers: int = 100
    max_connections: int = 20_000
    max_response_head_bytes: int = 64 * 1024
    upgrade_idle_timeout: float = 300.0


_LIMITS = EdgeLimits()


@dataclass(frozen=True)
class EdgeFields:
    """The edge settings as configuration fields (katyusha's and nonna's configs inherit them)."""

    header_timeout: float = _LIMITS.header_timeout
    body_timeout: float = _LIMITS.body_timeout
    keepalive_timeout: float = _LIMITS.keepalive_timeout
    max_body_bytes: int = _LIMITS.max_body_bytes
    max_headers: int = _LIMITS.max_headers
    max_connections: int = _LIMITS.max_connections
    max_response_head_bytes: int = _LIMITS.max_response_head_bytes
    upgrade_idle_timeout: float = _LIMITS.upgrade_idle_timeout
    drain_grace: float = 5.0
    tls_cert: str | None = None
    tls_key: str | None = None
    upstream_ca: str | None = None
    upstream_tls_verify: bool = True

    @property
    def limits(self) -> EdgeLimits:
        """The limits the HTTP server and the upstream client enforce."""
        return EdgeLimits(
            header_timeout=self.header_timeout,
            body_timeout=self.body_timeout,
            keepalive_timeout=self.keepalive_timeout,
            max_body_bytes=self.max_body_bytes,
            max_headers=self.max_headers,
            max_connections=self.max_connections,
            max_response_head_bytes=self.max_response_head_bytes,
            upgrade_idle_timeout=self.upgrade_idle_timeout,
        )


# key -> (field, parser, help); the same keys in katyusha's and nonna's settings.
EDGE_SETTINGS: dict[str, tuple[str, Callable[[str, object], Any], str]] = {
    "header-timeout": ("header_timeout", parse_seconds,
                       "longest time to receive a request head (then 408 and close)"),
    "body-timeout": ("body_timeout", parse_seconds,
                     "longest silence while a request body is read (then 408)"),
    "keepalive-timeout": ("keepalive_timeout", parse_seconds,
                          "how long an idle client connection is kept open"),
    "max-body-bytes": ("max_body_bytes", int_in_range(0),
                       "largest request body in bytes (413; 0: no limit)"),
    "max-headers": ("max_headers", int_in_range(0, 100_000),
                    "most header fields in a request (431; 0: no limit)"),
    "max-connections": ("max_connections", int_in_range(0),
                        "most client connections per process (more: 503 and close; 0: no limit)"),
    "max-response-head-bytes": ("max_response_head_bytes", int_in_range(1024),
                                "largest response head accepted from a pod, in bytes (then 502)"),
    "upgrade-idle-timeout": ("upgrade_idle_timeout", parse_seconds,
                             "idle time after which an upgraded (WebSocket) connection is closed"),
    "drain-grace": ("drain_grace", parse_seconds_or_zero,
                    "on SIGTERM, how long new connections are still accepted (healthz says 503)"),
    "tls-cert": ("tls_cert", parse_optional_file,
                 "PEM certificate (chain) file: the data port speaks HTTPS (with tls-key)"),
    "tls-key": ("tls_key", parse_optional_file, "PEM private key file of tls-cert"),
    "upstream-ca": ("upstream_ca", parse_optional_file,
                    "PEM file of CAs trusted for https:// pods (default: the system's)"),
    "upstream-tls-verify": ("upstream_tls_verify", parse_bool,
                            "false: do not verify https:// pods' certificates (only when set)"),
}
