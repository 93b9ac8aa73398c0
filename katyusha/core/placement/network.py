"""The flow network for one solve, Firmament-style, over pod classes instead of single pods.

::

    class c (supply = its pending pods) ──► node n ──► sink (demand = all pending pods)
          │   cap: pods of c that fit n          SEGMENTS parallel arcs, rising cost:
          │   cost: image pull + preferences     the convex spreading cost
          └──► unscheduled(c) ──► sink
               cost: UNSCHEDULED_COST, so a solve always has a feasible answer

One arc per (class, node) that can take the class, with the pods-that-fit as
capacity, instead of one arc per (pod, node): the same optimum with far fewer
arcs. As Firmament does with preference arcs, a class gets arcs only to its
cheapest candidate nodes, enough to hold ``CANDIDATE_FACTOR`` times its
pending pods; a class that the solve leaves partly unscheduled is solved again
with arcs to every node that can take it, so pruning never leaves a pod out. Capacities are per class and per resource; pods of several classes
may together exceed a node, which the scheduler repairs after the solve.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from katyusha.core.placement.constraints import ClusterIndex, NodeState
from katyusha.core.placement.cost import PULL_COST, UNSCHEDULED_COST, step_of
from katyusha.core.placement.solver import MinCostFlowSolver

CANDIDATE_FACTOR = 4
MIN_CANDIDATES = 32


@dataclass(frozen=True)
class RoundFlows:
    """Where one solve sends pods: parallel arrays (class, node, pods), nonzero flows only."""

    classes: np.ndarray
    nodes: np.ndarray
    pods: np.ndarray
    unscheduled: np.ndarray  # per class, pods sent to its unscheduled aggregator
    pruned: frozenset[int]  # classes whose arcs went to some of their feasible nodes only
    cost: int
    arcs: int


def candidates(index: ClusterIndex, state: NodeState, c: int, pending: int,
               fit: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Node indices for class ``c``'s arcs: every feasible node, or the cheapest that hold enough."""
    where = np.flatnonzero(fit)
    keep = max(MIN_CANDIDATES, CANDIDATE_FACTOR * pending)
    if len(where) <= keep:
        return where
    # Rank by the arc cost plus the node's next spreading step, the cost of its first pod here.
    rank = cost[where] + index.spread.step_cost(where, step_of(state.placed[where] + 1))
    # Each node holds at least one pod, so ``keep`` nodes hold CANDIDATE_FACTOR times the pods.
    chosen = np.argpartition(rank, keep - 1)[:keep]
    return np.sort(where[chosen])


def solve_round(index: ClusterIndex, state: NodeState, remaining: np.ndarray,
                make_solver: Callable[[], MinCostFlowSolver],
                unpruned: frozenset[int] = frozenset()) -> RoundFlows:
    """Build the network for the ``remaining`` pods of each class on ``state`` and solve it.

    Classes in ``unpruned`` get arcs to every node that can take them.
    """
    num_classes, num_nodes = len(remaining), len(index.names)
    unsched_base, node_base = num_classes, 2 * num_classes
    sink = node_base + num_nodes

    tails, heads, caps, costs, arc_class = [], [], [], [], []
    pruned = set()
    for c in np.flatnonzero(remaining > 0).tolist():
        fit = state.fit_counts(c)
        full_cost = index.preference_cost(c) + PULL_COST * (~index.has_image(c))
        if c in unpruned:
            where = np.flatnonzero(fit)
        else:
            where = candidates(index, state, c, int(remaining[c]), fit, full_cost)
            if len(where) < np.count_nonzero(fit):
                pruned.add(c)
        if not len(where):
            continue
        cost = full_cost[where]
        tails.append(np.full(len(where), c, dtype=np.int64))
        heads.append(node_base + where)
        caps.append(np.minimum(fit[where], remaining[c]))
        costs.append(cost)
        arc_class.append(np.full(len(where), c, dtype=np.int64))
    placement_arcs = sum(len(t) for t in tails)

    active = np.flatnonzero(remaining > 0)
    count = remaining[active]
    tails += [active, unsched_base + active]
    heads += [unsched_base + active, np.full(len(active), sink, dtype=np.int64)]
    caps += [count, count]
    costs += [np.full(len(active), UNSCHEDULED_COST, dtype=np.int64), np.zeros(len(active), np.int64)]

    used = np.zeros(num_nodes, dtype=bool)
    if placement_arcs:
        used[np.concatenate(heads[: len(arc_class)]) - node_base] = True
    targets = np.flatnonzero(used)
    for cap, cost in index.spread.segments(targets, state.placed[targets], state.slots[targets]):
        keep = cap > 0
        tails.append(node_base + targets[keep])
        heads.append(np.full(int(keep.sum()), sink, dtype=np.int64))
        caps.append(cap[keep])
        costs.append(cost[keep])

    solver = make_solver()
    solver.add_arcs(np.concatenate(tails), np.concatenate(heads), np.concatenate(caps),
                    np.concatenate(costs))
    total = int(remaining.sum())
    solver.set_supplies(np.append(np.arange(num_classes), sink),
                        np.append(remaining, -total))
    solution = solver.solve()

    flows = solution.flows[:placement_arcs]
    moved = np.flatnonzero(flows)
    if placement_arcs:
        arc_classes = np.concatenate(arc_class)
        arc_nodes = np.concatenate(heads[: len(arc_class)]) - node_base
    else:
        arc_classes = arc_nodes = np.zeros(0, dtype=np.int64)
    unscheduled = np.zeros(num_classes, dtype=np.int64)
    unscheduled[active] = solution.flows[placement_arcs: placement_arcs + len(active)]
    return RoundFlows(
        classes=arc_classes[moved], nodes=arc_nodes[moved], pods=flows[moved],
        unscheduled=unscheduled, pruned=frozenset(pruned), cost=solution.cost, arcs=len(solution.flows),
    )
