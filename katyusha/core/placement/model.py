"""What the placement schedulers read and return: nodes, running pods, pending pod classes, placements.

Units are integers so fits are exact: CPU in millicores, RAM in MiB. Every
constructor validates its fields and raises :class:`BadInput` naming the field,
so a malformed request never reaches a solver.

Pending pods come grouped in equivalence classes (:class:`PodClass`): pods of
one service with the same requests, image, affinities and tolerations are
interchangeable, so the schedulers reason about a class once, not once a pod.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType

from katyusha.core.errors import BadInput

TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule")
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
TOLERATION_OPERATORS = ("Equal", "Exists")


class FitBasis(Enum):
    """What a node's use is counted from when deciding whether a pod fits."""

    REQUESTS = "requests"  # the sum of running pods' requests, as Kubernetes does
    MEASURED = "measured"  # what the pods' monitors report, falling back to the request


def _positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise BadInput(f"{name} must be a positive integer, got {value!r}")


def _non_negative(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadInput(f"{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class Taint:
    """A node taint; pods without a matching toleration avoid (PreferNoSchedule) or skip (NoSchedule) it."""

    key: str
    value: str = ""
    effect: str = "NoSchedule"

    def __post_init__(self) -> None:
        if not self.key:
            raise BadInput("taint key must not be empty")
        if self.effect not in TAINT_EFFECTS:
            raise BadInput(f"taint {self.key}: effect must be one of {TAINT_EFFECTS}, got {self.effect!r}")

    def __str__(self) -> str:
        return f"{self.key}={self.value}:{self.effect}"


@dataclass(frozen=True)
class Toleration:
    """Tolerates taints with this key (and value, for Equal); an empty effect tolerates every effect."""

    key: str
    operator: str = "Equal"
    value: str = ""
    effect: str = ""

    def __post_init__(self) -> None:
        if self.operator not in TOLERATION_OPERATORS:
            raise BadInput(
                f"toleration {self.key}: operator must be one of {TOLERATION_OPERATORS}, got {self.operator!r}"
            )
        if self.effect and self.effect not in TAINT_EFFECTS:
            raise BadInput(f"toleration {self.key}: effect must be one of {TAINT_EFFECTS} or empty")

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.operator == "Exists":
            return not self.key or self.key == taint.key
        return self.key == taint.key and self.value == taint.value


@dataclass(frozen=True)
class LabelRequirement:
    """One label selector expression, as in Kubernetes' nodeSelectorTerms."""

    key: str
    operator: str = "In"
    values: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.key:
            raise BadInput("label requirement key must not be empty")
        if self.operator not in SELECTOR_OPERATORS:
            raise BadInput(
                f"label requirement {self.key}: operator must be one of {SELECTOR_OPERATORS}, got {self.operator!r}"
            )
        if self.operator in ("In", "NotIn") and not self.values:
            raise BadInput(f"label requirement {self.key}: operator {self.operator} needs values")
        object.__setattr__(self, "values", tuple(self.values))

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "Exists":
            return self.key in labels
        if self.operator == "DoesNotExist":
            return self.key not in labels
        inside = labels.get(self.key) in self.values
        return inside if self.operator == "In" else not inside


def term_matches(term: tuple[LabelRequirement, ...], labels: Mapping[str, str]) -> bool:
    """A term holds when every requirement in it holds (AND)."""
    return all(req.matches(labels) for req in term)


@dataclass(frozen=True)
class NodeAffinity:
    """Where a class may go (required: any one term, OR of ANDs) and where it would rather go (preferred).

    Anti-affinity is a term with NotIn or DoesNotExist. ``preferred`` holds
    ``(weight, term)`` pairs, weight 1 to 100 as in Kubernetes.
    """

    required: tuple[tuple[LabelRequirement, ...], ...] = ()
    preferred: tuple[tuple[int, tuple[LabelRequirement, ...]], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "required", tuple(tuple(t) for t in self.required))
        object.__setattr__(self, "preferred", tuple((w, tuple(t)) for w, t in self.preferred))
        for weight, _ in self.preferred:
            if not isinstance(weight, int) or not 1 <= weight <= 100:
                raise BadInput(f"preferred node affinity weight must be 1..100, got {weight!r}")

    def allows(self, labels: Mapping[str, str]) -> bool:
        return not self.required or any(term_matches(t, labels) for t in self.required)

    def unmet_weight(self, labels: Mapping[str, str]) -> int:
        """Sum of the weights of preferred terms this node does not satisfy (0 is best)."""
        return sum(w for w, t in self.preferred if not term_matches(t, labels))


@dataclass(frozen=True)
class Node:
    """A machine: capacity, labels, taints, the images already on its disk, and its pod limit."""

    name: str
    cpu: int
    ram: int
    max_pods: int = 110
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Taint, ...] = ()
    images: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if not self.name:
            raise BadInput("node name must not be empty")
        _positive(f"node {self.name}: cpu", self.cpu)
        _positive(f"node {self.name}: ram", self.ram)
        _non_negative(f"node {self.name}: max_pods", self.max_pods)
        object.__setattr__(self, "labels", MappingProxyType(dict(self.labels)))
        object.__setattr__(self, "taints", tuple(self.taints))
        object.__setattr__(self, "images", frozenset(self.images))

    def __hash__(self) -> int:
        return hash(self.name)


@dataclass(frozen=True)
class RunningPod:
    """A pod already on a node. ``measured_*`` is what its monitor reports; None means not measured."""

    name: str
    service: str
    node: str
    cpu: int
    ram: int
    measured_cpu: int | None = None
    measured_ram: int | None = None

    def __post_init__(self) -> None:
        _non_negative(f"running pod {self.name}: cpu", self.cpu)
        _non_negative(f"running pod {self.name}: ram", self.ram)
        if self.measured_cpu is not None:
            _non_negative(f"running pod {self.name}: measured_cpu", self.measured_cpu)
        if self.measured_ram is not None:
            _non_negative(f"running pod {self.name}: measured_ram", self.measured_ram)


@dataclass(frozen=True)
class PodClass:
    """Pending pods that are interchangeable: one service, one request, image and set of constraints.

    ``max_per_node`` is pod anti-affinity within the service: at most that many
    of the service's pods (running ones included) on one node; None is no
    limit. Pods sharing a ``gang`` name (across classes) are placed all or none.
    """

    name: str
    pods: tuple[str, ...]
    cpu: int
    ram: int
    image: str
    service: str = ""
    node_affinity: NodeAffinity = NodeAffinity()
    tolerations: tuple[Toleration, ...] = ()
    max_per_node: int | None = None
    gang: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise BadInput("pod class name must not be empty")
        object.__setattr__(self, "pods", tuple(self.pods))
        object.__setattr__(self, "tolerations", tuple(self.tolerations))
        if not self.service:
            object.__setattr__(self, "service", self.name)
        if len(set(self.pods)) != len(self.pods):
            raise BadInput(f"pod class {self.name}: pod names repeat")
        _positive(f"pod class {self.name}: cpu", self.cpu)
        _positive(f"pod class {self.name}: ram", self.ram)
        if not self.image:
            raise BadInput(f"pod class {self.name}: image must not be empty")
        if self.max_per_node is not None:
            _positive(f"pod class {self.name}: max_per_node", self.max_per_node)

    def untolerated(self, taints: tuple[Taint, ...], effect: str) -> list[Taint]:
        """The taints with this ``effect`` that no toleration of this class covers."""
        return [
            t for t in taints
            if t.effect == effect and not any(tol.tolerates(t) for tol in self.tolerations)
        ]


@dataclass(frozen=True)
class Cluster:
    """The scheduler's whole input besides the pending pods: nodes, running pods, and the fit basis."""

    nodes: tuple[Node, ...]
    running: tuple[RunningPod, ...] = ()
    basis: FitBasis = FitBasis.REQUESTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "nodes", tuple(self.nodes))
        object.__setattr__(self, "running", tuple(self.running))
        names = [n.name for n in self.nodes]
        if len(set(names)) != len(names):
            raise BadInput("node names repeat")
        known = set(names)
        for pod in self.running:
            if pod.node not in known:
                raise BadInput(f"running pod {pod.name}: unknown node {pod.node!r}")


def check_pending(classes: tuple[PodClass, ...] | list[PodClass]) -> tuple[PodClass, ...]:
    """The classes as a tuple, or BadInput when class or pod names repeat across classes."""
    classes = tuple(classes)
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        raise BadInput("pod class names repeat")
    total = sum(len(c.pods) for c in classes)
    if len(set().union(*(c.pods for c in classes))) != total:
        seen: set[str] = set()
        for cls in classes:
            for pod in cls.pods:
                if pod in seen:
                    raise BadInput(f"pod {pod} appears in more than one class")
                seen.add(pod)
    return classes


@dataclass
class Placement:
    """A scheduler's answer: where each placed pod goes, and why each other pod stays pending."""

    assignments: dict[str, str]
    unscheduled: dict[str, str]
    rounds: int = 1
