"""Service-time distributions, written as short specs: ``const:100ms``, ``exp:20ms``,
``lognormal:20ms,0.5``, ``uniform:10ms,30ms``.

Durations take a unit: ``us``, ``ms`` or ``s`` (``1.5s``, ``250us``). Every
distribution is described by its mean, which is what capacity math needs:

- ``const:D``: always D.
- ``exp:M``: exponential with mean M.
- ``lognormal:M,SIGMA``: log-normal with **mean** M (not median) and shape
  SIGMA, the standard deviation of the underlying normal; its median is
  ``M * exp(-SIGMA**2 / 2)``.
- ``uniform:A,B``: uniform between A and B (A <= B).

Sans-IO: sampling draws from the ``random.Random`` the caller passes.
"""

from __future__ import annotations

import functools
import math
import random
import re
from dataclasses import dataclass

from katyusha.core.errors import ConfigError

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|ms|s)\s*$")


def parse_duration(text: str, *, key: str = "duration") -> float:
    """Seconds in ``text`` (``20ms``, ``1.5s``, ``250us``); raises ConfigError naming ``key``."""
    match = _DURATION_RE.match(text)
    if not match:
        raise ConfigError(key, f"bad duration {text!r} (expected a number and a unit: us, ms or s)")
    return float(match[1]) * _UNITS[match[2]]


def _fmt(seconds: float) -> str:
    return f"{seconds * 1e3:g}ms"


class Distribution:
    """A service-time distribution in seconds."""

    kind = "distribution"

    @property
    def mean(self) -> float:
        """The expected value, in seconds."""
        raise NotImplementedError

    def sample(self, rng: random.Random) -> float:
        """One draw, in seconds (never negative)."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.spec

    @property
    def spec(self) -> str:
        """A spec that :func:`parse_service_time` turns back into an equal distribution."""
        raise NotImplementedError


@dataclass(frozen=True)
class Const(Distribution):
    value: float
    kind = "const"

    @property
    def mean(self) -> float:
        return self.value

    def sample(self, rng: random.Random) -> float:
        return self.value

    @property
    def spec(self) -> str:
        return f"const:{_fmt(self.value)}"


@dataclass(frozen=True)
class Exponential(Distribution):
    mean_s: float
    kind = "exp"

    @property
    def mean(self) -> float:
        return self.mean_s

    def sample(self, rng: random.Random) -> float:
        return rng.expovariate(1.0 / self.mean_s)

    @property
    def spec(self) -> str:
        return f"exp:{_fmt(self.mean_s)}"


@dataclass(frozen=True)
class LogNormal(Distribution):
    mean_s: float
    sigma: float
    kind = "lognormal"

    @functools.cached_property
    def mu(self) -> float:
        # E[X] = exp(mu + sigma^2 / 2), solved for mu so that the spec gives the mean
        # (worked out once: sample() reads it per request).
        return math.log(self.mean_s) - self.sigma**2 / 2

    @property
    def median(self) -> float:
        return math.exp(self.mu)

    @property
    def mean(self) -> float:
        return self.mean_s

    def sample(self, rng: random.Random) -> float:
        return rng.lognormvariate(self.mu, self.sigma)

    @property
    def spec(self) -> str:
        return f"lognormal:{_fmt(self.mean_s)},{self.sigma:g}"


@dataclass(frozen=True)
class Uniform(Distribution):
    low: float
    high: float
    kind = "uniform"

    @property
    def mean(self) -> float:
        return (self.low + self.high) / 2

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    @property
    def spec(self) -> str:
        return f"uniform:{_fmt(self.low)},{_fmt(self.high)}"


_ARITY = {"const": 1, "exp": 1, "lognormal": 2, "uniform": 2}


def parse_service_time(spec: str, *, key: str = "service-time") -> Distribution:
    """The distribution ``spec`` describes; raises ConfigError naming ``key`` and the spec."""
    if not isinstance(spec, str):
        raise ConfigError(key, f"service time must be a string like 'exp:20ms', got {spec!r}")
    kind, sep, rest = spec.strip().partition(":")
    if not sep or kind not in _ARITY:
        raise ConfigError(
            key,
            f"bad service time {spec!r}: expected const:D, exp:MEAN, lognormal:MEAN,SIGMA "
            "or uniform:LOW,HIGH",
        )
    args = [a.strip() for a in rest.split(",")]
    if len(args) != _ARITY[kind]:
        raise ConfigError(key, f"bad service time {spec!r}: {kind} takes {_ARITY[kind]} argument(s)")

    def duration(text: str) -> float:
        try:
            return parse_duration(text, key=key)
        except ConfigError:
            raise ConfigError(
                key, f"bad service time {spec!r}: {text!r} is not a duration (e.g. 20ms, 1.5s, 250us)"
            ) from None

    if kind == "const":
        return Const(duration(args[0]))
    if kind == "uniform":
        low, high = duration(args[0]), duration(args[1])
        if low > high:
            raise ConfigError(key, f"bad service time {spec!r}: low {args[0]} is above high {args[1]}")
        return Uniform(low, high)
    mean = duration(args[0])
    if mean <= 0:
        raise ConfigError(key, f"bad service time {spec!r}: the mean must be above 0")
    if kind == "exp":
        return Exponential(mean)
    try:
        sigma = float(args[1])
    except ValueError:
        sigma = float("nan")
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ConfigError(key, f"bad service time {spec!r}: sigma {args[1]!r} must be a number >= 0")
    return LogNormal(mean, sigma)
