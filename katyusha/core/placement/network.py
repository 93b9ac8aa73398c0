"""The flow network for one solve, Firmament-style, over pod classes instead of single pods.

::

    class c (supply = its pending pods) ──► node n ──► sink (demand = all pending pods)
              cap: pods of c that fit n          parallel arcs of rising cost:
              cost: image pull + preferences     the convex spreading cost

The solve is a maximum flow of least cost: as many pods placed as the arcs
allow, and among such placements the cheapest. That is the cost function's
order (a pod left pending costs more than any placement) without an arc of
prohibitive cost, whose range would slow the cost-scaling solver.

One arc per (class, node) that can take the class, with the pods-that-fit as
capacity, instead of one arc per (pod, node): the same optimum with far fewer
arcs. As Firmament does with preference arcs, a class gets arcs only to its
cheapest candidate nodes (see candidates.py); a class that the solve
leaves partly unscheduled is solved again with arcs to every node that can
take it, so pruning never leaves a pod out. Capacities are per class and per
resource; pods of several classes may together exceed a node, which the
scheduler repairs after the solve.

The network is built from classes-by-nodes matrices in a handful of numpy
operations, whatever the number of classes: no Python loop over classes or
nodes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from katyusha.core.placement.candidates import candidate_arcs, slots_needed
from katyusha.core.placement.constraints import ClusterIndex, NodeState
from katyusha.core.placement.cost import step_of
from katyusha.core.placement.solver import MinCostFlowSolver


@dataclass(frozen=True)
class RoundFlows:
    """Where one solve sends pods: parallel arrays (class, node, pods), nonzero flows only, by class."""

    classes: np.ndarray
    nodes: np.ndarray
    pods: np.ndarray
    unscheduled: np.ndarray  # per class, pods the solve left pending
    pruned: frozenset[int]  # classes whose arcs went to some of their feasible nodes only
    cost: int
    arcs: int


def solve_round(index: ClusterIndex, state: NodeState, remaining: np.ndarray,
                make_solver: Callable[[], MinCostFlowSolver],
                unpruned: frozenset[int] = frozenset()) -> RoundFlows:
    """Build the network for the ``remaining`` pods of each class on ``state`` and solve it.

    Classes in ``unpruned`` get arcs to every node that can take them, the
    others to their candidates (candidates.py). Raises SolverError only if the
    solver itself fails: a maximum flow always exists.
    """
    active = np.flatnonzero(remaining > 0)
    pending = remaining[active]
    feasible = state.feasible_matrix(active)
    cost = index.arc_costs()[active]
    nodes = np.arange(len(index.names))
    seg_caps, seg_costs = index.spread.segments(nodes, state.placed, state.slots)
    first = np.take_along_axis(seg_costs, step_of(state.placed + 1)[None, :], axis=0)[0].astype(np.int32)

    def room(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return np.minimum(state.fit_pairs(active[rows], cols), pending[rows])

    wide = np.isin(active, np.fromiter(unpruned, np.int64, len(unpruned)))
    if wide.all():
        rows, cols = np.nonzero(feasible)
        caps, counts = room(rows, cols), np.bincount(rows, minlength=len(active))
    else:
        need = slots_needed(index, active, pending)
        rows, cols, caps, counts = candidate_arcs(feasible, cost, need, (seg_caps, seg_costs), first, room)
        if wide.any():
            narrow = ~wide[rows]
            every_row, every_col = np.nonzero(feasible[wide])
            every_row = np.flatnonzero(wide)[every_row]
            rows = np.concatenate([rows[narrow], every_row])
            cols = np.concatenate([cols[narrow], every_col])
            caps = np.concatenate([caps[narrow], room(every_row, every_col)])
            order = np.lexsort((cols, rows))  # grouped by class again, in node order
            rows, cols, caps = rows[order], cols[order], caps[order]
    cut = np.bincount(rows, minlength=len(active)) < counts
    pruned = frozenset(active[cut].tolist())
    costs = cost[rows, cols]
    used = np.unique(cols)
    node_id = np.zeros(len(nodes), dtype=np.int64)
    node_id[used] = len(active) + np.arange(len(used))
    sink = len(active) + len(used)

    inbound = np.bincount(cols, caps, len(nodes))[used].astype(np.int64)
    seg_tails, seg_caps, seg_costs = _spread_arcs(inbound, seg_caps[:, used], seg_costs[:, used])
    solver = make_solver()
    solver.add_arcs(
        np.concatenate([rows, len(active) + seg_tails]),
        np.concatenate([node_id[cols], np.full(len(seg_tails), sink, dtype=np.int64)]),
        np.concatenate([caps, seg_caps]),
        np.concatenate([costs, seg_costs]),
    )
    solver.set_supplies(np.append(np.arange(len(active)), sink), np.append(pending, -pending.sum()))
    # The most pods the arcs can carry, at least cost: a pod is left out only if no node can take it.
    solution = solver.solve_max_flow()

    placed = solution.flows[: len(rows)]
    moved = np.flatnonzero(placed)
    unscheduled = np.zeros(len(remaining), dtype=np.int64)
    unscheduled[active] = pending - np.bincount(rows, placed, len(active)).astype(np.int64)
    return RoundFlows(
        classes=active[rows[moved]], nodes=cols[moved], pods=placed[moved], unscheduled=unscheduled,
        pruned=pruned, cost=solution.cost, arcs=len(solution.flows),
    )


def _spread_arcs(inbound: np.ndarray, caps: np.ndarray,
                 costs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Node-to-sink arcs (tail node's column, capacity, cost), as few as give the same optimum.

    A node never needs more capacity to the sink than its arcs bring in, so
    steps past that are cut; steps of equal cost (a full node costs
    SPREAD_COST whatever its step) are merged into one arc.
    """
    room = np.minimum(inbound, caps.sum(axis=0))
    before = np.cumsum(caps, axis=0) - caps
    caps = np.clip(room[None, :] - before, 0, caps)
    for step in range(len(caps) - 1, 0, -1):
        same = costs[step] == costs[step - 1]
        caps[step - 1] += np.where(same, caps[step], 0)
        caps[step] = np.where(same, 0, caps[step])
    steps, where = np.nonzero(caps)
    return where, caps[steps, where], costs[steps, where]
