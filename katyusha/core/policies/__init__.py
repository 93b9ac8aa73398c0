"""Load-balancing policies (fukabunsan), by name. See docs/policies.md for when to use which.

``make_policy(name, rng=..., table=...)`` builds one; ``POLICY_NAMES`` lists
the names it accepts. ``jsq-piggyback`` is the default: docs/policies.md has
the benchmark figures it was chosen on.

A policy is a selector (selectors.py: lowest, power of two choices, Prequal's
hot-cold) over a load metric (metrics.py: in flight, estimated load,
expected delay, peak-EWMA cost); index.py keeps "lowest" from scanning every
pod of a large fleet.
"""

from __future__ import annotations

import random

from katyusha.core.errors import ConfigError
from katyusha.core.loadtable import LoadTable
from katyusha.core.policies.base import Policy
from katyusha.core.policies.peak_ewma import PeakEwma
from katyusha.core.policies.piggyback import JoinShortestQueue, ShortestExpectedDelay
from katyusha.core.policies.prequal import Prequal
from katyusha.core.policies.simple import LeastInFlight, PowerOfTwo, RandomChoice, RoundRobin

_POLICIES: dict[str, type[Policy]] = {
    cls.name: cls
    for cls in (
        RoundRobin,
        RandomChoice,
        LeastInFlight,
        PowerOfTwo,
        JoinShortestQueue,
        ShortestExpectedDelay,
        PeakEwma,
        Prequal,
    )
}

POLICY_NAMES: tuple[str, ...] = tuple(_POLICIES)
DEFAULT_POLICY = "jsq-piggyback"


def make_policy(name: str, *, rng: random.Random, table: LoadTable, **options) -> Policy:
    """Build the policy called ``name`` (case and ``_``/``-`` insensitive) over ``table``.

    ``options`` go to the policy's constructor (e.g. ``decay_s`` for
    peak-ewma). Raises ConfigError("policy", ...) naming the allowed policies
    for an unknown name, and ConfigError for an option the policy does not take
    or a bad option value.
    """
    key = name.strip().lower().replace("_", "-") if isinstance(name, str) else name
    cls = _POLICIES.get(key)
    if cls is None:
        raise ConfigError(
            "policy", f"unknown policy {name!r}; allowed: {', '.join(POLICY_NAMES)}"
        )
    try:
        return cls(rng=rng, table=table, **options)
    except TypeError as exc:
        raise ConfigError("policy", f"{key} does not take option(s) {sorted(options)}: {exc}") from None


__all__ = [
    "DEFAULT_POLICY",
    "JoinShortestQueue",
    "LeastInFlight",
    "POLICY_NAMES",
    "PeakEwma",
    "Policy",
    "PowerOfTwo",
    "Prequal",
    "RandomChoice",
    "RoundRobin",
    "ShortestExpectedDelay",
    "make_policy",
]
