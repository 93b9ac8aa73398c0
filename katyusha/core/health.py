"""Pod health, sans-IO: which pods may be picked, which to probe, when ejected pods come back.

One :class:`PodHealth` per service decides, from what requests and probes
tell it, whether each pod *serves* (is in the ready set). A pod is in one of
three states:

``ok``
    serving.
``probing``
    out of the ready set and probed every ``down_interval`` until ``rise``
    probes in a row succeed (after a success the next probe comes
    ``fast_interval`` later, HAProxy's ``fastinter``: a pod that answers
    again is confirmed in a tenth of a second, not another
    ``down_interval``). A pod goes here at once when a try provably reached
    nothing (its connection was refused, or its nonna says its app is
    unreachable: ``unreachable``), when ``fall`` active checks in a row failed
    (``check``), or when its ejection time is over (``outlier``).
``ejected``
    out of the ready set until ``ejected_until`` (outlier detection, as
    Envoy's): ``consecutive`` failures in a row (5xx answers, broken or timed
    out tries) eject it for ``base_ejection`` times its ejection level (one
    more each time, less one per ``base_ejection`` it stayed healthy since its
    last return), never longer than ``max_ejection``. At most
    ``max_ejection_percent`` of the service's pods are out for this reason at
    once (at least one, never the last serving pod).

A probe is nonna's admin ``/healthz`` for a pod with an admin URL, else
``GET`` of the pod's ``path`` (``health-path``) when set, else a TCP connect.
Pods with no admin URL are also checked every ``interval`` while they serve,
when ``path`` is set (HAProxy's ``check inter rise fall``); pods behind nonna
need no such checks, since every answer of theirs says how their app is.

The driver asks :meth:`PodHealth.due` for the probes to run at ``now``,
reports each with :meth:`PodHealth.probe_result`, and keeps one timer at
:meth:`PodHealth.next_deadline`. Every change of state is recorded as a
:class:`HealthEvent` for logs and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass

from katyusha.core.errors import ConfigError

OK = "ok"
PROBING = "probing"
EJECTED = "ejected"

# Why a pod is out of the ready set.
UNREACHABLE = "unreachable"
CHECK = "check"
OUTLIER = "outlier"

# Nonna-Error values of nonna's own overload answers: the app was never asked,
# so they say nothing about the pod's health.
OVERLOAD_ERRORS = frozenset({"queue-full", "queue-timeout"})


@dataclass(frozen=True)
class HealthSettings:
    """The health settings of one service; each field's key is named in its error.

    Raises ConfigError naming the key for a bad value.
    """

    path: str | None = None
    interval: float = 2.0
    down_interval: float = 0.5
    fast_interval: float = 0.1
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    consecutive: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: float = 10.0

    def __post_init__(self) -> None:
        if self.path is not None and not self.path.startswith("/"):
            raise ConfigError("health-path", f"must start with '/', got {self.path!r}")
        for key, value in (("health-interval", self.interval), ("health-down-interval", self.down_interval),
                           ("health-fast-interval", self.fast_interval),
                           ("health-timeout", self.timeout), ("outlier-base-ejection-time", self.base_ejection),
                           ("outlier-max-ejection-time", self.max_ejection)):
            if not _positive(value):
                raise ConfigError(key, f"must be a positive number of seconds, got {value!r}")
        for key, value in (("health-rise", self.rise), ("health-fall", self.fall)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(key, f"must be a whole number >= 1, got {value!r}")
        if not isinstance(self.consecutive, int) or isinstance(self.consecutive, bool) or self.consecutive < 0:
            raise ConfigError("outlier-consecutive-failures", f"must be a whole number >= 0, got {self.consecutive!r}")
        percent = self.max_ejection_percent
        if not isinstance(percent, int | float) or isinstance(percent, bool) or not 0 <= percent <= 100:
            raise ConfigError("max-ejection-percent", f"must be a number from 0 to 100, got {percent!r}")


@dataclass(frozen=True)
class Probe:
    """One probe to run: ``kind`` is ``admin`` (GET ``url``, nonna's /healthz), ``http`` (GET ``url``)
    or ``tcp`` (connect to ``url``'s host and port); 2xx (or a connection) is success."""

    pod: str
    kind: str
    url: str


@dataclass(frozen=True)
class HealthEvent:
    """A change of a pod's health: ``what`` is ``down``, ``ejected``, ``back`` or ``not-ejected``
    (the share of ejected pods was full); ``until`` is the end of an ejection."""

    at: float
    pod: str
    what: str
    why: str
    until: float | None = None


class PodState:
    """What :class:`PodHealth` knows of one pod."""

    __slots__ = ("name", "address", "probe", "active", "state", "cause", "consecutive", "ejections", "level",
                 "ejected_until", "returned_at", "next_probe", "in_flight", "successes", "check_failures",
                 "downs", "returns")

    def __init__(self, name: str, address: tuple[str, str | None], probe: Probe, active: bool):
        self.name = name
        self.address = address
        self.probe = probe
        self.active = active
        self.state = OK
        self.cause: str | None = None
        self.consecutive = 0
        self.ejections = 0
        self.level = 0
        self.ejected_until = 0.0
        self.returned_at = 0.0
        self.next_probe: float | None = None
        self.in_flight = False
        self.successes = 0
        self.check_failures = 0
        self.downs = 0
        self.returns = 0


class PodHealth:
    """Every pod's health in one service; see the module docstring.

    Pods are keyed by any hashable the caller chooses (the service balancer
    uses its ``PodEntry`` objects, so a pod that left and came back starts
    afresh). Calls about an unknown key do nothing.
    """

    __slots__ = ("settings", "_pods", "events", "version")

    def __init__(self, settings: HealthSettings | None = None):
        self.settings = settings or HealthSettings()
        self._pods: dict[Hashable, PodState] = {}
        self.events: list[HealthEvent] = []
        # Bumped whenever a pod's state (and so perhaps the next deadline) changes:
        # a driver re-arms its timer only then.
        self.version = 0

    # -- membership --------------------------------------------------------

    def add(self, key: Hashable, name: str, url: str, admin: str | None, now: float = 0.0) -> PodState:
        """A pod joined (or its address changed): it serves, with no history."""
        probe = self._probe_of(name, url, admin)
        pod = self._pods[key] = PodState(name, (url, admin), probe, active=probe.kind == "http")
        self.version += 1
        if pod.active:
            pod.next_probe = now + self.settings.interval
        return pod

    def readdress(self, key: Hashable, name: str, url: str, admin: str | None, now: float = 0.0) -> bool:
        """A known pod's URLs were given again; a new address starts afresh. Returns True when it did."""
        pod = self._pods.get(key)
        if pod is None or pod.address != (url, admin):
            self.add(key, name, url, admin, now)
            return True
        return False

    def remove(self, key: Hashable) -> None:
        self._pods.pop(key, None)

    def _probe_of(self, name: str, url: str, admin: str | None) -> Probe:
        if admin:
            return Probe(name, "admin", admin.rstrip("/") + "/healthz")
        if self.settings.path is not None:
            return Probe(name, "http", url.rstrip("/") + self.settings.path)
        return Probe(name, "tcp", url)

    # -- views ---------------------------------------------------------------

    def serving(self, key: Hashable) -> bool:
        """False while the pod is out of the ready set (unknown pods serve)."""
        pod = self._pods.get(key)
        return pod is None or pod.state is OK

    def get(self, key: Hashable) -> PodState | None:
        return self._pods.get(key)

    def row(self, key: Hashable, now: float) -> dict:
        """The pod's health as the admin ``/pods`` row shows it."""
        pod = self._pods.get(key)
        if pod is None:
            return {"health": OK, "health_cause": None, "ejected_until_s": None, "ejections": 0,
                    "consecutive_failures": 0}
        until = pod.ejected_until - now if pod.state is EJECTED else None
        return {
            "health": pod.state,
            "health_cause": pod.cause,
            "ejected_until_s": None if until is None else round(max(until, 0.0), 3),
            "ejections": pod.ejections,
            "consecutive_failures": pod.consecutive,
            "health_probe": pod.probe.kind,
            "downs": pod.downs,
            "returns": pod.returns,
        }

    # -- what requests tell ------------------------------------------------

    def response(self, key: Hashable, now: float, status: int, pod_error: str | None = None) -> bool:
        """A response head came back. A 5xx is a failure of the pod unless nonna says it is its own
        overload answer (``pod_error`` in :data:`OVERLOAD_ERRORS`). True when the pod stopped serving."""
        pod = self._pods.get(key)
        if pod is None:
            return False
        if status < 500 or pod_error in OVERLOAD_ERRORS:
            pod.consecutive = 0
            return False
        return self._failed(pod, now, f"answered {status}")

    def failure(self, key: Hashable, now: float, sent_nothing: bool) -> bool:
        """A try got no response. ``sent_nothing``: the pod provably never got it (refused, or its
        app unreachable): the pod leaves the ready set at once. True when the pod stopped serving."""
        pod = self._pods.get(key)
        if pod is None:
            return False
        if not sent_nothing:
            return self._failed(pod, now, "no response")
        pod.consecutive += 1
        if pod.state is not OK:
            return False
        self._take_out(pod, now, UNREACHABLE, "unreachable (nothing was sent)")
        return True

    def _failed(self, pod: PodState, now: float, why: str) -> bool:
        pod.consecutive += 1
        needed = self.settings.consecutive
        if not needed or pod.consecutive < needed or pod.state is not OK:
            return False
        if not self._may_eject(pod):
            if pod.consecutive == needed:
                self.events.append(HealthEvent(now, pod.name, "not-ejected",
                                               f"{pod.consecutive} failures in a row ({why}); "
                                               f"max-ejection-percent reached or last serving pod"))
            return False
        settings = self.settings
        # One level less per base ejection time spent healthy since the last return.
        if pod.level and pod.returns:
            pod.level = max(0, pod.level - int((now - pod.returned_at) // settings.base_ejection))
        pod.level += 1
        pod.ejections += 1
        self.version += 1
        pod.state = EJECTED
        pod.cause = OUTLIER
        pod.ejected_until = now + min(settings.base_ejection * pod.level, settings.max_ejection)
        pod.next_probe = None
        pod.successes = 0
        self.events.append(HealthEvent(now, pod.name, "ejected", f"{pod.consecutive} failures in a row ({why})",
                                       pod.ejected_until))
        return True

    def _may_eject(self, pod: PodState) -> bool:
        total = len(self._pods)
        serving = sum(1 for other in self._pods.values() if other.state is OK)
        if serving <= 1:
            return False
        percent = self.settings.max_ejection_percent
        if not percent:
            return False
        allowed = max(1, math.floor(total * percent / 100.0))
        out = sum(1 for other in self._pods.values() if other.state is not OK and other.cause == OUTLIER)
        return out < allowed

    def _take_out(self, pod: PodState, now: float, cause: str, why: str) -> None:
        self.version += 1
        pod.state = PROBING
        pod.cause = cause
        pod.successes = 0
        pod.downs += 1
        pod.next_probe = now + self.settings.down_interval
        self.events.append(HealthEvent(now, pod.name, "down", why))

    # -- probes ------------------------------------------------------------

    def due(self, now: float) -> list[tuple[Hashable, Probe]]:
        """The probes to start at ``now`` (each marked in flight until its result); ejections that
        ended turn into probing first."""
        out = []
        for key, pod in self._pods.items():
            if pod.state is EJECTED:
                if pod.ejected_until > now:
                    continue
                pod.state = PROBING
                pod.next_probe = now
            if pod.in_flight or pod.next_probe is None or pod.next_probe > now:
                continue
            pod.in_flight = True
            out.append((key, pod.probe))
        return out

    def probe_result(self, key: Hashable, now: float, ok: bool, why: str = "") -> bool:
        """A probe of the pod answered (``ok``) or not. True when the pod's serving changed."""
        pod = self._pods.get(key)
        if pod is None:
            return False
        pod.in_flight = False
        settings = self.settings
        if pod.state is OK:
            if not pod.active:
                pod.next_probe = None
                return False
            pod.next_probe = now + settings.interval
            if ok:
                pod.check_failures = 0
                return False
            pod.check_failures += 1
            if pod.check_failures < settings.fall:
                pod.next_probe = now + settings.fast_interval  # falling: confirm it soon
                return False
            self._take_out(pod, now, CHECK, f"{pod.check_failures} health checks failed in a row"
                           + (f" ({why})" if why else ""))
            return True
        if pod.state is EJECTED:
            return False
        if not ok:
            pod.successes = 0
            pod.next_probe = now + settings.down_interval
            return False
        pod.successes += 1
        if pod.successes < settings.rise:
            pod.next_probe = now + settings.fast_interval  # rising: confirm it soon
            return False
        self.version += 1
        pod.state = OK
        pod.consecutive = 0
        pod.check_failures = 0
        pod.returned_at = now
        pod.returns += 1
        self.events.append(HealthEvent(now, pod.name, "back", f"{pod.successes} probes succeeded"
                                       + (f" after {pod.cause}" if pod.cause else "")))
        pod.cause = None
        pod.next_probe = now + settings.interval if pod.active else None
        return True

    def next_deadline(self) -> float | None:
        """When :meth:`due` next has something to do (a probe, an ejection's end), or None."""
        best: float | None = None
        for pod in self._pods.values():
            if pod.state is EJECTED:
                at = pod.ejected_until
            elif pod.in_flight or pod.next_probe is None:
                continue
            else:
                at = pod.next_probe
            if best is None or at < best:
                best = at
        return best

    def take_events(self) -> list[HealthEvent]:
        """The events since the last call, oldest first."""
        events, self.events = self.events, []
        return events


def _positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0
