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
    the control plane's admin port (``POST /demand``, ``GET /autoscaler``,
    ``GET /metrics``, ``GET /fleet``, ``PUT /pods/NAME/state``; see
    katyusha.control.api); 0 lets the kernel choose.

Errors are :class:`~katyusha.core.errors.ConfigError` naming
``autoscaler.<key>``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from katyusha.config_values import int_in_range
from katyusha.core.autoscaler_config import KPAConfig, parse_bool
from katyusha.core.errors import ConfigError
from katyusha.core.podstate import RETIRE_TARGETS, PodState, names

SECTION = "autoscaler"
FLEET_KEYS = ("enabled", "retire-to", "admin-port")


def check_retire_to(value: object, key: str = "retire-to") -> PodState:
    """The state pods retire to (warmdisk, cold or null). Raises ConfigError naming ``key``."""
    try:
        state = PodState(value)
    except ValueError:
        state = None
    if state not in RETIRE_TARGETS:
        raise ConfigError(key, f"must be one of {names(RETIRE_TARGETS)}, got {value!r}")
    return state


@dataclass(frozen=True)
class AutoscaleSettings:
    """The live autoscaler's settings for one fleet."""

    enabled: bool = False
    retire_to: PodState = PodState.WARMDISK
    admin_port: int = 0
    kpa: KPAConfig = field(default_factory=KPAConfig)
    keys: tuple[tuple[str, Any], ...] = ()  # the KPA keys as written, for the state file

    def to_json(self) -> dict:
        return {
            "enabled": self.enabled,
            "retire-to": self.retire_to.value,
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
        retire_to = doc.pop("retire-to", PodState.WARMDISK.value)
        if retire_to is None:
            retire_to = "null"  # YAML reads a bare `null` as None; here it can only mean the state
        retire_to = check_retire_to(retire_to.strip() if isinstance(retire_to, str) else retire_to)
        port = int_in_range(0, 65535)("admin-port", doc.pop("admin-port", 0))
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
