"""Strict parsers for setting values, shared by every component's configuration.

Each parser takes ``(key, raw)``, where ``raw`` comes from YAML (typed) or from
a ConfigMap, an environment variable or a flag (a string), and returns the
value or raises :class:`ConfigError` naming ``key``. Nothing is coerced
silently: ``"yes"`` is not a bool and ``"1.5"`` is not a whole number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from katyusha.core.errors import ConfigError

_BOOL_WORDS = {"true": True, "false": False}
_INT_RE = re.compile(r"^[0-9]+$")
_DURATION_RE = re.compile(r"^([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ms|s|m)?$")
_DURATION_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0}


def parse_bool(key: str, raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _BOOL_WORDS:
        return _BOOL_WORDS[raw.strip().lower()]
    raise ConfigError(key, f'must be "true" or "false", got {raw!r}')


def int_in_range(low: int, high: int | None = None) -> Callable[[str, object], int]:
    """A parser of whole numbers from ``low`` to ``high`` (no upper bound when None)."""

    def parse(key: str, raw: object) -> int:
        value: int | None = None
        if isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        elif isinstance(raw, str) and _INT_RE.match(raw.strip()):
            value = int(raw.strip())
        if value is None or value < low or (high is not None and value > high):
            span = f"from {low} to {high}" if high is not None else f">= {low}"
            raise ConfigError(key, f"must be a whole number {span}, got {raw!r}")
        return value

    return parse


def parse_seconds(key: str, raw: object) -> float:
    """A positive duration: a number of seconds, or a string like "2.5", "250ms", "30s", "2m"."""
    value: float | None = None
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        value = float(raw)
    elif isinstance(raw, str):
        match = _DURATION_RE.match(raw.strip())
        if match:
            value = float(match[1]) * _DURATION_SCALE[match[2] or "s"]
    if value is None or not math.isfinite(value) or value <= 0:
        raise ConfigError(
            key, f'must be a positive duration in seconds (e.g. 30, "2.5s", "250ms"), got {raw!r}'
        )
    return value


def parse_seconds_or_zero(key: str, raw: object) -> float:
    """A duration that may be 0 (off): as :func:`parse_seconds`, plus ``0``."""
    if raw == 0 or (isinstance(raw, str) and raw.strip() in ("0", "0s", "0ms", "0.0")):
        return 0.0
    return parse_seconds(key, raw)


def parse_optional_file(key: str, raw: object) -> str | None:
    """A path to a readable file, or None when empty. Raises ConfigError naming ``key``."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        raise ConfigError(key, f"must be a file path, got {raw!r}")
    path = raw.strip()
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    return path


def _float(raw: object) -> float | None:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            return None
    return None


def parse_positive_float(key: str, raw: object) -> float:
    value = _float(raw)
    if value is None or not math.isfinite(value) or value <= 0:
        raise ConfigError(key, f"must be a positive number, got {raw!r}")
    return value


def parse_non_negative_float(key: str, raw: object) -> float:
    value = _float(raw)
    if value is None or not math.isfinite(value) or value < 0:
        raise ConfigError(key, f"must be a number >= 0, got {raw!r}")
    return value


def parse_url(key: str, raw: object, schemes: tuple[str, ...] = ("http",)) -> str:
    """An http:// URL (or one of ``schemes``) with a host and a valid port; no trailing slash."""
    text = raw.strip() if isinstance(raw, str) else ""
    parts = urlsplit(text)
    try:
        port_ok = parts.port is not None or True
    except ValueError:
        port_ok = False
    if parts.scheme not in schemes or not parts.hostname or not port_ok:
        kinds = " or ".join(f"{scheme}://" for scheme in schemes)
        raise ConfigError(key, f"must be an {kinds} URL with a host (and a valid port), got {raw!r}")
    return text.rstrip("/")


def parse_optional_url(key: str, raw: object) -> str | None:
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    return parse_url(key, raw)


def parse_optional_text(key: str, raw: object) -> str | None:
    """A string (stripped), or None when empty or absent."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return None
    if not isinstance(raw, str):
        raise ConfigError(key, f"must be a string, got {raw!r}")
    return raw.strip()


def parse_host(key: str, raw: object) -> str:
    if not isinstance(raw, str) or not raw.strip() or any(c.isspace() for c in raw.strip()):
        raise ConfigError(key, f"must be a host name or address, got {raw!r}")
    return raw.strip()


def read_yaml_mapping(path: str, key: str) -> dict:
    """The YAML document in ``path``, which must be a mapping (an empty file is ``{}``).

    Raises ConfigError naming ``key`` (the setting or flag that named the file)
    when the file cannot be read, is not YAML, or holds something else.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            document = yaml.safe_load(handle)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(key, f"{path} is not valid YAML: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(key, f"{path} must hold a mapping of settings, got {type(document).__name__}")
    return document
