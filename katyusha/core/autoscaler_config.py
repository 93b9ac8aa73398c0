"""Autoscaler settings with Knative KPA semantics: the ``config-autoscaler`` keys and per-service annotations.

:meth:`KPAConfig.from_mapping` reads the ``data:`` section of a Knative
``config-autoscaler`` ConfigMap unchanged (string values such as ``"70"``,
``"60s"``, ``"true"``) or the same keys from a YAML section (native numbers and
booleans). :meth:`KPAConfig.with_annotations` applies per-service overrides in
the style of ``autoscaling.knative.dev/*`` annotations. Unknown keys and bad
values raise :class:`~katyusha.core.errors.ConfigError` naming the key; nothing
is silently ignored except keys that start with ``_`` (Knative ships its
ConfigMaps with an ``_example`` block) and annotations of other prefixes
(they belong to other systems).

Durations are Go-style (``"60s"``, ``"1m30s"``, ``"500ms"``) as in Knative, or
a bare number of seconds.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from katyusha.core.errors import ConfigError

ANNOTATION_PREFIX = "autoscaling.knative.dev/"
KPA_CLASS = "kpa.autoscaling.knative.dev"
CONCURRENCY = "concurrency"
RPS = "rps"

# Bounds Knative enforces (pkg/apis/autoscaling): a target below this is meaningless.
TARGET_MIN = 0.01
WINDOW_MIN = 6.0
WINDOW_MAX = 3600.0
PANIC_WINDOW_PERCENTAGE_RANGE = (1.0, 100.0)
PANIC_THRESHOLD_PERCENTAGE_RANGE = (110.0, 1000.0)

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_TRUE = {"1", "t", "true", "yes", "on"}
_FALSE = {"0", "f", "false", "no", "off"}


def parse_duration(key: str, value: Any) -> float:
    """Seconds from a Go-style duration string or a number; raises ConfigError naming ``key``."""
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a duration such as '60s', got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            negative = text.startswith("-")
            if text[:1] in "+-":
                pos = 1
            if pos == len(text):
                raise ConfigError(key, f"must be a duration such as '60s', got {value!r}") from None
            while pos < len(text):
                match = _DURATION_PART.match(text, pos)
                if not match:
                    raise ConfigError(key, f"must be a duration such as '60s', got {value!r}") from None
                seconds += float(match[1]) * _DURATION_UNITS[match[2]]
                pos = match.end()
            if negative:
                seconds = -seconds
    else:
        raise ConfigError(key, f"must be a duration such as '60s', got {value!r}")
    if not math.isfinite(seconds):
        raise ConfigError(key, f"must be a finite duration, got {value!r}")
    return seconds


def parse_float(key: str, value: Any) -> float:
    """A finite float from a number or numeric string; raises ConfigError naming ``key``."""
    if isinstance(value, bool):
        raise ConfigError(key, f"must be a number, got {value!r}")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        raise ConfigError(key, f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(key, f"must be a finite number, got {value!r}")
    return number


def parse_int(key: str, value: Any) -> int:
    """An integer from an int or an integer string (``"3"``, not ``"3.5"``); raises ConfigError."""
    if isinstance(value, bool):
        raise ConfigError(key, f"must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigError(key, f"must be an integer, got {value!r}")


def parse_bool(key: str, value: Any) -> bool:
    """A boolean from a bool or ``"true"``/``"false"`` (and Go's ParseBool spellings); raises ConfigError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(key, f"must be true or false, got {value!r}")


def _parse_percentage(key: str, value: Any) -> float:
    # Knative still accepts the legacy fraction form (0, 1]; anything above 1 is a percentage.
    number = parse_float(key, value)
    fraction = number / 100.0 if number > 1.0 else number
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(key, f"must be in (0, 100], got {value!r}")
    return fraction


def _parse_metric(key: str, value: Any) -> str:
    if not isinstance(value, str) or value.strip().lower() not in (CONCURRENCY, RPS):
        raise ConfigError(key, f"must be 'concurrency' or 'rps', got {value!r}")
    return value.strip().lower()


def _parse_class(key: str, value: Any) -> str:
    if not isinstance(value, str) or value.strip() != KPA_CLASS:
        raise ConfigError(key, f"only {KPA_CLASS!r} is supported, got {value!r}")
    return value.strip()


def _parse_target(key: str, value: Any) -> float:
    return parse_float(key, value)


# config-autoscaler key -> (field, parser)
_CONFIG_KEYS: dict[str, tuple[str, Any]] = {
    "pod-autoscaler-class": ("pod_autoscaler_class", _parse_class),
    "metric": ("metric", _parse_metric),
    "container-concurrency-target-default": ("container_concurrency_target_default", parse_float),
    "container-concurrency-target-percentage": ("target_utilization", _parse_percentage),
    "requests-per-second-target-default": ("requests_per_second_target_default", parse_float),
    "container-concurrency": ("container_concurrency", parse_int),
    "target-burst-capacity": ("target_burst_capacity", parse_float),
    "stable-window": ("stable_window", parse_duration),
    "panic-window-percentage": ("panic_window_percentage", parse_float),
    "panic-threshold-percentage": ("panic_threshold_percentage", parse_float),
    "max-scale-up-rate": ("max_scale_up_rate", parse_float),
    "max-scale-down-rate": ("max_scale_down_rate", parse_float),
    "enable-scale-to-zero": ("enable_scale_to_zero", parse_bool),
    "scale-to-zero-grace-period": ("scale_to_zero_grace_period", parse_duration),
    "scale-to-zero-pod-retention-period": ("scale_to_zero_pod_retention_period", parse_duration),
    "scale-down-delay": ("scale_down_delay", parse_duration),
    "min-scale": ("min_scale", parse_int),
    "max-scale": ("max_scale", parse_int),
    "max-scale-limit": ("max_scale_limit", parse_int),
    "initial-scale": ("initial_scale", parse_int),
    "allow-zero-initial-scale": ("allow_zero_initial_scale", parse_bool),
    "activation-scale": ("activation_scale", parse_int),
    "activator-capacity": ("activator_capacity", parse_float),
    "tick-interval": ("tick_interval", parse_duration),
}

# autoscaling.knative.dev/<name> -> (field, parser); camelCase spellings are Knative's legacy aliases.
_ANNOTATIONS: dict[str, tuple[str, Any]] = {
    "class": ("pod_autoscaler_class", _parse_class),
    "metric": ("metric", _parse_metric),
    "target": ("target", _parse_target),
    "target-utilization-percentage": ("target_utilization", _parse_percentage),
    "target-burst-capacity": ("target_burst_capacity", parse_float),
    "window": ("stable_window", parse_duration),
    "panic-window-percentage": ("panic_window_percentage", parse_float),
    "panic-threshold-percentage": ("panic_threshold_percentage", parse_float),
    "min-scale": ("min_scale", parse_int),
    "max-scale": ("max_scale", parse_int),
    "initial-scale": ("initial_scale", parse_int),
    "activation-scale": ("activation_scale", parse_int),
    "scale-to-zero-pod-retention-period": ("scale_to_zero_pod_retention_period", parse_duration),
    "scale-down-delay": ("scale_down_delay", parse_duration),
}
_ANNOTATION_ALIASES = {
    "minScale": "min-scale",
    "maxScale": "max-scale",
    "initialScale": "initial-scale",
    "activationScale": "activation-scale",
    "targetUtilizationPercentage": "target-utilization-percentage",
    "targetBurstCapacity": "target-burst-capacity",
    "panicWindowPercentage": "panic-window-percentage",
    "panicThresholdPercentage": "panic-threshold-percentage",
    "scaleToZeroPodRetentionPeriod": "scale-to-zero-pod-retention-period",
    "scaleDownDelay": "scale-down-delay",
}

# Field -> the key a validation error names (the config-autoscaler spelling).
_FIELD_KEYS = {field: key for key, (field, _) in _CONFIG_KEYS.items()}
_FIELD_KEYS["target"] = ANNOTATION_PREFIX + "target"


@dataclass(frozen=True)
class KPAConfig:
    """One service's autoscaler settings, validated on construction (raises ConfigError).

    Field names follow the ``config-autoscaler`` keys; ``target_utilization``
    is the fraction form of ``container-concurrency-target-percentage``;
    durations are seconds. ``target`` is the per-service
    ``autoscaling.knative.dev/target`` (None: the default for the metric).
    """

    pod_autoscaler_class: str = KPA_CLASS
    metric: str = CONCURRENCY
    container_concurrency_target_default: float = 100.0
    target_utilization: float = 0.7
    requests_per_second_target_default: float = 200.0
    container_concurrency: int = 0
    target: float | None = None
    target_burst_capacity: float = 211.0
    stable_window: float = 60.0
    panic_window_percentage: float = 10.0
    panic_threshold_percentage: float = 200.0
    max_scale_up_rate: float = 1000.0
    max_scale_down_rate: float = 2.0
    enable_scale_to_zero: bool = True
    scale_to_zero_grace_period: float = 30.0
    scale_to_zero_pod_retention_period: float = 0.0
    scale_down_delay: float = 0.0
    min_scale: int = 0
    max_scale: int = 0
    max_scale_limit: int = 0
    initial_scale: int = 1
    allow_zero_initial_scale: bool = False
    activation_scale: int = 1
    activator_capacity: float = 100.0
    tick_interval: float = 2.0

    def __post_init__(self) -> None:
        self._validate()

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> KPAConfig:
        """Settings from ``config-autoscaler`` keys (strings or native YAML values) over the defaults.

        Raises ConfigError naming the key for an unknown key or a bad value.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError("config-autoscaler", f"must be a mapping of keys to values, got {type(data).__name__}")
        changes: dict[str, Any] = {}
        for key, value in data.items():
            if not isinstance(key, str):
                raise ConfigError(str(key), "keys must be strings")
            if key.startswith("_"):
                continue
            entry = _CONFIG_KEYS.get(key)
            if entry is None:
                raise ConfigError(key, "unknown config-autoscaler key")
            field, parse = entry
            changes[field] = parse(key, value)
        return cls(**changes)

    def with_annotations(self, annotations: Mapping[str, Any] | None) -> KPAConfig:
        """A copy with per-service overrides applied, validated as a whole.

        Keys are ``autoscaling.knative.dev/<name>`` annotations or the bare
        ``<name>``; keys under any other prefix are left to their owners.
        Raises ConfigError naming the annotation for an unknown name or a bad value.
        """
        if not annotations:
            return self
        if not isinstance(annotations, Mapping):
            raise ConfigError("annotations", f"must be a mapping, got {type(annotations).__name__}")
        changes: dict[str, Any] = {}
        named_by: dict[str, str] = {}
        for key, value in annotations.items():
            if not isinstance(key, str):
                raise ConfigError(str(key), "annotation keys must be strings")
            if key.startswith(ANNOTATION_PREFIX):
                name = key[len(ANNOTATION_PREFIX) :]
            elif "/" in key:
                continue
            else:
                name = key
            entry = _ANNOTATIONS.get(_ANNOTATION_ALIASES.get(name, name))
            if entry is None:
                raise ConfigError(key, "unknown autoscaling annotation")
            field, parse = entry
            changes[field] = parse(key, value)
            named_by[field] = key
        try:
            return dataclasses.replace(self, **changes)
        except ConfigError as exc:
            # Name the annotation the user wrote, not the config-autoscaler key it overrides.
            field = _field_of(exc.key)
            if field in named_by:
                raise ConfigError(named_by[field], str(exc)[len(exc.key) + 2 :]) from None
            raise

    # -- derived values -----------------------------------------------------------------

    @property
    def total_target(self) -> float:
        """Per-pod capacity for the metric before utilization (Knative's TotalValue)."""
        if self.metric == RPS:
            return self.target if self.target is not None else self.requests_per_second_target_default
        total = self.target if self.target is not None else self.container_concurrency_target_default
        if self.container_concurrency > 0:
            # A hard per-pod limit caps the soft target: more could never run at once.
            total = float(self.container_concurrency) if self.target is None else min(total, self.container_concurrency)
        return total

    @property
    def target_value(self) -> float:
        """Per-pod metric value the autoscaler aims for: total target x utilization, at least 0.01."""
        return max(TARGET_MIN, self.total_target * self.target_utilization)

    @property
    def panic_window(self) -> float:
        """Seconds of the panic window: stable window x panic-window-percentage / 100, at least 1 s."""
        return max(1.0, self.stable_window * self.panic_window_percentage / 100.0)

    @property
    def panic_threshold(self) -> float:
        """Panic when desired panic pods / ready pods reaches this ratio."""
        return self.panic_threshold_percentage / 100.0

    # -- validation ---------------------------------------------------------------------

    def _validate(self) -> None:
        def fail(field: str, message: str) -> None:
            raise ConfigError(_FIELD_KEYS.get(field, field), message)

        if self.pod_autoscaler_class != KPA_CLASS:
            fail("pod_autoscaler_class", f"only {KPA_CLASS!r} is supported")
        if self.metric not in (CONCURRENCY, RPS):
            fail("metric", f"must be 'concurrency' or 'rps', got {self.metric!r}")
        if not 0.0 < self.target_utilization <= 1.0:
            fail("target_utilization", "must be in (0, 100]")
        if self.container_concurrency_target_default * self.target_utilization < TARGET_MIN:
            fail("container_concurrency_target_default", f"times the target percentage must be at least {TARGET_MIN}")
        if self.requests_per_second_target_default < TARGET_MIN:
            fail("requests_per_second_target_default", f"must be at least {TARGET_MIN}")
        if self.target is not None and self.target < TARGET_MIN:
            fail("target", f"must be at least {TARGET_MIN}, got {self.target}")
        if self.container_concurrency < 0:
            fail("container_concurrency", "must be 0 (unlimited) or positive")
        if self.target_burst_capacity < 0 and self.target_burst_capacity != -1:
            fail("target_burst_capacity", "must be non-negative or -1 (unlimited)")
        if not WINDOW_MIN <= self.stable_window <= WINDOW_MAX:
            fail("stable_window", f"must be in [{WINDOW_MIN:g}s, {WINDOW_MAX:g}s], got {self.stable_window:g}s")
        if self.stable_window != round(self.stable_window):
            fail("stable_window", "must be a whole number of seconds")
        low, high = PANIC_WINDOW_PERCENTAGE_RANGE
        if not low <= self.panic_window_percentage <= high:
            fail("panic_window_percentage", f"must be in [{low:g}, {high:g}]")
        low, high = PANIC_THRESHOLD_PERCENTAGE_RANGE
        if not low <= self.panic_threshold_percentage <= high:
            fail("panic_threshold_percentage", f"must be in [{low:g}, {high:g}]")
        if self.max_scale_up_rate <= 1.0:
            fail("max_scale_up_rate", "must be greater than 1")
        if self.max_scale_down_rate <= 1.0:
            fail("max_scale_down_rate", "must be greater than 1")
        if self.scale_to_zero_grace_period <= 0:
            fail("scale_to_zero_grace_period", "must be positive")
        if self.scale_to_zero_pod_retention_period < 0:
            fail("scale_to_zero_pod_retention_period", "must not be negative")
        if not 0 <= self.scale_down_delay <= WINDOW_MAX:
            fail("scale_down_delay", f"must be in [0s, {WINDOW_MAX:g}s]")
        if self.min_scale < 0:
            fail("min_scale", "must not be negative")
        if self.max_scale_limit < 0:
            fail("max_scale_limit", "must not be negative")
        if self.max_scale < 0:
            fail("max_scale", "must be 0 (unbounded) or positive")
        if self.max_scale_limit > 0 and not 1 <= self.max_scale <= self.max_scale_limit:
            fail("max_scale", f"must be in [1, max-scale-limit ({self.max_scale_limit})]")
        if self.max_scale > 0 and self.min_scale > self.max_scale:
            fail("min_scale", f"{self.min_scale} is above max-scale {self.max_scale}")
        if self.initial_scale < 0 or (self.initial_scale == 0 and not self.allow_zero_initial_scale):
            fail("initial_scale", "must be at least 1 (0 only with allow-zero-initial-scale)")
        if self.activation_scale < 1:
            fail("activation_scale", "must be at least 1")
        if self.max_scale > 0 and self.activation_scale > self.max_scale:
            fail("activation_scale", f"{self.activation_scale} is above max-scale {self.max_scale}")
        if self.activator_capacity < 1:
            fail("activator_capacity", "must be at least 1")
        if self.tick_interval <= 0:
            fail("tick_interval", "must be positive")


def _field_of(key: str) -> str | None:
    if key in _CONFIG_KEYS:
        return _CONFIG_KEYS[key][0]
    if key == ANNOTATION_PREFIX + "target":
        return "target"
    return None
