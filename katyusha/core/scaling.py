"""The autoscaler per service, sans-IO: demand documents in, ``ScaleTo`` commands out.

katyusha reports demand per service: its admin ``GET /demand`` answers the
default service's ``{"waiting", "in_flight", "ready_pods"}`` plus, when it
runs several services, ``"services": {name: {...same...}}``; its demand push
(``demand-url``) carries one service's fields and ``"service": name``.
:func:`parse_demand` reads both; :func:`merge_replicas` adds up what several
replicas report (waiting and in-flight requests summed, ready pods the most
any replica has).

:class:`ScaleController` keeps one KPA :class:`~katyusha.core.autoscaler.Autoscaler`
per autoscaled service. The key of a service is its name in katyusha, or
``None`` for katyusha's default service (the one its flags define; its
demand is the top level of ``GET /demand``). :meth:`ScaleController.tick`
records a round of observations and returns a :class:`ScaleTo` for every
service whose decided pod count differs from the count asked for now;
:meth:`ScaleController.poke` does the same at once for demand that arrives
while a service has no pod (scale from zero). Time comes in as ``now``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from katyusha.core.autoscaler import Autoscaler, Decision
from katyusha.core.autoscaler_config import KPAConfig
from katyusha.core.errors import BadInput

# katyusha's name for the service its flags define; its demand is GET /demand's top level.
DEFAULT_NAME = "default"
_FIELDS = ("waiting", "in_flight", "ready_pods")

ServiceKey = str | None


@dataclass(frozen=True)
class Demand:
    """One service's demand as a balancer reports it."""

    waiting: int = 0
    in_flight: int = 0
    ready_pods: int = 0

    @property
    def concurrency(self) -> int:
        """Requests inside the service: waiting for a pod or in flight to one."""
        return self.waiting + self.in_flight

    def to_json(self) -> dict:
        return {"waiting": self.waiting, "in_flight": self.in_flight, "ready_pods": self.ready_pods}


def _fields(document: Any, where: str) -> Demand:
    if not isinstance(document, dict):
        raise BadInput(f'{where} must be a JSON object {{"waiting", "in_flight", "ready_pods"}}')
    values = []
    for name in _FIELDS:
        value = document.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadInput(f'{where} field "{name}" must be an integer >= 0, got {value!r}')
        values.append(value)
    return Demand(*values)


def parse_demand(document: Any) -> dict[ServiceKey, Demand]:
    """Demand per service from a ``GET /demand`` answer or a demand push. Raises BadInput naming the field.

    The top level is the default service (key None), or the service a push
    names in ``"service"``; ``"services"`` adds one entry per named service.
    """
    top = _fields(document, "demand")
    service = document.get("service")
    if service is not None and (not isinstance(service, str) or not service):
        raise BadInput(f'demand field "service" must be a service name, got {service!r}')
    out: dict[ServiceKey, Demand] = {None if service in (None, DEFAULT_NAME) else service: top}
    services = document.get("services")
    if services is not None:
        if not isinstance(services, dict):
            raise BadInput('demand field "services" must map service names to demand objects')
        for name, entry in services.items():
            demand = _fields(entry, f'demand "services.{name}"')
            if name != DEFAULT_NAME:
                out[name] = demand
    return out


def merge_replicas(reports: Iterable[Mapping[ServiceKey, Demand]]) -> dict[ServiceKey, Demand]:
    """Several balancer replicas' demand as one: waiting and in flight summed, ready pods the most any has."""
    out: dict[ServiceKey, Demand] = {}
    for report in reports:
        for key, demand in report.items():
            seen = out.get(key, Demand())
            out[key] = Demand(seen.waiting + demand.waiting, seen.in_flight + demand.in_flight,
                              max(seen.ready_pods, demand.ready_pods))  # fmt: skip
    return out


@dataclass(frozen=True)
class ScaleTo:
    """Ask for ``count`` pods of ``service`` (None: katyusha's default service), as ``decision`` settled."""

    service: ServiceKey
    count: int
    decision: Decision


def service_label(key: ServiceKey) -> str:
    """The name a service key is shown under (``default`` for katyusha's default service)."""
    return DEFAULT_NAME if key is None else key


class ScaleController:
    """One KPA autoscaler per service; decisions become :class:`ScaleTo` commands."""

    def __init__(self, configs: Mapping[ServiceKey, KPAConfig], now: float,
                 ready: Mapping[ServiceKey, int] | None = None):
        """Start deciding at ``now``; ``ready`` holds the pods each service has already (a restart)."""
        ready = ready or {}
        self.configs = dict(configs)
        self.units = {key: Autoscaler(config, now, ready_pods=ready.get(key, 0)) for key, config in configs.items()}
        self.last: dict[ServiceKey, Decision] = {}

    def tick(self, now: float, demand: Mapping[ServiceKey, Demand], rps: Mapping[ServiceKey, float],
             current: Mapping[ServiceKey, int]) -> list[ScaleTo]:
        """Record this round's demand and requests per second, decide every service.

        ``current`` is the count asked for now per service (waking and
        serving). A service missing from ``demand`` records zero concurrency
        and is taken to have ``current`` ready pods. Returns a command for
        each service whose decision differs from ``current``.
        """
        commands = []
        for key, unit in self.units.items():
            seen = demand.get(key)
            unit.record(now, float(seen.concurrency) if seen is not None else 0.0, float(rps.get(key, 0.0)))
            ready = seen.ready_pods if seen is not None else current.get(key, 0)
            decision = self.last[key] = unit.decide(now, ready)
            if decision.desired != current.get(key, 0):
                commands.append(ScaleTo(key, decision.desired, decision))
        return commands

    def poke(self, now: float, key: ServiceKey, demand: Demand, current: int) -> ScaleTo | None:
        """Demand reported at once (requests wait with no pod ready): decide ``key`` now.

        The waiting requests count as at least one, so the decision asks for
        at least activation-scale pods. Raises KeyError for a service that is
        not autoscaled.
        """
        unit = self.units[key]
        decision = unit.poke(now, waiting=float(max(1, demand.concurrency)), ready_pods=demand.ready_pods)
        self.last[key] = decision
        return ScaleTo(key, decision.desired, decision) if decision.desired != current else None

