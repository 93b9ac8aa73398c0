"""A scripted, periodic slowdown: ``period=10s,duration=3s,factor=0.25[,offset=7s]``.

The pod runs at ``factor`` times its speed during ``duration`` seconds of
every ``period``. The slow window starts ``offset`` seconds into each period,
counted from process start; by default ``offset = period - duration``, so a
pod starts at full speed and its first slow window ends one period in.
"""

from __future__ import annotations

from dataclasses import dataclass

from katyusha.core.distributions import parse_duration
from katyusha.core.errors import ConfigError


@dataclass(frozen=True)
class SlowSchedule:
    period_s: float
    duration_s: float
    factor: float
    offset_s: float

    def factor_at(self, elapsed_s: float) -> float:
        """The speed multiplier ``elapsed_s`` seconds after the schedule's origin."""
        phase = (elapsed_s - self.offset_s) % self.period_s
        return self.factor if phase < self.duration_s else 1.0

    @property
    def spec(self) -> str:
        return (
            f"period={self.period_s:g}s,duration={self.duration_s:g}s,"
            f"factor={self.factor:g},offset={self.offset_s:g}s"
        )

    def to_dict(self) -> dict:
        return {
            "period_s": self.period_s,
            "duration_s": self.duration_s,
            "factor": self.factor,
            "offset_s": self.offset_s,
        }


def parse_slow_schedule(text: str, *, key: str = "slow-schedule") -> SlowSchedule:
    """The schedule ``text`` describes; raises ConfigError naming ``key`` and what is wrong."""
    fields: dict[str, str] = {}
    for part in str(text).split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or not name:
            raise ConfigError(key, f"bad slow schedule {text!r}: {part!r} is not name=value")
        if name not in ("period", "duration", "factor", "offset"):
            raise ConfigError(
                key, f"bad slow schedule {text!r}: unknown field {name!r} (period, duration, factor, offset)"
            )
        fields[name] = value.strip()
    missing = [n for n in ("period", "duration", "factor") if n not in fields]
    if missing:
        raise ConfigError(key, f"bad slow schedule {text!r}: missing {', '.join(missing)}")
    period = parse_duration(fields["period"], key=key)
    duration = parse_duration(fields["duration"], key=key)
    try:
        factor = float(fields["factor"])
    except ValueError:
        raise ConfigError(key, f"bad slow schedule {text!r}: factor {fields['factor']!r} is not a number") from None
    if period <= 0:
        raise ConfigError(key, f"bad slow schedule {text!r}: period must be above 0")
    if not 0 <= duration <= period:
        raise ConfigError(key, f"bad slow schedule {text!r}: duration must be between 0 and the period")
    if not factor > 0:
        raise ConfigError(key, f"bad slow schedule {text!r}: factor must be above 0")
    offset = parse_duration(fields["offset"], key=key) if "offset" in fields else period - duration
    return SlowSchedule(period, duration, factor, offset)
