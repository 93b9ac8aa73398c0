"""Names of Kubernetes objects in katyusha's settings: a Service to follow, its ports, a namespace, a pod.

Pure: no client library is imported, so ``katyusha serve`` reads and checks
its discovery settings (katyusha.proxy.config) on an install without the
``kubernetes`` extra, and says that the extra is missing only when
``discovery: kubernetes`` asks for it. Names are checked as the API server
checks them (a Service name is a DNS-1035 label, a namespace a DNS-1123
label, a port name an IANA service name), so a typo is an error naming the
setting at start rather than a watch that never finds anything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from katyusha.config_values import int_in_range
from katyusha.core.errors import ConfigError

_DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

Port = str | int | None


@dataclass(frozen=True)
class ServiceRef:
    """A Service to follow: ``namespace/name``, the slice port to send to, and optionally nonna's admin port.

    ``port``/``admin_port``: a port name (str), a number (int), or None for
    the slices' only port. ``concurrency``: the pods' container concurrency;
    None reads the Service's ``katyusha.dev/container-concurrency``
    annotation at every list. ``namespace`` "" means "not said": settings
    fill it from ``kubernetes-namespace`` (:meth:`in_namespace`).
    """

    namespace: str
    name: str
    port: Port = None
    admin_port: Port = None
    concurrency: int | None = None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def in_namespace(self, namespace: str) -> ServiceRef:
        """This reference, in ``namespace`` when it named none."""
        return self if self.namespace else replace(self, namespace=namespace)

    def to_json(self) -> dict[str, Any]:
        return {"service": self.key if self.namespace else self.name, "port": self.port,
                "admin-port": self.admin_port, "concurrency": self.concurrency}  # fmt: skip

    @classmethod
    def parse(cls, text: str, namespace: str | None = None, **fields: Any) -> ServiceRef:
        """``NAMESPACE/NAME[:PORT]``, or ``NAME[:PORT]`` in ``namespace`` ("" leaves it to be filled).

        PORT is a name or a number. Raises ConfigError naming the text.
        """
        target, colon, port_text = str(text).strip().partition(":")
        space, slash, name = target.rpartition("/")
        if not slash:
            if namespace is None:
                raise ConfigError(str(text), "a Service is NAMESPACE/NAME[:PORT]")
            space = namespace
        if slash and not _DNS_1123_LABEL.match(space):
            raise ConfigError(str(text), f"the namespace {space!r} is not a DNS label (lower case, digits, '-')")
        if not _DNS_1035_LABEL.match(name) or len(name) > 63:
            raise ConfigError(str(text), f"the Service name {name!r} is not a DNS-1035 label "
                                         "(lower case letters, digits, '-', starting with a letter)")  # fmt: skip
        port = parse_port(str(text), port_text) if colon else None
        return cls(namespace=space, name=name, port=port, **fields)


def _empty(raw: object) -> bool:
    return raw is None or (isinstance(raw, str) and not raw.strip())


def parse_port(key: str, raw: object) -> Port:
    """A Service port: its name (an IANA service name) or its number (1-65535); None when empty."""
    if _empty(raw):
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        number = raw
    elif isinstance(raw, str) and raw.strip().isdigit():
        number = int(raw.strip())
    elif isinstance(raw, str):
        name = raw.strip()
        if not _PORT_NAME.match(name) or len(name) > 15 or not re.search(r"[a-z]", name):
            raise ConfigError(key, f"must be a port name (up to 15 lower-case letters, digits, '-') or number, "
                                   f"got {raw!r}")  # fmt: skip
        return name
    else:
        raise ConfigError(key, f"must be a port name or number, got {raw!r}")
    if not 0 < number < 65536:
        raise ConfigError(key, f"a port number is from 1 to 65535, got {raw!r}")
    return number


def _dns_name(key: str, raw: object, pattern: re.Pattern, limit: int, what: str) -> str:
    if not isinstance(raw, str) or not pattern.match(raw.strip()) or len(raw.strip()) > limit:
        raise ConfigError(key, f"must be {what}, got {raw!r}")
    return raw.strip()


def parse_namespace(key: str, raw: object) -> str:
    return _dns_name(key, raw, _DNS_1123_LABEL, 63, "a namespace (a DNS label: lower case, digits, '-')")


def parse_pod_name(key: str, raw: object) -> str | None:
    """A pod's name (a DNS subdomain), None when empty."""
    if _empty(raw):
        return None
    return _dns_name(key, raw, _DNS_1123_SUBDOMAIN, 253, "a pod name (lower case, digits, '-', '.')")


def parse_service(key: str, raw: object) -> ServiceRef | None:
    """``[NAMESPACE/]NAME[:PORT]`` as a setting (namespace "" when not given); None when empty."""
    if _empty(raw):
        return None
    if not isinstance(raw, str):
        raise ConfigError(key, f"must be a Service as [NAMESPACE/]NAME[:PORT], got {raw!r}")
    try:
        return ServiceRef.parse(raw, namespace="")
    except ConfigError as exc:
        raise ConfigError(key, str(exc)) from None


_TARGET_KEYS = ("service", "port", "admin-port", "concurrency")


def parse_target(key: str, raw: object) -> ServiceRef:
    """A service's ``kubernetes:`` mapping: ``{service: [NS/]NAME, port, admin-port, concurrency}``.

    ``service`` alone may be given as a string. Raises ConfigError naming the field path.
    """
    if isinstance(raw, str):
        raw = {"service": raw}
    if not isinstance(raw, Mapping):
        raise ConfigError(key, f"must be a mapping with {', '.join(_TARGET_KEYS)}; got {raw!r}")
    unknown = sorted(str(k) for k in raw if k not in _TARGET_KEYS)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown field (known: {', '.join(_TARGET_KEYS)})")
    ref = parse_service(f"{key}.service", raw.get("service"))
    if ref is None:
        raise ConfigError(f"{key}.service", "required: the Kubernetes Service to follow, [NAMESPACE/]NAME")
    return with_ports(key, ref, raw.get("port"), raw.get("admin-port"), raw.get("concurrency"))


def with_ports(key: str, ref: ServiceRef, port: object, admin_port: object, concurrency: object = None) -> ServiceRef:
    """``ref`` with its data port, nonna's admin port and container concurrency as settings give them.

    Raises ConfigError (``key.port``...) for a bad value or a port given twice.
    """
    data = parse_port(f"{key}.port", port)
    if data is not None and ref.port is not None and data != ref.port:
        raise ConfigError(f"{key}.port", f"the Service already names port {ref.port!r}; give the port once")
    if concurrency is not None:
        concurrency = int_in_range(0, 1_000_000)(f"{key}.concurrency", concurrency)
    return replace(ref, port=ref.port if data is None else data,
                   admin_port=parse_port(f"{key}.admin-port", admin_port), concurrency=concurrency)  # fmt: skip
