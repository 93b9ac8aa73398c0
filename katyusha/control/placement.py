"""The placement scheduler live: which node, and which of its pod slots, a scale-up wakes.

A fleet's pods are slots fixed to nodes; each belongs to a service. When the
autoscaler wants N more pods, :class:`PlacementChooser` reads every slot's
state from its sim-backend and builds the scheduler's view of the fleet:

- a :class:`~katyusha.core.placement.Node` per fleet node, whose ``images``
  are those of the slots on it in warmdisk, warm or active (their disk holds
  the image) and whose pod limit is the slots it can still use: pods already
  there plus its free slots of the service being placed (never more than the
  node's ``max_pods``);
- a running pod per busy slot (serving, waking or retiring), at its service's
  requests (or its measured use from ``GET /monitor`` with
  ``FitBasis.MEASURED``);
- N pending pods of the service, one :class:`PodClass`.

:class:`~katyusha.core.placement.FlowScheduler` places the batch, and each
node's share becomes concrete slots there: warm first (no start at all), then
warmdisk (start only), then cold, then null (pull and start), then slots whose
state could not be read; ties go to the fleet order. With several services,
they are tried in the fleet file's order: what the first cannot place is
offered to the next. What no service can place is logged with the
scheduler's reason and kept for ``status()``.

Retiring is the reverse, so the fleet stays spread and keeps images where
pods remain: one at a time, from the node whose requests use the largest
share of its capacity (its dominant share), ties to the node with more pods,
then to the later node; on that node an idle (warm) pod before an active one,
then the last in fleet order. Every choice is deterministic for the same
slots and states.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from katyusha.control import adminhttp
from katyusha.control.actuator import Slot
from katyusha.core.placement import (
    Cluster,
    FitBasis,
    FlowScheduler,
    Node,
    NodeAffinity,
    PodClass,
    RunningPod,
    Toleration,
)

log = logging.getLogger("katyusha.autoscaler")

IMAGE_STATES = frozenset({"warmdisk", "warm", "active"})
# Lower wakes sooner: warm needs nothing, warmdisk a start, cold a pull and a start, null one more step.
WAKE_RANK = {"warm": 0, "active": 0, "warmdisk": 1, "cold": 2, "null": 3}
UNKNOWN_RANK = 4
NO_SLOT = "no free pod slot of the service"


@dataclass(frozen=True)
class Service:
    """What every pod of one service asks for: requests (millicores, MiB), image, affinity, tolerations, per-node limit."""

    name: str
    cpu: int
    ram: int
    image: str
    node_affinity: NodeAffinity = NodeAffinity()
    tolerations: tuple[Toleration, ...] = ()
    max_per_node: int | None = None

    def pending(self, count: int) -> PodClass:
        """``count`` interchangeable pending pods of this service, named ``<service>/pending-<i>``."""
        pods = tuple(f"{self.name}/pending-{i + 1}" for i in range(count))
        return PodClass(self.name, pods, self.cpu, self.ram, self.image, service=self.name,
                        node_affinity=self.node_affinity, tolerations=self.tolerations,
                        max_per_node=self.max_per_node)  # fmt: skip

    def to_json(self) -> dict:
        return {"name": self.name, "cpu_m": self.cpu, "ram_mib": self.ram, "image": self.image,
                "max_per_node": self.max_per_node, "tolerations": len(self.tolerations),
                "required_terms": len(self.node_affinity.required)}  # fmt: skip


@dataclass(frozen=True)
class SlotView:
    """One slot as placement sees it: node, service, sim-backend state (None: unknown), and whether it is busy."""

    name: str
    node: str
    service: str
    state: str | None
    busy: bool = False
    measured_cpu: int | None = None  # millicores
    measured_ram: int | None = None  # MiB


def build_cluster(nodes: Sequence[Node], services: Mapping[str, Service], views: Sequence[SlotView],
                  placing: str, *, basis: FitBasis = FitBasis.REQUESTS) -> Cluster:
    """The scheduler's input for placing pods of service ``placing`` into the free slots of ``views``.

    Slots on nodes not in ``nodes`` and of services not in ``services`` are left out.
    """
    known = {node.name for node in nodes}
    views = [v for v in views if v.node in known and v.service in services]
    images: dict[str, set[str]] = {name: set() for name in known}
    busy = Counter(v.node for v in views if v.busy)
    free = Counter(v.node for v in views if not v.busy and v.service == placing)
    for v in views:
        if v.state in IMAGE_STATES:
            images[v.node].add(services[v.service].image)
    built = tuple(
        Node(n.name, n.cpu, n.ram, max_pods=min(n.max_pods, busy[n.name] + free[n.name]), labels=n.labels,
             taints=n.taints, images=frozenset(images[n.name]))
        for n in nodes
    )  # fmt: skip
    running = tuple(
        RunningPod(v.name, v.service, v.node, services[v.service].cpu, services[v.service].ram,
                   measured_cpu=v.measured_cpu, measured_ram=v.measured_ram)
        for v in views if v.busy
    )  # fmt: skip
    return Cluster(built, running, basis)


def map_to_slots(assignments: Mapping[str, str], free: Sequence[SlotView]) -> list[str]:
    """Concrete slots for a placement: on each node, as many free slots as pods placed there, best state first.

    ``free`` is in fleet order; nodes are visited in the order their first slot appears there.
    """
    wanted = Counter(assignments.values())
    position = {v.name: i for i, v in enumerate(free)}
    chosen: list[str] = []
    for node in dict.fromkeys(v.node for v in free):
        if not wanted[node]:
            continue
        here = sorted((v for v in free if v.node == node),
                      key=lambda v: (WAKE_RANK.get(v.state or "", UNKNOWN_RANK), position[v.name]))  # fmt: skip
        chosen.extend(v.name for v in here[: wanted[node]])
    return chosen


def choose_retirements(nodes: Sequence[Node], services: Mapping[str, Service], serving: Sequence[SlotView],
                       count: int) -> list[str]:
    """Up to ``count`` slots of ``serving`` (fleet order) to retire; see the module doc for the rule."""
    capacity = {n.name: n for n in nodes}
    order = [n.name for n in nodes] + sorted({v.node for v in serving} - set(capacity))
    position = {v.name: i for i, v in enumerate(serving)}
    left = list(serving)
    chosen: list[str] = []
    for _ in range(max(0, min(count, len(serving)))):
        by_node: dict[str, list[SlotView]] = {}
        for v in left:
            by_node.setdefault(v.node, []).append(v)

        shares = {n: _dominant_share(capacity.get(n), pods, services) for n, pods in by_node.items()}
        node = max(by_node, key=lambda n: (shares[n], len(by_node[n]), order.index(n)))
        pick = min(by_node[node], key=lambda v: (v.state == "active", -position[v.name]))
        chosen.append(pick.name)
        left.remove(pick)
    return chosen


class PlacementChooser:
    """A :class:`~katyusha.control.choose.PodChooser` that places scale-ups with the min-cost-flow scheduler."""

    def __init__(
        self,
        nodes: Sequence[Node],
        services: Sequence[Service],
        service_of: Mapping[str, str],
        *,
        basis: FitBasis = FitBasis.REQUESTS,
        scheduler: FlowScheduler | None = None,
        read_state: Callable[[Slot], Awaitable[dict]] | None = None,
        read_monitor: Callable[[Slot], Awaitable[dict]] | None = None,
    ):
        """``service_of`` maps a slot name to its service (slots not in it belong to the first service).

        ``read_state`` and ``read_monitor`` default to the slot's sim-backend
        ``GET /state`` and ``GET /monitor``; monitors are read only with
        ``FitBasis.MEASURED``. Raises ValueError when ``services`` is empty.
        """
        if not services:
            raise ValueError("placement needs at least one service")
        self.nodes = tuple(nodes)
        self.services = tuple(services)
        self.by_name = {s.name: s for s in self.services}
        self.service_of = dict(service_of)
        self.basis = basis
        self.scheduler = scheduler if scheduler is not None else FlowScheduler()
        self.read_state = read_state or (lambda slot: adminhttp.get_json(slot.sim_admin + "/state"))
        self.read_monitor = read_monitor or (lambda slot: adminhttp.get_json(slot.sim_admin + "/monitor"))
        self.last_wake: dict | None = None
        self.last_retire: dict | None = None
        self._last_complaint: tuple | None = None

    # -- the PodChooser interface --------------------------------------------------------

    async def wake(self, free: Sequence[Slot], busy: Sequence[Slot], count: int) -> list[str]:
        """Up to ``count`` free slots, placed by the scheduler; what cannot be placed is logged and kept."""
        if count <= 0:
            return []
        free_views = await self.views(free, busy=False)
        busy_views = await self.views(busy, busy=True)
        chosen: list[str] = []
        reasons: dict[str, str] = {}
        for service in self.services:
            if len(chosen) >= count:
                break
            candidates = [v for v in free_views if v.service == service.name and v.name not in chosen]
            if not candidates:
                reasons[service.name] = NO_SLOT
                continue
            taken = [SlotView(v.name, v.node, v.service, v.state, busy=True)
                     for v in free_views if v.name in chosen]  # fmt: skip
            rest = [v for v in free_views if v.name not in chosen]
            cluster = build_cluster(self.nodes, self.by_name, [*busy_views, *taken, *rest], service.name,
                                    basis=self.basis)  # fmt: skip
            placement = self.scheduler.schedule(cluster, [service.pending(count - len(chosen))])
            picks = map_to_slots(placement.assignments, candidates)
            chosen.extend(picks)
            if placement.unscheduled:
                reasons[service.name] = next(iter(placement.unscheduled.values()))
        states = {v.name: v.state for v in free_views}
        unplaced = count - len(chosen)
        self.last_wake = {
            "asked": count,
            "woken": [{"pod": name, "node": _node(free, name), "from": states.get(name)} for name in chosen],
            "unplaced": unplaced,
            "reasons": reasons if unplaced else {},
        }
        complaint = (unplaced, tuple(sorted(reasons.items()))) if unplaced else None
        if complaint is not None and complaint != self._last_complaint:
            why = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
            log.warning("placement: %d of %d pod(s) not placed (%s)", unplaced, count, why)
        self._last_complaint = complaint
        return chosen

    async def retire(self, serving: Sequence[Slot], count: int) -> list[str]:
        """Up to ``count`` serving slots to retire, by :func:`choose_retirements`."""
        if count <= 0:
            return []
        views = await self.views(serving, busy=True)
        chosen = choose_retirements(self.nodes, self.by_name, views, count)
        self.last_retire = {"asked": count, "retired": [{"pod": n, "node": _node(serving, n)} for n in chosen]}
        return chosen

    # -- views ---------------------------------------------------------------------------

    async def views(self, slots: Sequence[Slot], *, busy: bool) -> list[SlotView]:
        """Each slot with its state read now (None when its sim-backend does not answer)."""
        states = await asyncio.gather(*(self.read_state(slot) for slot in slots), return_exceptions=True)
        measured: list = [None] * len(slots)
        if busy and self.basis is FitBasis.MEASURED:
            measured = await asyncio.gather(*(self.read_monitor(slot) for slot in slots), return_exceptions=True)
        out = []
        first = self.services[0].name
        for slot, state, monitor in zip(slots, states, measured, strict=True):
            name = state.get("state") if isinstance(state, dict) else None
            cpu = ram = None
            if isinstance(monitor, dict) and isinstance(monitor.get("current"), dict):
                current = monitor["current"]
                cpu = _whole(current.get("cpu_cores"), 1000)
                ram = _whole(current.get("ram_mb"), 1)
            out.append(SlotView(slot.name, slot.node, self.service_of.get(slot.name, first),
                                name if isinstance(name, str) else None, busy, cpu, ram))  # fmt: skip
        return out

    def status(self) -> dict:
        """Nodes, services and the last wake and retirement, as JSON for ``GET /placement``."""
        return {
            "basis": self.basis.value,
            "nodes": [
                {"name": n.name, "cpu_m": n.cpu, "ram_mib": n.ram, "max_pods": n.max_pods,
                 "labels": dict(n.labels), "taints": [str(t) for t in n.taints]}
                for n in self.nodes
            ],  # fmt: skip
            "services": [s.to_json() for s in self.services],
            "last_wake": self.last_wake,
            "last_retire": self.last_retire,
        }


def _dominant_share(node: Node | None, pods: Sequence[SlotView], services: Mapping[str, Service]) -> float:
    """The larger of the CPU and RAM shares of ``node`` that ``pods`` request (0 for an unknown node)."""
    if node is None:
        return 0.0
    cpu = sum(services[v.service].cpu for v in pods if v.service in services)
    ram = sum(services[v.service].ram for v in pods if v.service in services)
    return max(cpu / node.cpu, ram / node.ram)


def _node(slots: Sequence[Slot], name: str) -> str | None:
    return next((slot.node for slot in slots if slot.name == name), None)


def _whole(value, scale: int) -> int | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return round(value * scale)
    return None
