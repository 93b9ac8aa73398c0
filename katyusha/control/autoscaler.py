"""The live autoscaler: every tick, read demand and rates, let the core decide, and carry out its commands.

Each tick (``tick-interval``, 2 s by default) the loop reads every katyusha
replica's admin ``GET /demand`` (per service: see katyusha.core.scaling) and
each serving pod's nonna ``GET /stats`` for requests per second, hands them
to :class:`~katyusha.core.scaling.ScaleController`, and carries out each
:class:`~katyusha.core.scaling.ScaleTo` it returns with
``actuator.scale_to(service, count)``. How pods are started and stopped is
the actuator's business.

katyusha POSTs one service's demand to its ``demand-url`` when requests wait
with no ready pod; :meth:`AutoscalerLoop.on_demand` (the control plane's
``POST /demand``) pokes the core so scaling from zero starts at once instead
of at the next tick. As a second path that needs no setting on katyusha's
side, while a service has no pod asked for, the loop also reads ``GET
/demand`` every ``zero_poll_s`` (100 ms), so a request waiting at zero is
seen within that time even when the POST is lost or was never configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from katyusha.control.metrics import ColdStarts
from katyusha.core.autoscaler import Decision
from katyusha.core.autoscaler_config import KPAConfig
from katyusha.core.scaling import (
    Demand,
    ScaleController,
    ScaleTo,
    ServiceKey,
    merge_replicas,
    parse_demand,
    service_label,
)

log = logging.getLogger("katyusha.autoscaler")

FetchJSON = Callable[[str], Awaitable[Any]]


class Actuator(Protocol):
    """What moves pods (katyusha.control.actuator.FleetActuator)."""

    def current(self, service: ServiceKey) -> int:
        """The pod count of ``service`` last asked for (serving or starting)."""
        ...

    async def scale_to(self, service: ServiceKey, count: int) -> None:
        """Start or stop pods until ``count`` of ``service`` are asked for."""
        ...


def stats_rps(document: Any) -> float:
    """Requests per second from a nonna ``/stats`` document (top level or its ``last`` period); 0 if absent."""
    if isinstance(document, dict):
        for candidate in (document, document.get("last_period"), document.get("last"), document.get("period")):
            if isinstance(candidate, dict):
                value = candidate.get("requests_per_second")
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    return max(0.0, float(value))
    return 0.0


class UnknownService(LookupError):
    """A demand report names a service this control plane does not autoscale."""


class AutoscalerLoop:
    """The services' autoscalers run live: a tick loop, a demand callback, and a status view."""

    def __init__(
        self,
        configs: Mapping[ServiceKey, KPAConfig],
        actuator: Actuator,
        *,
        demand_urls: Callable[[], Iterable[str]] | None = None,
        stats_urls: Callable[[ServiceKey], Iterable[str]] | None = None,
        fetch_json: FetchJSON,
        clock: Callable[[], float] = time.monotonic,
        zero_poll_s: float = 0.1,
        cold: ColdStarts | None = None,
    ):
        """``configs`` holds each autoscaled service's settings (key None: katyusha's default service).

        ``demand_urls`` lists every replica's ``.../demand`` (read each time;
        without it only POSTed demand is seen); ``stats_urls(service)`` the
        nonna ``/stats`` URLs of a service's serving pods.
        """
        if not configs:
            raise ValueError("the autoscaler needs at least one service")
        self.configs = dict(configs)
        self.actuator = actuator
        self.demand_urls = demand_urls
        self.stats_urls = stats_urls
        self.fetch_json = fetch_json
        self.clock = clock
        self.zero_poll_s = zero_poll_s
        self.cold = cold if cold is not None else ColdStarts()
        self.core = ScaleController(configs, clock(), ready={key: actuator.current(key) for key in configs})
        self.errors = 0
        self.demand: dict[ServiceKey, Demand] = {}
        self.rps: dict[ServiceKey, float] = {}
        self._lock = asyncio.Lock()

    @property
    def tick_interval(self) -> float:
        return min(config.tick_interval for config in self.configs.values())

    def desired(self, service: ServiceKey) -> int:
        """The latest decided pod count of ``service`` (the actuator's count before the first decision)."""
        decision = self.core.last.get(service)
        return decision.desired if decision is not None else self.actuator.current(service)

    def current(self) -> dict[ServiceKey, int]:
        return {key: self.actuator.current(key) for key in self.configs}

    async def tick(self) -> list[ScaleTo] | None:
        """Read demand and rates, decide every service, actuate. Returns None when demand could not be read."""
        if self.demand_urls is not None:
            try:
                self.demand = await self.read_demand()
            except Exception as exc:
                # One failed read must not stop scaling; the core keeps its history.
                self.errors += 1
                log.warning("autoscaler: cannot read demand: %s", exc)
                return None
        self.rps = await self._read_rps()
        async with self._lock:
            commands = self.core.tick(self.clock(), self.demand, self.rps, self.current())
            await self._apply(commands)
        return commands

    async def read_demand(self) -> dict[ServiceKey, Demand]:
        """Demand per service over every replica that answers.

        Raises the first error when no replica answers, BadInput for a bad document.
        """
        urls = list(self.demand_urls()) if self.demand_urls is not None else []
        if not urls:
            raise LookupError("no katyusha replica to read demand from")
        results = await asyncio.gather(*(self.fetch_json(url) for url in urls), return_exceptions=True)
        documents = [r for r in results if not isinstance(r, BaseException)]
        if not documents:
            raise results[0]
        return merge_replicas(parse_demand(doc) for doc in documents)

    async def on_demand(self, document: Any) -> ScaleTo | Decision:
        """katyusha's immediate demand notice: poke the core for its service and actuate at once.

        Returns the command carried out, or the decision when the count
        stays. Raises BadInput for a bad document, UnknownService for a
        service not autoscaled here.
        """
        reports = parse_demand(document)
        if len(reports) != 1:
            raise UnknownService("a demand notice carries one service's demand")
        [(key, demand)] = reports.items()
        if key not in self.configs:
            raise UnknownService(f"no autoscaled service {service_label(key)!r} (autoscaled: "
                                 f"{', '.join(service_label(k) for k in self.configs)})")  # fmt: skip
        async with self._lock:
            command = self.core.poke(self.clock(), key, demand, self.actuator.current(key))
            if command is not None:
                await self._apply([command])
        return command if command is not None else self.core.last[key]

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ``tick-interval`` until ``stop`` is set; watch for demand at zero meanwhile."""
        watcher = asyncio.get_running_loop().create_task(self._watch_zero(stop))
        try:
            await self._tick_loop(stop)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            started = self.clock()
            try:
                await self.tick()
            except Exception:  # pragma: no cover - a bug must not end the control loop silently
                self.errors += 1
                log.exception("autoscaler tick failed")
            remaining = max(0.0, self.tick_interval - (self.clock() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=remaining)

    async def _watch_zero(self, stop: asyncio.Event) -> None:
        """While a service has no pod asked for, read demand every ``zero_poll_s``; act on waiting requests."""
        if self.demand_urls is None or self.zero_poll_s <= 0:
            return
        while not stop.is_set():
            idle = [key for key in self.configs if self.actuator.current(key) == 0]
            if idle:
                try:
                    demand = await self.read_demand()
                    for key in idle:
                        seen = demand.get(key)
                        if seen is not None and seen.waiting > 0 and self.actuator.current(key) == 0:
                            await self.on_demand({**seen.to_json(), **({"service": key} if key else {})})
                except Exception as exc:  # the tick loop counts and logs read errors
                    log.debug("autoscaler: zero watch: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.zero_poll_s)

    def status(self) -> dict:
        """The latest decisions as JSON: the first service's at the top level, every one under ``services``."""
        views = {service_label(key): self._service_status(key) for key in self.configs}
        first = next(iter(views.values()))
        cold = self.cold
        return {
            **first,
            "services": views,
            "errors": self.errors,
            "cold_starts": {"total": cold.total, "failed": cold.failed, "last_s": cold.last_s,
                            "mean_s": cold.sum_s / cold.total if cold.total else None},
        }  # fmt: skip

    def _service_status(self, key: ServiceKey) -> dict:
        decision = self.core.last.get(key)
        demand = self.demand.get(key, Demand())
        counts = getattr(self.actuator, "counts", None)
        return {
            "desired": self.desired(key),
            "current": self.actuator.current(key),
            "ready_pods": demand.ready_pods,
            "pods": counts(key) if counts is not None else None,
            "observed": {"concurrency": float(demand.concurrency), "rps": self.rps.get(key, 0.0),
                         "waiting": demand.waiting, "in_flight": demand.in_flight},
            "decision": None if decision is None else {
                "desired": decision.desired, "panic": decision.panic, "stable_value": decision.stable_value,
                "panic_value": decision.panic_value, "target": decision.target,
                "excess_burst_capacity": decision.excess_burst_capacity,
                "activator_in_path": decision.activator_in_path, "reason": decision.reason,
            },
        }  # fmt: skip

    # -- internals ----------------------------------------------------------------------

    async def _read_rps(self) -> dict[ServiceKey, float]:
        if self.stats_urls is None:
            return {}
        out = {}
        for key in self.configs:
            urls = list(self.stats_urls(key))
            results = await asyncio.gather(*(self.fetch_json(url) for url in urls), return_exceptions=True)
            # A pod that does not answer contributes nothing this tick; it may be starting or gone.
            out[key] = sum(stats_rps(r) for r in results if not isinstance(r, BaseException))
        return out

    async def _apply(self, commands: list[ScaleTo]) -> None:
        for command in commands:
            log.info("autoscaler: %s: scale %d -> %d (%s)", service_label(command.service),
                     self.actuator.current(command.service), command.count, command.decision.reason)  # fmt: skip
            await self.actuator.scale_to(command.service, command.count)
