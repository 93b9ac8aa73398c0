"""Which pod slots a scale-up wakes and a scale-down retires: pure functions over a snapshot of the fleet.

A fleet's pods are slots fixed to nodes; each belongs to a service. The
control plane reads every slot's state (and, for measured-use placement, its
measured CPU and RAM) into a :class:`SlotView`, and asks:

- :func:`plan_wakes`: N more pods of these services. The scheduler's view is
  built by :func:`build_cluster`: a :class:`Node` per fleet node whose
  ``images`` are those of its slots in warmdisk, warm or active (their disk
  holds the image) and whose pod limit is the pods already there plus its free
  slots of the service being placed (never more than the node's
  ``max_pods``); a running pod per busy slot, at its service's requests (or
  its measured use with ``FitBasis.MEASURED``); N pending pods of the
  service. The scheduler places the batch, and :func:`map_to_slots` turns
  each node's share into concrete slots there, nearest to serving first
  (warm, then warmdisk, then cold, then null, then unreadable ones; ties to
  fleet order). Services are tried in the order given: what the first cannot
  place is offered to the next. A service with ``gang`` set wakes all the
  pods asked of it or none.
- :func:`choose_retirements`: N serving slots to retire, one at a time from
  the node whose pods request the largest share of it (its dominant share),
  ties to the node with more pods, then to the later node; on that node an
  idle (warm) pod before an active one, then the last in fleet order.

No I/O and no clock: the answer is a :class:`WakePlan` or a tuple of
:class:`Retire` commands the caller carries out. Every choice is
deterministic for the same snapshot.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

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
from katyusha.core.podstate import ACTIVE, IMAGE_ON_DISK, PodState, steps_to_serve

NO_SLOT = "no free pod slot of the service"
# Slots whose state could not be read wake after every known state.
_UNKNOWN_RANK = len(PodState)


@dataclass(frozen=True)
class ServiceSpec:
    """What every pod of one service asks for: requests (millicores, MiB), image, affinity, tolerations, limits.

    ``gang``: a scale-up of the service wakes every pod it asks for, or none.
    """

    name: str
    cpu: int
    ram: int
    image: str
    node_affinity: NodeAffinity = NodeAffinity()
    tolerations: tuple[Toleration, ...] = ()
    max_per_node: int | None = None
    gang: bool = False

    def pending(self, count: int) -> PodClass:
        """``count`` interchangeable pending pods of this service, named ``<service>/pending-<i>``."""
        pods = tuple(f"{self.name}/pending-{i + 1}" for i in range(count))
        return PodClass(self.name, pods, self.cpu, self.ram, self.image, service=self.name,
                        node_affinity=self.node_affinity, tolerations=self.tolerations,
                        max_per_node=self.max_per_node, gang=self.name if self.gang else None)  # fmt: skip

    def to_json(self) -> dict:
        return {"name": self.name, "cpu_m": self.cpu, "ram_mib": self.ram, "image": self.image,
                "max_per_node": self.max_per_node, "tolerations": len(self.tolerations),
                "required_terms": len(self.node_affinity.required), "gang": self.gang}  # fmt: skip


@dataclass(frozen=True)
class SlotView:
    """One slot as placement sees it: node, service, state (None: unknown), and whether it is busy.

    A busy slot is serving, waking or retiring: it holds room on its node.
    """

    name: str
    node: str
    service: str
    state: PodState | None
    busy: bool = False
    measured_cpu: int | None = None  # millicores
    measured_ram: int | None = None  # MiB


@dataclass(frozen=True)
class Wake:
    """Wake ``pod`` on ``node``; it was in ``was`` (None: unknown)."""

    pod: str
    node: str
    was: PodState | None

    def to_json(self) -> dict:
        return {"pod": self.pod, "node": self.node, "from": self.was.value if self.was is not None else None}


@dataclass(frozen=True)
class Retire:
    """Retire ``pod`` on ``node``: drain it, then walk it down."""

    pod: str
    node: str

    def to_json(self) -> dict:
        return {"pod": self.pod, "node": self.node}


@dataclass(frozen=True)
class WakePlan:
    """The answer to a scale-up of ``asked`` pods: the wakes, and why the rest could not be placed."""

    asked: int
    wakes: tuple[Wake, ...] = ()
    reasons: Mapping[str, str] = field(default_factory=dict)  # service -> why pods stay pending

    @property
    def unplaced(self) -> int:
        return self.asked - len(self.wakes)

    def to_json(self) -> dict:
        return {"asked": self.asked, "woken": [w.to_json() for w in self.wakes], "unplaced": self.unplaced,
                "reasons": dict(self.reasons) if self.unplaced else {}}  # fmt: skip


def build_cluster(nodes: Sequence[Node], services: Mapping[str, ServiceSpec], views: Sequence[SlotView],
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
        if v.state in IMAGE_ON_DISK:
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
    """Concrete slots for a placement: on each node, as many free slots as pods placed there, nearest to serving first.

    ``free`` is in fleet order; nodes are visited in the order their first slot appears there.
    """
    wanted = Counter(assignments.values())
    position = {v.name: i for i, v in enumerate(free)}

    def rank(v: SlotView) -> tuple[int, int]:
        return (steps_to_serve(v.state) if v.state is not None else _UNKNOWN_RANK, position[v.name])

    chosen: list[str] = []
    for node in dict.fromkeys(v.node for v in free):
        if wanted[node]:
            here = sorted((v for v in free if v.node == node), key=rank)
            chosen.extend(v.name for v in here[: wanted[node]])
    return chosen


def plan_wakes(nodes: Sequence[Node], services: Mapping[str, ServiceSpec], placing: Sequence[str],
               views: Sequence[SlotView], count: int, *, scheduler: FlowScheduler,
               basis: FitBasis = FitBasis.REQUESTS) -> WakePlan:
    """Up to ``count`` free slots of the services named in ``placing`` (tried in order) to wake.

    ``services`` holds every service of the fleet; ``views`` every slot in
    fleet order (busy ones, of any service, hold room on their nodes).
    """
    if count <= 0:
        return WakePlan(max(count, 0))
    chosen: list[str] = []
    reasons: dict[str, str] = {}
    for name in placing:
        if len(chosen) >= count:
            break
        candidates = [v for v in views if not v.busy and v.service == name and v.name not in chosen]
        if not candidates:
            reasons[name] = NO_SLOT
            continue
        # Slots this plan already wakes hold room, like busy ones.
        taken = [SlotView(v.name, v.node, v.service, v.state, busy=True) if v.name in chosen else v for v in views]
        cluster = build_cluster(nodes, services, taken, name, basis=basis)
        placement = scheduler.schedule(cluster, [services[name].pending(count - len(chosen))])
        chosen.extend(map_to_slots(placement.assignments, candidates))
        if placement.unscheduled:
            reasons[name] = next(iter(placement.unscheduled.values()))
    where = {v.name: v for v in views}
    wakes = tuple(Wake(name, where[name].node, where[name].state) for name in chosen)
    return WakePlan(count, wakes, reasons)


def choose_retirements(nodes: Sequence[Node], services: Mapping[str, ServiceSpec], serving: Sequence[SlotView],
                       count: int) -> tuple[Retire, ...]:
    """Up to ``count`` slots of ``serving`` (fleet order) to retire; see the module doc for the rule."""
    capacity = {n.name: n for n in nodes}
    order = [n.name for n in nodes] + sorted({v.node for v in serving} - set(capacity))
    position = {v.name: i for i, v in enumerate(serving)}
    left = {v.name: v for v in serving}  # by name: taking one out compares no views
    chosen: list[Retire] = []
    for _ in range(max(0, min(count, len(serving)))):
        by_node: dict[str, list[SlotView]] = {}
        for v in left.values():
            by_node.setdefault(v.node, []).append(v)
        shares = {n: _dominant_share(capacity.get(n), pods, services) for n, pods in by_node.items()}
        node = max(by_node, key=lambda n: (shares[n], len(by_node[n]), order.index(n)))
        pick = min(by_node[node], key=lambda v: (v.state is ACTIVE, -position[v.name]))
        chosen.append(Retire(pick.name, pick.node))
        del left[pick.name]
    return tuple(chosen)


def _dominant_share(node: Node | None, pods: Sequence[SlotView], services: Mapping[str, ServiceSpec]) -> float:
    """The larger of the CPU and RAM shares of ``node`` that ``pods`` request (0 for an unknown node)."""
    if node is None:
        return 0.0
    cpu = sum(services[v.service].cpu for v in pods if v.service in services)
    ram = sum(services[v.service].ram for v in pods if v.service in services)
    return max(cpu / node.cpu, ram / node.ram)
