"""The ``autoscaler:`` section of a fleet file: Knative ``config-autoscaler`` keys plus the fleet's own.

Every key of :class:`katyusha.core.autoscaler_config.KPAConfig` is accepted
under its config-autoscaler name. Three more belong to the live fleet:

``enabled``
    run the autoscaler (``katyusha fleet up --autoscale`` sets it too).
``retire-to``
    the state a pod goes down to: ``warmdisk`` (default: the image stays on
    the node's disk, so the next cold start skips the pull), ``cold`` or
    ``null`` (nothing kept: the next start pulls the image again).
``admin-port``
    the autoscaler's admin port (``POST /demand``, ``GET /autoscaler``,
    ``GET /metrics``); 0 lets the kernel choose.

Errors are :class:`~katyusha.core.errors.ConfigError` naming
``autoscaler.<key>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from katyusha.control.actuator import check_retire_to
from katyusha.core.autoscaler_config import KPAConfig, parse_bool, parse_int
from katyusha.core.errors import ConfigError

SECTION = "autoscaler"
FLEET_KEYS = ("enabled", "retire-to", "admin-port")


@dataclass(frozen=True)
class AutoscaleSettings:
    """The live autoscaler's settings for one fleet."""

    enabled: bool = False
    retire_to: str = "warmdisk"
    admin_port: int = 0
    kpa: KPAConfig = field(default_factory=KPAConfig)
    keys: tuple[tuple[str, Any], ...] = ()  # the KPA keys as written, for the state file

    def to_json(self) -> dict:
        return {
            "enabled": self.enabled,
            "retire-to": self.retire_to,
            "admin-port": self.admin_port,
            **dict(self.keys),
        }


def parse_section(raw: Any, *, enabled: bool | None = None) -> AutoscaleSettings:
    """Settings from the fleet file's ``autoscaler:`` mapping (None: defaults); ``enabled`` overrides the file.

    Raises ConfigError naming ``autoscaler.<key>``.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(SECTION, f"must be a mapping of config-autoscaler keys, not {type(raw).__name__}")
    doc = dict(raw)
    try:
        on = parse_bool("enabled", doc.pop("enabled", False))
        retire_to = doc.pop("retire-to", "warmdisk")
        if retire_to is None:
            retire_to = "null"  # YAML reads a bare `null` as None; here it can only mean the state
        if not isinstance(retire_to, str):
            raise ConfigError("retire-to", f"must be warmdisk, cold or null, got {retire_to!r}")
        retire_to = check_retire_to(retire_to.strip())
        port = parse_int("admin-port", doc.pop("admin-port", 0))
        if not 0 <= port <= 65535:
            raise ConfigError("admin-port", f"must be a port from 0 to 65535, got {port}")
        kpa = KPAConfig.from_mapping(doc)
    except ConfigError as exc:
        message = str(exc)[len(exc.key) + 2 :]
        hint = ""
        if exc.key not in FLEET_KEYS and "unknown" in message:
            hint = f" (fleet keys: {', '.join(FLEET_KEYS)}; others are Knative config-autoscaler keys)"
        raise ConfigError(f"{SECTION}.{exc.key}", message + hint) from None
    if enabled is not None:
        on = enabled
    return AutoscaleSettings(on, retire_to, port, kpa, tuple((str(k), v) for k, v in doc.items()))
