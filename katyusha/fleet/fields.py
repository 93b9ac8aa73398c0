"""Field readers for the fleet file: each returns the value or raises ConfigError naming the field path.

Scalar values go through the project's strict setting parsers
(katyusha.config_values); these add what a nested YAML document needs:
mappings with a closed set of keys and lists, each named by its path
(``groups[1].service_time``, ``services[0].annotations``).
"""

from __future__ import annotations

from typing import Any

from katyusha.config_values import int_in_range, parse_non_negative_float
from katyusha.core.errors import ConfigError


def mapping(value: Any, where: str, allowed: set[str] | None) -> dict:
    """``value`` as a mapping ({} for None) whose keys are all in ``allowed`` (None: any key).

    ``where`` is the mapping's path; "" for the top of the file, whose keys are named bare.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(where or "fleet file", f"must be a mapping, not {type(value).__name__}")
    if allowed is not None:
        for key in value:
            if key not in allowed:
                path = f"{where}.{key}" if where else str(key)
                raise ConfigError(path, f"unknown field (allowed: {', '.join(sorted(allowed))})")
    return value


def listed(value: Any, where: str) -> list:
    """``value`` as a list ([] for None)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(where, f"must be a list, not {type(value).__name__}")
    return value


def text(value: Any, where: str) -> str:
    """A non-empty string, stripped."""
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(where, f"must be a non-empty string, not {value!r}")
    return value.strip()


def whole(value: Any, where: str, *, low: int, high: int | None = None) -> int:
    """A whole number from ``low`` to ``high`` (an integer, or a string of digits)."""
    return int_in_range(low, high)(where, value)


def number(value: Any, where: str, *, low: float = 0.0, strict: bool = False) -> float:
    """A finite number at least ``low`` (above it with ``strict``)."""
    result = parse_non_negative_float(where, value)
    if result < low or (strict and result == low):
        bound = "greater than" if strict else "at least"
        raise ConfigError(where, f"must be {bound} {low:g}, not {value!r}")
    return result
