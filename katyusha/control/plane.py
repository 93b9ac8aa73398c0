"""The fleet's control plane: the membership writer, its reconciler, the autoscaler, the actuator, the admin API.

One :class:`ControlPlane` steers one fleet, whoever runs its processes:
``katyusha fleet up`` runs it inside the runner (the runner supervises the
processes and tells the plane where they are), ``katyusha control`` runs it
on its own, attached to processes given by address (a compose fleet, one
container per process). Either way it is the one writer of katyusha's pod
sets (katyusha.control.membership):

- **the reconciler**, every ``runner.poll_interval_s`` (or at once after
  :meth:`ControlPlane.poke`), reads every pod's state and keeps every
  replica's set equal to the pods that serve (warm or active, not on their
  way out, both processes up) and, with the autoscaler, that the actuator
  counts as serving;
- **the autoscaler** (with ``autoscaler.enabled``) decides pod counts per
  service and the actuator wakes and retires slots through the writer;
- **the admin API** (katyusha.control.api) takes katyusha's demand notices,
  serves status, and moves pods for ``katyusha fleet pod`` through the writer.

The admin port is bound at construction, so katyusha can be started with
its ``demand-url`` before the plane starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from katyusha.control.actuator import FleetActuator
from katyusha.control.adminclient import AdminClient, AdminError, state_of
from katyusha.control.autoscaler import AutoscalerLoop
from katyusha.control.fleetview import collect
from katyusha.control.membership import MembershipWriter, MoveFailed, PodAddress
from katyusha.control.metrics import ColdStarts, exposition, make_registry
from katyusha.control.processes import Processes
from katyusha.control.server import EmbeddedServer
from katyusha.core.actuation import in_service
from katyusha.core.podstate import SERVING, PodState

log = logging.getLogger("katyusha.control")

DRAIN_S = 60.0


class UnknownPod(LookupError):
    """No pod of that name in the fleet."""


class ControlPlane:
    """One fleet's control plane; see the module doc. ``start()``, ``stop()``, ``poke()``."""

    def __init__(self, spec, processes: Processes, *, host: str = "127.0.0.1", admin_port: int | None = None,
                 log_line: Callable[[str], None] | None = None, token: str | None = None):
        """``spec`` is the fleet's FleetSpec; ``token`` the fleet's admin token (its API asks it of
        mutating requests, its client sends it to every process). Binds the admin port now (raises
        OSError when it cannot listen)."""
        from katyusha.control.api import build_app

        self.spec = spec
        self.processes = processes
        self.log_line = log_line or log.info
        self.token = token
        self.client = AdminClient(token=token)
        self.writer = MembershipWriter(self.client, processes.balancers, drain_s=DRAIN_S)
        self.cold = ColdStarts()
        self.actuator: FleetActuator | None = None
        if spec.autoscaler.enabled:
            self.actuator = FleetActuator(
                self.writer, processes.pods, nodes=spec.node_list, services={s.name: s for s in spec.services},
                units=spec.units(), retire_to=spec.autoscaler.retire_to, basis=spec.placement_basis,
                cold=self.cold, drain_timeout_s=DRAIN_S,
            )  # fmt: skip
        self.autoscaler: AutoscalerLoop | None = None
        self.registry = None
        self.states: dict[str, tuple[PodState | None, PodState | None]] = {}
        # The last state each pod was seen in (kept while its sim-backend is down), to restart it there.
        self.seen: dict[str, PodState] = {}
        self.wanted: set[str] = set()
        self.started = False
        self.server = EmbeddedServer(build_app(self), host, spec.autoscaler.admin_port if admin_port is None
                                     else admin_port)  # fmt: skip
        self._stop = asyncio.Event()
        self._poke = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    @property
    def admin_url(self) -> str:
        return self.server.url

    @property
    def demand_url(self) -> str:
        """Where katyusha POSTs its demand notices (``katyusha serve --demand-url``)."""
        return self.server.url + "/demand"

    # -- life ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Read every pod, adopt the serving ones, bring the sets in step once, then run the loops and the API."""
        pods, since, wanted = await self._observe()
        if self.actuator is not None:
            # Before the first sync: with the autoscaler, only pods it counts as serving stay in the sets.
            self.actuator.adopt({name: state for name, (state, _) in self.states.items()})
            wanted = {name for name in wanted if self.actuator.may_serve(name)}
            self.autoscaler = AutoscalerLoop(
                self.spec.scaling(), self.actuator,
                demand_urls=lambda: [ref.admin + "/demand" for ref in self.processes.balancers()],
                stats_urls=self._stats_urls, fetch_json=self.client.get_json, cold=self.cold,
            )  # fmt: skip
            self.registry = make_registry(self.autoscaler.status, self.cold)
        self.wanted = wanted
        await self.writer.sync(pods, wanted, since)
        await self.server.start()
        self.started = True
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._reconcile_loop()))
        if self.autoscaler is not None:
            self._tasks.append(loop.create_task(self.autoscaler.run(self._stop)))

    async def stop(self) -> None:
        """Stop deciding and moving (pods stay where they are), close the admin port."""
        self._stop.set()
        self._poke.set()
        for task in self._tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 5.0)
        if self.actuator is not None:
            await self.actuator.close()
        await self.writer.close()
        await self.server.stop()
        await self.client.aclose()

    def poke(self) -> None:
        """Reconcile now rather than at the next interval (a process came or went)."""
        self._poke.set()

    # -- the reconciler ------------------------------------------------------------------

    async def _reconcile_loop(self) -> None:
        interval = self.spec.runner.poll_interval_s
        while not self._stop.is_set():
            self._poke.clear()
            try:
                await self.reconcile()
            except Exception:  # the loop must outlive one bad round
                log.exception("reconcile failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), interval)

    async def reconcile(self) -> None:
        """One round: read every pod, then make every replica's set hold the pods that should serve."""
        pods, since, wanted = await self._observe()
        if self.actuator is not None:
            wanted = {name for name in wanted if self.actuator.may_serve(name)}
        self.wanted = wanted
        await self.writer.sync(pods, wanted, since)

    async def _observe(self) -> tuple[list[PodAddress], dict[str, int], set[str]]:
        since = self.writer.changes()  # before the reads: a move ending meanwhile makes them stale
        pods = self.processes.pods()
        looks = await asyncio.gather(*(self._look(pod) for pod in pods))
        wanted = set()
        for pod, (state, heading, up) in zip(pods, looks, strict=True):
            self.states[pod.name] = (state, heading)
            if state is not None:
                self.seen[pod.name] = state
            if up and in_service(state, heading):
                wanted.add(pod.name)
        return pods, since, wanted

    async def _look(self, pod: PodAddress) -> tuple[PodState | None, PodState | None, bool]:
        up = self.processes.pod_up(pod.name)
        if up is False or pod.sim_admin is None:
            return None, None, False
        try:
            state, heading = state_of(await self.client.pod_state(pod.sim_admin))
        except AdminError:
            return None, None, False
        if up is None:
            up = pod.nonna_admin is not None and await self.client.health(pod.nonna_admin) is not None
        return state, heading, up

    def pending(self) -> list[str]:
        """Pods that should serve but are not yet in every replica's set."""
        replicas = len(self.processes.balancers())
        return [name for name in self.wanted if self.writer.count_in_sets(name) < replicas]

    def _stats_urls(self, service) -> list[str]:
        assert self.actuator is not None
        return [f"{pod.nonna_admin}/stats" for pod in self.actuator.slots(service)
                if pod.nonna_admin and self.states.get(pod.name, (None, None))[0] in SERVING]  # fmt: skip

    # -- what the admin API does ---------------------------------------------------------

    async def move_pod(self, name: str, target: PodState, timeout_s: float) -> tuple[PodState, list[str]]:
        """Move pod ``name`` to ``target`` through the writer (drain first when it leaves service).

        Returns the state reached and the steps taken, as lines. Raises
        UnknownPod, or MoveFailed (its message, and ``lines`` set on it).
        """
        pod = next((p for p in self.processes.pods() if p.name == name), None)
        if pod is None:
            known = ", ".join(p.name for p in self.processes.pods())
            raise UnknownPod(f"no pod {name!r} in this fleet (pods: {known})")
        lines: list[str] = []
        follow = None
        if self.actuator is not None:
            actuator = self.actuator

            def follow(state: PodState | None) -> None:
                actuator.follow(name, state)

        try:
            final = await self.writer.move(pod, target, timeout_s=timeout_s, say=lines.append, then=follow)
        except MoveFailed as exc:
            exc.lines = lines  # type: ignore[attr-defined]
            raise
        self.poke()
        return final, lines

    async def fleet_view(self) -> dict:
        """The fleet's live view (katyusha.control.fleetview) with the autoscaler's and placement's."""
        document = {**self.processes.document(), "topology": self.spec.topology(),
                    "control": {"admin": self.admin_url}}  # fmt: skip
        live = await collect(self.client, document)
        if self.autoscaler is not None:
            live["autoscaler"] = {"up": True, **self.autoscaler.status()}
        if self.actuator is not None:
            live["placement"] = self.actuator.status()
        return live

    def metrics(self) -> bytes:
        return exposition(self.registry) if self.registry is not None else b""
