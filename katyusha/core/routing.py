"""Which service a request is for: by ``Host`` (port ignored), then by the longest path prefix.

Services that name hosts answer only those hosts; a request whose host no
service names goes to the services that name none. Within that group the
service with the longest matching path prefix wins. A prefix matches whole
path segments: ``/api`` matches ``/api`` and ``/api/users`` but not
``/apix``; ``/`` matches every path. No match: None (the driver answers 404).
As in Envoy and nginx, a host's group is final: a request for a named host
whose paths match none of its services does not fall through to the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from katyusha.core.errors import ConfigError

T = TypeVar("T")


def normalise_host(host: str) -> str:
    """A ``Host`` value without its port, in lower case (``[::1]:80`` -> ``[::1]``)."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    name, _, _ = host.partition(":")
    return name.rstrip(".")


def prefix_matches(prefix: str, path: str) -> bool:
    """Whether ``path`` lies under ``prefix`` (whole segments; ``/`` matches all)."""
    if not path.startswith(prefix):
        return False
    return len(path) == len(prefix) or prefix.endswith("/") or path[len(prefix)] == "/"


class Router(Generic[T]):
    """Routes (value, hosts, path prefix) looked up by a request's host and path."""

    def __init__(self, routes: Sequence[tuple[T, Sequence[str], str]]):
        """Raises ConfigError ("services") when two routes share a host and prefix."""
        self._by_host: dict[str, list[tuple[str, T]]] = {}
        self._any: list[tuple[str, T]] = []
        seen: set[tuple[str, str]] = set()
        for value, hosts, prefix in routes:
            for host in hosts or ("",):
                key = normalise_host(host) if host else ""
                if (key, prefix) in seen:
                    raise ConfigError("services", f"two services answer host {key or '*'!r} "
                                                  f"and path prefix {prefix!r}")
                seen.add((key, prefix))
                group = self._by_host.setdefault(key, []) if key else self._any
                group.append((prefix, value))
        for group in (*self._by_host.values(), self._any):
            group.sort(key=lambda item: len(item[0]), reverse=True)
        # The usual case, one service for every host and path: ``only`` is it
        # (the caller may skip reading the Host header).
        self.only: T | None = None
        if not self._by_host and len(self._any) == 1 and self._any[0][0] == "/":
            self.only = self._any[0][1]

    def match(self, host: bytes | str | None, path: str) -> T | None:
        """The value routed for ``host`` (a Host header value, may carry a port) and ``path``; None if none."""
        only = self.only
        if only is not None:
            return only
        group = self._any
        if host and self._by_host:
            text = host.decode("latin-1") if isinstance(host, bytes) else host
            group = self._by_host.get(normalise_host(text), group)
        for prefix, value in group:
            if prefix_matches(prefix, path):
                return value
        return None
