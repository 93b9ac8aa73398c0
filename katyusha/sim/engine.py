"""The simulation: katyusha's core objects driven by simulated time.

Every decision is taken by the objects the live system runs (each imported
from ``katyusha.core``): per replica and service a
:class:`~katyusha.core.service.ServiceBalancer` (L1 queue, load table,
policy, response pool, per-pod capacity); per pod a
:class:`~katyusha.core.sidecar.Sidecar` (nonna's L2 queue and the report it
piggybacks) and a :class:`~katyusha.core.lifecycle.Lifecycle` (the pod state
machine and its timed walk); per autoscaled service a KPA
:class:`~katyusha.core.scaling.ScaleController`; wakes placed by the
scenario's scheduler (:class:`~katyusha.core.placement.FlowScheduler` or
:class:`~katyusha.core.placement.PodAtATimeScheduler`), slots reused by
:func:`~katyusha.core.fleetplan.map_to_slots`, retirements chosen by
:func:`~katyusha.core.fleetplan.choose_retirements`, each move taking the
steps of :class:`~katyusha.core.actuation.PodMove` (walk then join; drain
then walk down) with phases from :class:`~katyusha.core.actuation.SlotPhases`.

This module only moves time and messages between them: a request's life is
arrival at a replica, dispatch, network latency to its pod, nonna's queue,
service, the response and its piggybacked report back. See docs/simulator.md.
"""

from __future__ import annotations

import gc
import math
import random
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from itertools import cycle
from operator import attrgetter
from pathlib import Path

from katyusha.core.actuation import (
    WAKE_TARGET,
    Drain,
    Event,
    Failed,
    Finished,
    Join,
    Look,
    Phase,
    PodMove,
    SlotPhases,
    WalkAnswer,
)
from katyusha.core.actuation import Walk as WalkCommand
from katyusha.core.autoscaler_config import RPS
from katyusha.core.errors import DeadlineExceeded, IllegalTransition, QueueFull
from katyusha.core.feedback import Feedback
from katyusha.core.fleetplan import ServiceSpec, SlotView, choose_retirements, map_to_slots
from katyusha.core.lifecycle import Lifecycle
from katyusha.core.membership import PodChange, PodSpec
from katyusha.core.placement import Cluster, FlowScheduler, Node, PodAtATimeScheduler, RunningPod
from katyusha.core.podstate import (
    ACTIVE,
    IMAGE_ON_DISK,
    NULL,
    SERVING,
    WARM,
    WARMDISK,
    PodCosts,
    PodState,
)
from katyusha.core.protocol import QUEUE_FULL, QUEUE_TIMEOUT
from katyusha.core.queue import ADMITTED
from katyusha.core.scaling import Demand, ScaleController, merge_replicas
from katyusha.core.service import ServiceBalancer
from katyusha.core.sidecar import Sidecar
from katyusha.sim.clock import Environment
from katyusha.sim.record import Recorder, latency_figures
from katyusha.sim.scenario import Scenario, Service
from sim_backend.monitor import Profile, modelled

WAKE_TIMEOUT_S = 300.0
DRAIN_TIMEOUT_S = 60.0
_NAME = attrgetter("name")
# Feedback(...) as its named tuple's own _make builds it, without __new__'s Python frame:
# every field given, the last (the state, which nonna's report leaves out) None.
_feedback = partial(tuple.__new__, Feedback)


class SimNode:
    """One machine: capacity, region, the images on its disk, its pods."""

    __slots__ = ("name", "group", "region", "cpu_m", "ram_mib", "max_pods", "static_images", "disk",
                 "registry_mbps", "speed", "pods", "_model", "serving", "in_flight", "delay_from", "delay_to")

    def __init__(self, name: str, group, ):
        self.name = name
        self.group = group.name
        self.region = group.region
        self.cpu_m = group.cpu_m
        self.ram_mib = group.ram_mib
        self.max_pods = group.max_pods
        self.static_images = frozenset(group.images)
        self.disk: Counter[str] = Counter()  # image -> pods here holding it on disk
        self.registry_mbps = group.registry_mbps
        self.speed = group.speed
        self.pods: list[SimPod] = []
        self._model: Node | None = None
        # For the node-use samples: pods warm or active here, and requests executing on them.
        self.serving = 0
        self.in_flight = 0
        # Seconds from each region to this node and back (Simulation.latency, looked up per request).
        self.delay_from: dict[str, float] = {}
        self.delay_to: dict[str, float] = {}

    def has_image(self, image: str) -> bool:
        return image in self.static_images or self.disk[image] > 0

    def model(self) -> Node:
        """The scheduler's view of this node (cached until its disk changes)."""
        if self._model is None:
            images = self.static_images | {image for image, count in self.disk.items() if count > 0}
            self._model = Node(self.name, self.cpu_m, self.ram_mib, max_pods=self.max_pods,
                               labels={"region": self.region, "group": self.group}, images=images)
        return self._model


class SimService:
    """One service's scenario entry, its pods, its random streams and its balancers across replicas."""

    def __init__(self, spec: Service, seed: int):
        self.spec = spec
        self.name = spec.name
        self.fleet = ServiceSpec(spec.name, spec.cpu_m, spec.ram_mib, spec.image)
        self.pods: list[SimPod] = []
        self.fronts: list[Front] = []
        self.arrival_rng = random.Random(f"{seed}:arrivals:{spec.name}")
        self.work_rng = random.Random(f"{seed}:work:{spec.name}")
        self.arrivals = 0
        self.trace_index = 0
        self.next_front: Iterator[Front] = iter(())  # the fronts in turn (Simulation sets it)
        self.created = 0
        self.autoscaled = False
        self.arriving = True
        # What each arrival reads of the frozen workload, read once: its peak rate, whether it is
        # Poisson (no thinning draw), how many requests it makes, and the work of each (a trace's
        # given list, or a draw from the service-time distribution with the work stream).
        workload = spec.workload
        self.peak_rate = workload.peak_rate
        self.poisson = workload.kind == "poisson"
        self.trace = workload.kind == "trace"
        self.last = math.inf if workload.requests is None else workload.requests
        self.works = workload.works
        self.draw_work = partial(spec.service_time.sample, self.work_rng)


class Front:
    """One katyusha replica's balancer of one service, and the L1 deadline timer the driver keeps for it."""

    __slots__ = ("replica", "region", "service", "balancer", "timer_at")

    def __init__(self, replica: int, region: str, service: SimService, balancer: ServiceBalancer):
        self.replica = replica
        self.region = region
        self.service = service
        self.balancer = balancer
        self.timer_at: float | None = None


class SimPod:
    """One pod: node, lifecycle, nonna's sidecar, and the seed's state API for scripted experiments."""

    __slots__ = ("sim", "name", "service", "node", "lifecycle", "sidecar", "spec", "running", "move", "drain_wait",
                 "speed", "timer_at", "last_state", "serving_since", "pod_seconds", "joined", "hook_at", "hop_in",
                 "hop_out")

    def __init__(self, sim: Simulation, name: str, service: SimService, node: SimNode, state: PodState):
        self.sim = sim
        self.name = name
        self.service = service
        self.node = node
        spec = service.spec
        self.lifecycle = Lifecycle(state, PodCosts(spec.image_size_mb, node.registry_mbps, spec.start_s))
        self.sidecar = Sidecar(concurrency=spec.container_concurrency, queue_depth=spec.queue_depth,
                               timeout_s=spec.timeout_s, now=sim.env.now)
        self.spec = PodSpec(name, f"sim://{name}", node.name, None, spec.container_concurrency)
        self.running = RunningPod(name, service.name, node.name, spec.cpu_m, spec.ram_mib)
        self.move: PodMove | None = None
        self.drain_wait = 0
        self.on_node(node)
        self.timer_at: float | None = None
        self.last_state = state
        self.serving_since: float | None = sim.env.now if state in SERVING else None
        self.pod_seconds = 0.0
        self.joined = False
        self.hook_at: float | None = None

    def on_node(self, node: SimNode) -> None:
        """What the pod's node decides (at creation and after a move): its speed, and the seconds
        from katyusha's replicas (all in one region) to the node and back."""
        spec = self.service.spec
        self.speed = node.speed * spec.speed.get(node.name, spec.speed.get(node.group, 1.0))
        region = self.sim.scenario.katyusha_region
        self.hop_in = node.delay_from[region]
        self.hop_out = node.delay_to[region]

    # What sim_backend.monitor.modelled reads.
    @property
    def machine(self):
        return self.lifecycle.machine

    @property
    def state(self) -> PodState:
        return self.lifecycle.machine.state

    def now(self) -> float:
        return self.sim.env.now

    # -- the seed's state API (one step of the transition table each) ---------------------------

    def to_null(self) -> None:
        self.sim.hook_step(self, NULL, None)

    def to_cold(self) -> None:
        self.sim.hook_step(self, PodState.COLD, None)

    def to_warmdisk(self, node: str | None = None) -> None:
        self.sim.hook_step(self, WARMDISK, node)

    def to_warm(self, node: str | None = None) -> None:
        self.sim.hook_step(self, WARM, node)

    def __repr__(self) -> str:
        return f"SimPod({self.name!r}, {self.state.value}, node={self.node.name!r})"


class Request:
    """One request on its way: where it is, and t1 (arrival at katyusha) to t4 (end of service).

    Its tickets hold it as their payload, and it holds none of them (the L2 ticket is its end
    of service's argument): the only reference cycle, through the open try's ``handle`` and its
    ticket, is cut when it ends. Slots, each set before it is read: ``feedback``, ``status`` and
    ``error`` by the response, the rest here. (Defaults as class attributes would spare the
    stores, but CPython 3.11 then leaves every load of those names unspecialised: docs/simulator.md,
    "Scale".)"""

    __slots__ = ("front", "handle", "pod", "work", "t1", "t2", "t3", "t4", "feedback", "status", "error", "number")

    def __init__(self, front: Front, work: float, now: float, number: int):
        self.number = number
        self.front = front
        self.work = work
        self.t1 = now
        self.t2 = self.t3 = self.t4 = self.pod = self.handle = None


class Simulation:
    """One run of a scenario; :meth:`run` returns the summary. Hooks: :meth:`at`."""

    def __init__(self, scenario: Scenario, *, settings: dict | None = None, recorder: Recorder | None = None,
                 progress: bool = False):
        """``settings`` replaces the scenario's katyusha settings (comparison mode). Raises ConfigError."""
        self.scenario = scenario
        self.env = Environment()
        seed = scenario.seed
        self.recorder = recorder if recorder is not None else Recorder([s.name for s in scenario.services],
                                                                       keep=True)
        self.progress = progress
        self.nodes: list[SimNode] = [SimNode(name, group) for group in scenario.nodes for name in group.node_names()]
        self.node_by_name = {node.name: node for node in self.nodes}
        self.services: dict[str, SimService] = {s.name: SimService(s, seed) for s in scenario.services}
        self.fleet_specs = {name: svc.fleet for name, svc in self.services.items()}
        self.pods: dict[str, SimPod] = {}
        self.phases = SlotPhases()
        self.busy: dict[str, RunningPod] = {}
        self.open = 0
        self._draining = False  # set once arrivals are over: the request that ends last halts the clock
        self.latency = {}
        self._regions = {node.region for node in self.nodes} | {scenario.katyusha_region}
        # With a machine section, the four overheads are the idle ones stretched by the cores'
        # use every window (_machine_tick); without one they stay as they are.
        self._overheads(1.0)
        self.machine = scenario.machine
        self.machine_windows: list[tuple[float, float, float]] = []  # (second, busy cores, stretch)
        if scenario.scheduler == "flow":
            self.scheduler = FlowScheduler()
        else:
            self.scheduler = PodAtATimeScheduler(random.Random(f"{seed}:placement"))
        self.profile = Profile()
        # Pods with a timed step under way (an ordered set: samples add them up in a fixed order).
        self.transit: dict[SimPod, None] = {}
        self.serving = self.peak_serving = 0
        config = scenario.proxy_config(settings)
        for index in range(scenario.replicas):
            for name, svc in self.services.items():
                service_settings = scenario.service_settings(name, config=config)
                front = Front(index, scenario.katyusha_region, svc, None)  # type: ignore[arg-type]
                front.balancer = ServiceBalancer(service_settings, rng=random.Random(f"{seed}:policy:{index}:{name}"),
                                                 on_idle=self._idle)
                svc.fronts.append(front)
        for svc in self.services.values():
            svc.next_front = cycle(svc.fronts)
        self.policy = self.services[scenario.services[0].name].fronts[0].balancer.policy.name
        self.controller: ScaleController | None = None
        self.decisions = 0
        self._hooks: list[tuple[float, Callable]] = []
        # Set to a list to journal what the balancers were told and answered (tests replay it live).
        self.journal: list | None = None

    # -- set-up -------------------------------------------------------------------------------

    def at(self, when: float, hook: Callable[[Simulation], None]) -> None:
        """Call ``hook(simulation)`` at simulated second ``when`` (scripted experiments)."""
        self.env.at(when, lambda _: hook(self))

    def _start(self) -> None:
        scenario = self.scenario
        for svc in self.services.values():
            if svc.spec.pods:
                self._place_initial(svc, svc.spec.pods)
        configs = {}
        if scenario.autoscaler:
            for spec in scenario.services:
                if spec.autoscale:
                    configs[spec.name] = scenario.kpa(spec)
                    self.services[spec.name].autoscaled = True
        if configs:
            self.controller = ScaleController(configs, self.env.now,
                                              ready={name: self.current(self.services[name]) for name in configs})
            self.tick_interval = min(config.tick_interval for config in configs.values())
            self.env.at(self.env.now, self._tick)
        self.arriving = len(self.services)
        for svc in self.services.values():
            self._next_arrival(svc)
        self.env.at(self.env.now, self._sample)
        if self.machine is not None:
            self._seen = 0
            self._machine_tick()

    def _place_initial(self, svc: SimService, count: int) -> None:
        """``count`` pods of ``svc`` placed by the scheduler, warm and serving at the start."""
        for node in self._placements([(svc, count)])[svc.name]:
            pod = self._new_pod(svc, node, WARM)
            self.phases.settle(pod.name, WARM)
            self.busy[pod.name] = pod.running
            self._record_placement(svc, "start", pod, WARM)
            self._join(pod)

    # -- requests ---------------------------------------------------------------------------------

    def _next_arrival(self, svc: SimService) -> None:
        if not self._schedule_arrival(svc):
            svc.arriving = False
            self.arriving -= 1

    def _schedule_arrival(self, svc: SimService) -> bool:
        if svc.arrivals >= svc.last:
            return False
        horizon = self.scenario.duration
        if svc.trace:
            workload = svc.spec.workload
            if svc.trace_index >= len(workload.times):
                return False
            when = workload.times[svc.trace_index]
            svc.trace_index += 1
            if when > horizon:
                return False
            self.env.at(when, self._arrive, svc)
            return True
        peak = svc.peak_rate
        if peak <= 0:
            return False
        rng = svc.arrival_rng
        t = self.env.now
        while True:
            t += rng.expovariate(peak)
            if t > horizon:
                return False
            if svc.poisson or rng.random() * peak <= svc.spec.workload.rate_at(t):
                self.env.at(t, self._arrive, svc)
                return True

    def _arrive(self, svc: SimService) -> None:
        svc.arrivals += 1
        if not self._schedule_arrival(svc):  # _next_arrival
            svc.arriving = False
            self.arriving -= 1
        now = self.env.now
        front = next(svc.next_front)
        works = svc.works
        request = Request(front, works[svc.arrivals - 1] if works else svc.draw_work(), now, svc.arrivals)
        balancer = front.balancer
        try:
            # offer() then, when admitted, dispatch() (_dispatch's first step) in one call.
            ticket = balancer.offer_dispatch(now)
        except QueueFull:
            self._record(request, 503, "l1-full")
            return
        self.open += 1
        ticket.payload = request
        journal = self.journal
        if journal is not None:
            journal.append(("offer", request.number, now))
        if ticket.state is ADMITTED:
            self._sent(request, ticket.dispatch, now)
        else:
            self._arm(front)
            if balancer.needs_pods:
                self._poke(svc)

    def _dispatch(self, ticket) -> None:
        request: Request = ticket.payload
        front = request.front
        now = self.env.now
        self._sent(request, front.balancer.dispatch(ticket, now), now)

    def _sent(self, request: Request, handle, now: float) -> None:
        """The balancer sent ``request`` to a pod (``handle``): on the wire to it; or, ``handle``
        None, no pod was ready and the ticket waits again (the front's timer armed, pods asked for)."""
        if handle is None:
            front = request.front
            self._arm(front)
            self._poke(front.service)
            return
        request.handle = handle
        request.t2 = now
        pod = request.pod = self.pods[handle.entry.name]
        if self.journal is not None:
            self.journal.append(("pick", request.number, now, pod.name))
        delay = pod.hop_in
        if delay:
            self.env.at(now + delay, self._at_pod, request)
        else:
            self._at_pod(request)

    def _at_pod(self, request: Request) -> None:
        pod = request.pod
        now = self.env.now
        sidecar = pod.sidecar
        try:
            ticket = sidecar.offer(now, request)
        except QueueFull:
            self._respond(request, sidecar.report(None, now), 503, QUEUE_FULL)
            return
        if ticket.state == "admitted":
            self._serve(pod, ticket)
        else:
            self._arm_pod(pod)

    def _serve(self, pod: SimPod, ticket) -> None:
        request: Request = ticket.payload
        now = self.env.now
        try:
            pod.sidecar.start(ticket, now)
        except DeadlineExceeded:
            report = pod.sidecar.report(ticket, now)
            for woken in pod.sidecar.finish(ticket, now):
                self._serve(pod, woken)
            self._respond(request, report, 504, QUEUE_TIMEOUT)
            return
        request.t3 = now
        pod.lifecycle.request_started(now)
        pod.node.in_flight += 1
        self.env.at(now + (request.work / pod.speed + self.pod_overhead), self._finish, ticket)

    def _finish(self, ticket) -> None:
        """End of service of the request of ``ticket`` (its L2 ticket)."""
        request: Request = ticket.payload
        pod = request.pod
        now = self.env.now
        request.t4 = now
        pod.lifecycle.request_finished(now)
        pod.node.in_flight -= 1
        sidecar = pod.sidecar
        report = sidecar.head(ticket, now)
        if self.pod_release:
            # The response leaves now; the pod's slot is freed a little later (overhead.pod-release).
            self._respond(request, report, 200, None)
            self.env.at(now + self.pod_release, self._free_slot, (pod, ticket))
            return
        woken = sidecar.finish(ticket, now)
        self._respond(request, report, 200, None)
        for other in woken:
            self._serve(pod, other)

    def _free_slot(self, held: tuple) -> None:
        """``overhead.pod-release`` after a response left its pod: the slot is free for the next."""
        pod, ticket = held
        for other in pod.sidecar.finish(ticket, self.env.now):
            self._serve(pod, other)

    def _respond(self, request: Request, report, status: int, error: str | None) -> None:
        pod = request.pod
        request.feedback = _feedback((report.queue_length, report.in_flight, pod.sidecar.concurrency,
                                      report.queue_s * 1000.0, report.app_s * 1000.0, pod.name, pod.node.name, None))
        request.status = status
        request.error = error
        delay = pod.hop_out
        if delay:
            self.env.at(self.env.now + delay, self._at_katyusha, request)
        else:
            self._at_katyusha(request)

    def _at_katyusha(self, request: Request) -> None:
        now = self.env.now
        handle = request.handle
        feedback, status, error = request.feedback, request.status, request.error
        release = self.release
        if release:
            handle.on_head(now, feedback, status, error)
        else:
            admitted = request.front.balancer.complete(handle, now, feedback, status, error)
        if self.journal is not None:
            self.journal.append(("head", request.number, now, feedback, status, error))
        drop = None if status == 200 else ("l2-full" if error == QUEUE_FULL else "l2-timeout")
        # The request's latency ends here (_record's, for a request that reached a pod).
        front, pod = request.front, request.pod
        self.recorder.request(front.service.name, front.replica, pod.name, pod.node.name, request.t1, request.t2,
                              request.t3, request.t4, now, status, drop)
        request.handle = None
        if release:
            # Its pod's slot is held a little longer (overhead.release).
            self.env.at(now + release, self._release, handle)
            return
        self.open -= 1
        if not self.open and self._draining:
            self.env.halt()
        for ticket in admitted:
            self._dispatch(ticket)

    def _release(self, handle) -> None:
        """``overhead.release`` after a response reached katyusha: the request ends, its slot is free."""
        self.open -= 1
        if not self.open and self._draining:
            self.env.halt()
        for ticket in handle.done(self.env.now):
            self._dispatch(ticket)

    def _record(self, request: Request, status: int, drop: str | None) -> None:
        pod = request.pod
        self.recorder.request(request.front.service.name, request.front.replica,
                              pod.name if pod is not None else None, pod.node.name if pod is not None else None,
                              request.t1, request.t2, request.t3, request.t4, self.env.now, status, drop)
        # The request has ended: drop the cycle through its try (the handle holds its ticket,
        # whose payload it is), so that it is freed at once rather than left to the collector.
        request.handle = None

    # -- timers: L1 and L2 deadlines ---------------------------------------------------------------

    def _arm(self, front: Front) -> None:
        deadline = front.balancer.next_deadline()
        if deadline is not None and (front.timer_at is None or deadline < front.timer_at):
            front.timer_at = deadline
            self.env.at(deadline, self._expire, front)

    def _expire(self, front: Front) -> None:
        now = self.env.now
        if front.timer_at is None or front.timer_at > now:
            return
        front.timer_at = None
        for ticket, error in front.balancer.expire(now):
            request: Request = ticket.payload
            self.open -= 1
            if not self.open and self._draining:
                self.env.halt()
            status = getattr(error, "status_hint", 503)
            self._record(request, status, "no-pod" if status == 503 else "l1-timeout")
            for admitted in front.balancer.end(ticket, now):
                self._dispatch(admitted)
        self._arm(front)

    def _arm_pod(self, pod: SimPod) -> None:
        deadline = pod.sidecar.next_deadline()
        if deadline is not None and (pod.timer_at is None or deadline < pod.timer_at):
            pod.timer_at = deadline
            self.env.at(deadline, self._expire_pod, pod)

    def _expire_pod(self, pod: SimPod) -> None:
        now = self.env.now
        if pod.timer_at is None or pod.timer_at > now:
            return
        pod.timer_at = None
        for ticket in pod.sidecar.expire(now):
            self._respond(ticket.payload, pod.sidecar.report(ticket, now), 504, QUEUE_TIMEOUT)
        self._arm_pod(pod)

    # -- the autoscaler ------------------------------------------------------------------------------

    def current(self, svc: SimService) -> int:
        """Pods of ``svc`` asked for: waking or serving (as the live actuator counts them)."""
        return self.phases.asked_for(map(_NAME, svc.pods))

    def _demand(self, svc: SimService) -> Demand:
        reports = [{svc.name: Demand(**front.balancer.demand())} for front in svc.fronts]
        return merge_replicas(reports)[svc.name]

    def _poke(self, svc: SimService) -> None:
        """katyusha's demand push while requests wait with no pod ready: decide at once."""
        if self.controller is None or not svc.autoscaled or self.current(svc) > 0:
            return
        command = self.controller.poke(self.env.now, svc.name, self._demand(svc), 0)
        self._record_decision(svc, 0)
        if command is not None:
            self.scale_to(svc, command.count)

    def _tick(self, _=None) -> None:
        now = self.env.now
        controller = self.controller
        demand, rps, current = {}, {}, {}
        for name in controller.units:
            svc = self.services[name]
            demand[name] = self._demand(svc)
            total = 0.0
            if controller.configs[name].metric == RPS:  # what the live loop reads from nonna's /stats
                for pod in svc.pods:
                    if pod.joined:
                        total += pod.sidecar.close_period(now).requests_per_second
            rps[name] = total
            current[name] = self.current(svc)
        commands = controller.tick(now, demand, rps, current)
        for name in controller.units:
            self._record_decision(self.services[name], current[name], demand[name].ready_pods)
        wakes = []
        for command in commands:
            svc = self.services[command.service]
            difference = command.count - current[command.service]
            if difference > 0:
                wakes.append((svc, difference))
            else:
                self.scale_to(svc, command.count, current[command.service])
        if wakes:
            # One min-cost flow over every service's pending pods of this tick (the batch).
            self._wake(wakes)
        if self._running():
            self.env.at(now + self.tick_interval, self._tick)

    def _record_decision(self, svc: SimService, actual: int, ready: int | None = None) -> None:
        decision = self.controller.last.get(svc.name)
        if decision is None:
            return
        self.decisions += 1
        if ready is None:
            ready = self._demand(svc).ready_pods
        self.recorder.row("decisions", (self.env.now, svc.name, decision.desired, actual, ready, decision.panic,
                                        float(decision.stable_value), float(decision.panic_value), decision.reason))

    def scale_to(self, svc: SimService, count: int, current: int | None = None) -> None:
        """Wake or retire pods so that ``count`` of ``svc`` are asked for (the live actuator's rule).

        ``current``: :meth:`current` of ``svc`` when the caller has it already."""
        difference = count - (self.current(svc) if current is None else current)
        if difference > 0:
            self._wake([(svc, difference)])
        elif difference < 0:
            serving = [pod for pod in svc.pods if self.phases.of(pod.name) is Phase.SERVING]
            views = [SlotView(pod.name, pod.node.name, svc.name, pod.state, busy=True) for pod in serving]
            nodes = sorted({pod.node.name for pod in serving})
            retires = choose_retirements([self.node_by_name[n].model() for n in nodes], self.fleet_specs, views,
                                         -difference)
            for retire in retires:
                pod = self.pods[retire.pod]
                self.phases.apply(pod.name, Event.RETIRE)
                self._record_placement(svc, "retire", pod, pod.state)
                pod.move = PodMove(pod.name, self.scenario.retire_to, self.env.now, timeout_s=DRAIN_TIMEOUT_S * 2)
                self._drive(pod)

    def _placements(self, wanted: list[tuple[SimService, int]]) -> dict[str, list[SimNode]]:
        """Nodes for ``count`` new pods of each service, by the scenario's scheduler in one batch."""
        cluster = Cluster(tuple(node.model() for node in self.nodes), tuple(self.busy.values()))
        placement = self.scheduler.schedule(cluster, [svc.fleet.pending(count) for svc, count in wanted])
        out: dict[str, list[SimNode]] = {svc.name: [] for svc, _ in wanted}
        for pending, node in placement.assignments.items():
            out[pending.rsplit("/", 1)[0]].append(self.node_by_name[node])
        return out

    def _wake(self, wanted: list[tuple[SimService, int]]) -> None:
        placed = self._placements(wanted)
        for svc, _ in wanted:
            nodes = placed[svc.name]
            if nodes:
                self._wake_on(svc, nodes)

    def _wake_on(self, svc: SimService, nodes: list[SimNode]) -> None:
        free = [SlotView(pod.name, pod.node.name, svc.name, pod.state) for pod in svc.pods
                if self.phases.of(pod.name) is Phase.FREE]
        assignments = {f"{svc.name}/pending-{i}": node.name for i, node in enumerate(nodes)}
        reused = [self.pods[name] for name in map_to_slots(assignments, free)]
        left = Counter(node.name for node in nodes)
        for pod in reused:
            left[pod.node.name] -= 1
        woken = list(reused)
        for node in nodes:
            if left[node.name] > 0:
                left[node.name] -= 1
                woken.append(self._new_pod(svc, node, WARMDISK if node.has_image(svc.spec.image) else NULL))
        for pod in woken:
            self.phases.apply(pod.name, Event.WAKE)
            self.busy[pod.name] = pod.running
            self._record_placement(svc, "wake", pod, pod.state)
            pod.move = PodMove(pod.name, WAKE_TARGET, self.env.now, timeout_s=WAKE_TIMEOUT_S)
            self._drive(pod)

    def _new_pod(self, svc: SimService, node: SimNode, state: PodState) -> SimPod:
        svc.created += 1
        pod = SimPod(self, f"{svc.name}-{svc.created}", svc, node, state)
        self.pods[pod.name] = pod
        svc.pods.append(pod)
        node.pods.append(pod)
        if state in SERVING:
            node.serving += 1
            self.serving += 1
            self.peak_serving = max(self.peak_serving, self.serving)
        if state in IMAGE_ON_DISK:
            self._disk(node, svc.spec.image, +1)
        self.recorder.row("pods", (self.env.now, pod.name, svc.name, node.name, "", state.value))
        return pod

    def _record_placement(self, svc: SimService, action: str, pod: SimPod, was: PodState) -> None:
        self.recorder.row("placements", (self.env.now, svc.name, action, pod.name, pod.node.name, was.value))

    # -- moving pods: the core's PodMove steps, carried out on simulated time --------------------------

    def _drive(self, pod: SimPod) -> None:
        move = pod.move
        if move is None:
            return
        now = self.env.now
        lifecycle = pod.lifecycle
        while True:
            command = move.next(now)
            if isinstance(command, Look):
                if command.at > now:
                    # Look when the running step ends rather than every poll (the same answer, fewer events).
                    deadline = lifecycle.next_deadline()
                    when = max(command.at, deadline) if deadline is not None else command.at
                    self.env.at(when, self._look, pod)
                    return
                self._observe(pod)
            elif isinstance(command, WalkCommand):
                detail = ""
                try:
                    lifecycle.walk(command.target, now)
                    answer = WalkAnswer.STARTED if lifecycle.moving(now) else WalkAnswer.DONE
                except IllegalTransition as exc:
                    busy = lifecycle.machine.state is ACTIVE or lifecycle.moving(now)
                    answer, detail = (WalkAnswer.BUSY if busy else WalkAnswer.REFUSED), str(exc)
                self._states(pod)
                move.walked(now, answer, detail)
            elif isinstance(command, Drain):
                if pod.drain_wait > 0:
                    return  # _idle resumes the move
                if self._leave(pod):
                    return
                move.done(now)
            elif isinstance(command, Join):
                self._join(pod)
                move.done(now)
            else:
                pod.move = None
                self._settle(pod, command)
                return

    def _observe(self, pod: SimPod) -> None:
        now = self.env.now
        lifecycle = pod.lifecycle
        lifecycle.advance(now)
        self._states(pod)
        pod.move.observed(now, lifecycle.machine.state, lifecycle.moving(now))

    def _look(self, pod: SimPod) -> None:
        if pod.move is not None:
            self._observe(pod)
            self._drive(pod)

    def _settle(self, pod: SimPod, command: Finished | Failed) -> None:
        failed = isinstance(command, Failed)
        phase = self.phases.apply(pod.name, Event.FAILED if failed else Event.DONE)
        if phase is Phase.FREE:
            self.busy.pop(pod.name, None)
        if failed:
            self._record_placement(pod.service, "failed", pod, pod.state)

    def _join(self, pod: SimPod) -> None:
        pod.joined = True
        change = PodChange(upsert=(pod.spec,), source="sim")
        if self.journal is not None:
            self.journal.append(("change", self.env.now, change))
        for front in pod.service.fronts:
            for ticket in front.balancer.change_pods(change, self.env.now).admitted:
                self._dispatch(ticket)

    def _leave(self, pod: SimPod) -> bool:
        """Take ``pod`` out of every replica's set; True when some replica still has requests on it."""
        pod.joined = False
        change = PodChange(remove=(pod.name,), source="sim")
        if self.journal is not None:
            self.journal.append(("change", self.env.now, change))
        waiting = 0
        for front in pod.service.fronts:
            result = front.balancer.change_pods(change, self.env.now)
            waiting += sum(1 for entry in result.removed if entry.in_flight > 0)
            for ticket in result.admitted:
                self._dispatch(ticket)
        pod.drain_wait = waiting
        return waiting > 0

    def _idle(self, entry) -> None:
        pod = self.pods.get(entry.name)
        if pod is not None and pod.drain_wait > 0:
            pod.drain_wait -= 1
            if pod.drain_wait == 0 and pod.move is not None:
                pod.move.done(self.env.now)
                self.env.at(self.env.now, self._drive, pod)

    def _states(self, pod: SimPod) -> None:
        """Record the pod's state if it changed (active counts as warm: requests decide between them)."""
        machine = pod.lifecycle.machine
        if machine.transition is not None:
            self.transit[pod] = None
        else:
            self.transit.pop(pod, None)
        state = machine.state
        if state is ACTIVE:
            state = WARM
        last = pod.last_state
        if state is last:
            return
        now = self.env.now
        pod.last_state = state
        image = pod.service.spec.image
        if (state in IMAGE_ON_DISK) != (last in IMAGE_ON_DISK):
            self._disk(pod.node, image, +1 if state in IMAGE_ON_DISK else -1)
        if state in SERVING and last not in SERVING:
            pod.serving_since = now
            pod.node.serving += 1
            self.serving += 1
            if self.serving > self.peak_serving:
                self.peak_serving = self.serving
        elif last in SERVING and state not in SERVING:
            pod.node.serving -= 1
            self.serving -= 1
            if pod.serving_since is not None:
                pod.pod_seconds += now - pod.serving_since
                pod.serving_since = None
        self.recorder.row("pods", (now, pod.name, pod.service.name, pod.node.name, last.value, state.value))

    def _disk(self, node: SimNode, image: str, change: int) -> None:
        before = node.has_image(image)
        node.disk[image] += change
        if node.has_image(image) != before:
            node._model = None

    # -- the seed's state API -------------------------------------------------------------------------

    def hook_step(self, pod: SimPod, target: PodState, node: str | None) -> None:
        """One step of the transition table, asked by a hook; raises the core's IllegalTransition."""
        now = self.env.now
        lifecycle = pod.lifecycle
        lifecycle.advance(now)
        self._states(pod)
        if node is not None and node != pod.node.name:
            if lifecycle.machine.state is not NULL:
                raise IllegalTransition(f"pod {pod.name} is {lifecycle.machine.state.value} on node "
                                        f"{pod.node.name}; only a null pod may move to node {node}")
            self._rehome(pod, self.node_by_name[node])
        lifecycle.step(target, now)  # raises IllegalTransition, naming from, target and the allowed targets
        self.phases.settle(pod.name, lifecycle.machine.state if not lifecycle.moving(now) else None)
        if pod.joined and target not in SERVING:
            self._leave(pod)
        self._states(pod)
        self._hook_follow(pod)

    def _hook_follow(self, pod: SimPod) -> None:
        now = self.env.now
        lifecycle = pod.lifecycle
        lifecycle.advance(now)
        self._states(pod)
        deadline = lifecycle.next_deadline()
        if deadline is not None:
            if pod.hook_at is None or deadline < pod.hook_at:
                pod.hook_at = deadline
                self.env.at(deadline, self._hook_due, pod)
            return
        state = lifecycle.machine.state
        self.phases.settle(pod.name, state)
        if state in SERVING:
            self.busy[pod.name] = pod.running
            if not pod.joined:
                self._join(pod)
        elif self.phases.of(pod.name) is Phase.FREE:
            self.busy.pop(pod.name, None)

    def _hook_due(self, pod: SimPod) -> None:
        pod.hook_at = None
        self._hook_follow(pod)

    def _rehome(self, pod: SimPod, node: SimNode) -> None:
        pod.node.pods.remove(pod)
        if pod.last_state in SERVING:
            pod.node.serving -= 1
            node.serving += 1
        pod.node = node
        node.pods.append(pod)
        spec = pod.service.spec
        pod.lifecycle.machine.costs = PodCosts(spec.image_size_mb, node.registry_mbps, spec.start_s)
        pod.spec = PodSpec(pod.name, pod.spec.url, node.name, None, spec.container_concurrency)
        pod.running = RunningPod(pod.name, pod.service.name, node.name, spec.cpu_m, spec.ram_mib)
        pod.on_node(node)

    def pod(self, name: str) -> SimPod:
        return self.pods[name]

    def add_pod(self, service: str, node: str, state: PodState = NULL) -> SimPod:
        """A pod of ``service`` on ``node`` in ``state``, outside the autoscaler (for hooks)."""
        pod = self._new_pod(self.services[service], self.node_by_name[node], state)
        self._hook_follow(pod)
        return pod

    # -- node use -----------------------------------------------------------------------------------

    def _sample(self, _=None) -> None:
        """Every node's modelled CPU and RAM use (sim_backend's Profile), one row a node."""
        now = self.env.now
        profile = self.profile
        moving: dict[SimNode, list[float]] = {}
        for pod in self.transit:
            use = modelled(pod, profile)
            sums = moving.setdefault(pod.node, [0.0, 0.0])
            sums[0] += use["cpu_cores"]
            sums[1] += use["ram_mb"]
        idle_cpu, idle_ram = profile.idle_cpu_cores, profile.idle_ram_mb
        request_cpu, request_ram = profile.request_cpu_cores, profile.request_ram_mb
        row = self.recorder.row
        for node in self.nodes:
            # A serving pod uses modelled()'s warm/active figures: idle plus each executing request.
            cpu = idle_cpu * node.serving + request_cpu * node.in_flight
            ram = idle_ram * node.serving + request_ram * node.in_flight
            extra = moving.get(node)
            if extra is not None:
                cpu += extra[0]
                ram += extra[1]
            row("nodes", (now, node.name, node.region, cpu, ram, node.serving))
        if self._running():
            self.env.at(now + self.scenario.sample_interval, self._sample)

    # -- the machine -----------------------------------------------------------------------------

    def _overheads(self, stretch: float) -> None:
        """The scenario's four overheads times ``stretch`` (1.0: as written), the hop added to the
        regions' latency both ways and to every node's delays (docs/simulator.md, "Overheads")."""
        scenario = self.scenario
        self.pod_overhead = scenario.pod_overhead_s * stretch
        self.release = scenario.release_s * stretch
        self.pod_release = scenario.pod_release_s * stretch
        hop = scenario.hop_s * stretch
        regions = self._regions
        latency = self.latency
        for a in regions:
            for b in regions:
                latency[(a, b)] = scenario.one_way(a, b) + hop
        for node in self.nodes:
            for region in regions:
                node.delay_from[region] = latency[(region, node.region)]
                node.delay_to[region] = latency[(node.region, region)]

    def _machine_tick(self, _=None) -> None:
        """The cores' use over the window that ended (the arrivals in it at ``cpu-per-request``
        each, and the background), and every overhead stretched by it until the next window ends."""
        machine = self.machine
        now = self.env.now
        arrivals = sum(svc.arrivals for svc in self.services.values())
        rate = (arrivals - self._seen) / machine.window_s if now > 0 else 0.0
        self._seen = arrivals
        stretch = machine.stretch(rate)
        self.machine_windows.append((now, machine.background + rate * machine.cpu_per_request_s, stretch))
        self._overheads(stretch)
        region = self.scenario.katyusha_region
        for pod in self.pods.values():
            # Not on_node(): a hook may have set the pod's speed (a slow window) since.
            pod.hop_in = pod.node.delay_from[region]
            pod.hop_out = pod.node.delay_to[region]
        if self._running():
            self.env.at(now + machine.window_s, self._machine_tick)

    # -- running -----------------------------------------------------------------------------------

    def _running(self) -> bool:
        """Whether periodic work (ticks, samples) goes on: until the end, or until no request is left to come or end."""
        return self.env.now < self._end and (self.arriving > 0 or self.open > 0)

    def run(self) -> dict:
        """Run the scenario: arrivals until ``duration``, then until every request ended (at most ``drain`` more)."""
        scenario = self.scenario
        self._end = scenario.duration + scenario.drain
        self._start()
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=round(scenario.duration), unit="sim s", leave=False)
        # A request holds no reference cycle once it has ended (_record and ServiceBalancer.end
        # drop them), so reference counting frees it at once. The collector's automatic runs
        # are off while the clock runs: with tens of thousands of requests in flight and
        # thousands of pods, each full collection walked every one of them, and cost a sixth
        # to a third of a large run (docs/simulator.md, "Scale"). A cycle made meanwhile (none
        # of the project's own: tests/test_sim.py checks; a user's hook could) waits for the
        # collector's next full run after the clock stops. What the run made and still holds
        # (the response pools' samples: a million tuples at a million requests) then goes
        # to the oldest generation in one step (gc.freeze() and gc.unfreeze(): two list
        # splices, the young generation's count reset) rather than being walked, all of it, by
        # the young generation's collection that the first allocation after gc.enable() starts.
        collecting = gc.isenabled()
        gc.disable()
        try:
            step = max(1.0, scenario.duration / 200)
            t = 0.0
            while t < scenario.duration and self.env.peek() is not None:
                t = min(t + step, scenario.duration)
                self.env.run(until=t)
                if bar is not None:
                    bar.update(round(t) - bar.n)
            # The drain: every request that ends from here on asks whether it was the last,
            # and the last one halts the clock (its time is the run's end).
            self._draining = True
            while self.open > 0 and self.env.now < self._end and self.env.peek() is not None:
                self.env.run(until=min(self.env.now + step, self._end))
        finally:
            if collecting:
                gc.freeze()
                gc.unfreeze()
                gc.enable()
            if bar is not None:
                bar.close()
        for front in (f for svc in self.services.values() for f in svc.fronts):
            for ticket, _ in front.balancer.fail_waiting("the simulation ended"):
                self.open -= 1
                self._record(ticket.payload, 503, "unfinished")
        self.unfinished = self.open
        return self.summary()

    def summary(self) -> dict:
        now = self.env.now
        recorder = self.recorder
        services = {}
        for name, svc in self.services.items():
            pod_seconds = sum(pod.pod_seconds + (now - pod.serving_since if pod.serving_since is not None else 0.0)
                              for pod in svc.pods)
            drops = dict(sorted(recorder.drops[name].items()))
            figures = latency_figures(recorder.latencies[name])
            services[name] = {
                "requests": svc.arrivals,
                "completed": len(recorder.latencies[name]),
                "drops": sum(drops.values()),
                "drop_reasons": drops,
                **figures,
                "cold_starts": sum(pod.machine.cold_starts for pod in svc.pods),
                "image_pulls": sum(pod.machine.image_pulls for pod in svc.pods),
                "pods_created": svc.created,
                "pod_seconds": round(pod_seconds, 3),
            }
        return {
            "policy": self.policy,
            "seed": self.scenario.seed,
            "simulated_s": round(now, 6),
            "nodes": len(self.nodes),
            "pods": len(self.pods),
            "peak_serving_pods": self.peak_serving,
            "events": self.env.events,
            "autoscaler_decisions": self.decisions,
            "unfinished": self.open,
            "services": services,
            **({"machine": self._machine_summary()} if self.machine is not None else {}),
        }

    def _machine_summary(self) -> dict:
        """The machine's windows: mean and peak busy cores, mean and peak stretch of the overheads."""
        windows = self.machine_windows
        return {"windows": len(windows),
                "busy_cores_mean": round(sum(w[1] for w in windows) / len(windows), 4),
                "busy_cores_max": round(max(w[1] for w in windows), 4),
                "stretch_mean": round(sum(w[2] for w in windows) / len(windows), 4),
                "stretch_max": round(max(w[2] for w in windows), 4)}


def run_scenario(scenario: Scenario, out: Path | None = None, *, settings: dict | None = None,
                 progress: bool = False, keep: bool = False) -> tuple[dict, Simulation]:
    """Run ``scenario`` once; with ``out``, write its CSV tables and summary.json there."""
    from katyusha.sim.record import write_summary

    recorder = Recorder([s.name for s in scenario.services], folder=out, keep=keep or out is None,
                        requests=scenario.record_requests)
    sim = Simulation(scenario, settings=settings, recorder=recorder, progress=progress)
    try:
        summary = sim.run()
    finally:
        recorder.close()
    if out is not None:
        write_summary(out / "summary.json", summary)
    return summary, sim
