"""The fleet actuator: carries out the autoscaler's pod counts as wakes and retirements of pod slots.

Each pod of the fleet is a slot in one phase (katyusha.core.actuation: free,
waking, serving, retiring). ``scale_to(service, n)`` reads every slot's state
(and, for measured-use placement, its monitor), asks the core which slots to
wake or retire (katyusha.core.fleetplan: min-cost-flow placement, retirement
by dominant share) and starts each move in the background, so the control
loop never waits for a cold start. The moves themselves go through the
membership writer, which takes the core's steps: a woken pod walks to warm,
then joins every replica's set; a retired pod is drained out of every set,
then walked down to ``retire-to``.

Services: the autoscaler decides per katyusha service (a key: a name, or
None for katyusha's default one). ``units`` maps each key to the fleet
services whose slots it wakes, tried in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from katyusha.control.adminclient import AdminClient, AdminError, state_of
from katyusha.control.membership import MembershipWriter, MoveFailed, PodAddress
from katyusha.control.metrics import ColdStarts
from katyusha.control.settings import check_retire_to
from katyusha.core.actuation import WAKE_TARGET, Event, Phase, SlotPhases
from katyusha.core.fleetplan import ServiceSpec, SlotView, WakePlan, choose_retirements, plan_wakes
from katyusha.core.placement import FitBasis, FlowScheduler, Node
from katyusha.core.podstate import PodState

log = logging.getLogger("katyusha.autoscaler")

ServiceKey = str | None


class FleetActuator:
    """Moves the fleet's slots so that ``current(service)`` pods of each service are serving or on their way."""

    def __init__(
        self,
        writer: MembershipWriter,
        pods: Callable[[], Sequence[PodAddress]],
        *,
        nodes: Sequence[Node],
        services: Mapping[str, ServiceSpec],
        units: Mapping[ServiceKey, Sequence[str]],
        retire_to: PodState = PodState.WARMDISK,
        basis: FitBasis = FitBasis.REQUESTS,
        scheduler: FlowScheduler | None = None,
        cold: ColdStarts | None = None,
        wake_timeout_s: float = 300.0,
        drain_timeout_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``pods`` lists the fleet's slots in fleet order (read each time); ``units`` as in the module doc."""
        self.writer = writer
        self.client: AdminClient = writer.client
        self.pods = pods
        self.nodes = tuple(nodes)
        self.services = dict(services)
        self.units = {key: tuple(value) for key, value in units.items()}
        self.retire_to = check_retire_to(retire_to)
        self.basis = basis
        self.scheduler = scheduler if scheduler is not None else FlowScheduler()
        self.cold = cold if cold is not None else ColdStarts()
        self.wake_timeout_s = wake_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.clock = clock
        self.phases = SlotPhases()
        self.last_wake: dict | None = None
        self.last_retire: dict | None = None
        self._last_complaint: tuple | None = None
        # One choice at a time: two decisions never pick the same slot.
        self._choosing = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    # -- the autoscaler's interface -------------------------------------------------------

    def slots(self, service: ServiceKey) -> list[PodAddress]:
        """The slots of one autoscaled service, in fleet order."""
        fleet_services = set(self.units.get(service, ()))
        return [pod for pod in self.pods() if pod.service in fleet_services]

    def current(self, service: ServiceKey) -> int:
        """Pods of ``service`` asked for: waking or serving (retiring ones are on their way out)."""
        return self.phases.asked_for(pod.name for pod in self.slots(service))

    async def scale_to(self, service: ServiceKey, count: int) -> None:
        """Start wakes or retirements so ``count`` pods of ``service`` are asked for; returns without waiting.

        When fewer slots can be placed than needed, as many as can are woken
        and the next decision asks again. Only serving pods are retired: a
        pod in its cold start finishes it first.
        """
        async with self._choosing:
            difference = count - self.current(service)
            if difference > 0:
                plan = await self._plan_wakes(service, difference)
                for wake in plan.wakes:
                    self.phases.apply(wake.pod, Event.WAKE)
                    self._spawn(self._wake(self._pod(wake.pod)))
            elif difference < 0:
                serving = [pod for pod in self.slots(service) if self.phases.of(pod.name) is Phase.SERVING]
                views = await self._views(serving, busy=True)
                retires = choose_retirements(self.nodes, self.services, views, -difference)
                self.last_retire = {"asked": -difference, "retired": [r.to_json() for r in retires]}
                for retire in retires:
                    self.phases.apply(retire.pod, Event.RETIRE)
                    self._spawn(self._retire(self._pod(retire.pod)))

    # -- views ---------------------------------------------------------------------------

    def may_serve(self, name: str) -> bool:
        """Whether pod ``name`` belongs in katyusha's sets (the reconciler must not add the others)."""
        return self.phases.of(name) is Phase.SERVING

    def counts(self, service: ServiceKey | None = None, *, every: bool = False) -> dict:
        """How many slots of ``service`` (of every service with ``every``) are in each phase, and ``slots``."""
        pods = self.pods() if every else self.slots(service)
        return self.phases.counts(pod.name for pod in pods)

    def adopt(self, states: Mapping[str, PodState | None]) -> None:
        """Take the pods found warm or active as serving (a fleet started with some pods up)."""
        for pod in self.pods():
            if self.phases.of(pod.name) is Phase.FREE:
                self.phases.settle(pod.name, states.get(pod.name))

    def follow(self, name: str, state: PodState | None) -> None:
        """An operator moved pod ``name`` (outside the autoscaler): its phase follows the state it reached."""
        if state is not None:
            self.phases.settle(name, state)

    def status(self) -> dict:
        """Nodes, services and the last wake and retirement, as JSON for ``GET /placement``."""
        return {
            "basis": self.basis.value,
            "nodes": [
                {"name": n.name, "cpu_m": n.cpu, "ram_mib": n.ram, "max_pods": n.max_pods,
                 "labels": dict(n.labels), "taints": [str(t) for t in n.taints]}
                for n in self.nodes
            ],  # fmt: skip
            "services": [s.to_json() for s in self.services.values()],
            "last_wake": self.last_wake,
            "last_retire": self.last_retire,
        }

    async def close(self) -> None:
        """Stop every wake and retirement in progress (pods stay where they are)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- deciding ------------------------------------------------------------------------

    async def _plan_wakes(self, service: ServiceKey, count: int) -> WakePlan:
        pods = self.pods()
        busy = [pod for pod in pods if self.phases.of(pod.name) is not Phase.FREE]
        free = [pod for pod in pods if self.phases.of(pod.name) is Phase.FREE]
        views = {v.name: v for v in [*await self._views(busy, busy=True), *await self._views(free, busy=False)]}
        ordered = [views[pod.name] for pod in pods]
        plan = plan_wakes(self.nodes, self.services, self.units.get(service, ()), ordered, count,
                          scheduler=self.scheduler, basis=self.basis)  # fmt: skip
        self.last_wake = plan.to_json()
        complaint = (plan.unplaced, tuple(sorted(plan.reasons.items()))) if plan.unplaced else None
        if complaint is not None and complaint != self._last_complaint:
            why = "; ".join(f"{name}: {reason}" for name, reason in plan.reasons.items())
            log.warning("placement: %d of %d pod(s) not placed (%s)", plan.unplaced, count, why)
        self._last_complaint = complaint
        return plan

    async def _views(self, pods: Sequence[PodAddress], *, busy: bool) -> list[SlotView]:
        """Each slot with its state read now (None when its sim-backend does not answer)."""
        states = await asyncio.gather(*(self._read(pod, "/state") for pod in pods))
        measured: list = [None] * len(pods)
        if busy and self.basis is FitBasis.MEASURED:
            measured = await asyncio.gather(*(self._read(pod, "/monitor") for pod in pods))
        out = []
        for pod, document, monitor in zip(pods, states, measured, strict=True):
            state = state_of(document)[0] if isinstance(document, dict) else None
            cpu = ram = None
            if isinstance(monitor, dict) and isinstance(monitor.get("current"), dict):
                current = monitor["current"]
                cpu = _whole(current.get("cpu_cores"), 1000)
                ram = _whole(current.get("ram_mb"), 1)
            out.append(SlotView(pod.name, pod.node, pod.service, state, busy, cpu, ram))
        return out

    async def _read(self, pod: PodAddress, path: str) -> dict | None:
        if pod.sim_admin is None:
            return None
        try:
            document = await self.client.get_json(pod.sim_admin + path)
        except AdminError:
            return None
        return document if isinstance(document, dict) else None

    # -- moving one slot -----------------------------------------------------------------

    def _pod(self, name: str) -> PodAddress:
        return next(pod for pod in self.pods() if pod.name == name)

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _wake(self, pod: PodAddress) -> None:
        started = self.clock()

        def settle(state: PodState | None) -> None:
            # Inside the writer's hold: the reconciler sees the new phase before it looks again.
            if state is None:
                self.cold.failed += 1
                self.phases.apply(pod.name, Event.FAILED)
            else:
                self.cold.observe(self.clock() - started)
                self.phases.apply(pod.name, Event.DONE)

        try:
            await self.writer.move(pod, WAKE_TARGET, timeout_s=self.wake_timeout_s, then=settle)
        except MoveFailed as exc:
            log.warning("autoscaler: could not wake %s: %s", pod.name, exc)
            return
        log.info("autoscaler: %s serving after %.2fs", pod.name, self.clock() - started)

    async def _retire(self, pod: PodAddress) -> None:
        def settle(state: PodState | None) -> None:
            self.phases.apply(pod.name, Event.DONE if state is not None else Event.FAILED)

        try:
            await self.writer.move(pod, self.retire_to, timeout_s=self.drain_timeout_s * 2, then=settle)
        except MoveFailed as exc:
            log.warning("autoscaler: retiring %s: %s", pod.name, exc)


def _whole(value, scale: int) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return round(value * scale)
    return None
