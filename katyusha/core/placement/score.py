"""A placement's cost under the one cost function both schedulers are judged by (see cost.py)."""

from __future__ import annotations

from dataclasses import dataclass

from katyusha.core.placement.constraints import ClusterIndex
from katyusha.core.placement.cost import PULL_COST, UNSCHEDULED_COST
from katyusha.core.placement.model import Cluster, Placement, PodClass


@dataclass(frozen=True)
class CostReport:
    """A placement's cost, broken down; ``image_pulls`` counts distinct (node, image) pulls."""

    total: int
    pull: int
    spread: int
    preference: int
    unscheduled: int
    image_pulls: int
    pods_waiting_pull: int
    pods_unscheduled: int


def evaluate(cluster: Cluster, classes: tuple[PodClass, ...], placement: Placement) -> CostReport:
    """Cost of ``placement`` for this cluster and batch under the common cost function."""
    index = ClusterIndex(cluster, classes)
    pod_class = {pod: i for i, cls in enumerate(classes) for pod in cls.pods}
    per_node: dict[int, int] = {}
    pull = preference = waiting = 0
    pulls: set[tuple[int, str]] = set()
    for pod, node_name in placement.assignments.items():
        c = pod_class[pod]
        n = index.node_index[node_name]
        per_node[n] = per_node.get(n, 0) + 1
        preference += int(index.preference_cost(c)[n])
        if not index.has_image(c)[n]:
            pull += PULL_COST
            waiting += 1
            pulls.add((n, classes[c].image))
    spread = sum(index.spread.total(n, k) for n, k in per_node.items())
    missing = len(placement.unscheduled)
    unscheduled = UNSCHEDULED_COST * missing
    return CostReport(
        total=pull + spread + preference + unscheduled,
        pull=pull,
        spread=spread,
        preference=preference,
        unscheduled=unscheduled,
        image_pulls=len(pulls),
        pods_waiting_pull=waiting,
        pods_unscheduled=missing,
    )

