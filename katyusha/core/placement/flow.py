"""The batch scheduler: every pending pod placed by one min-cost flow solve (Firmament-style).

A solve places as many of each class's pods as the arcs allow, at least total
cost (image pulls, spreading, preferences; see cost.py). The network's capacities are exact for
one class on a node but not for several classes sharing it (CPU and RAM are two
resources, a flow capacity is one number), so after a solve each node keeps
what fits, in class order, and the pods it turns away go into another solve
on what is left. A gang that does not fit whole is dropped and the batch is
solved again without it, so its capacity goes to others.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from katyusha.core.placement.constraints import NO_LIMIT, ClusterIndex, NodeState
from katyusha.core.placement.model import Cluster, Placement, PodClass, check_pending
from katyusha.core.placement.network import RoundFlows, solve_round
from katyusha.core.placement.outcome import assemble, gang_counts, incomplete_gangs
from katyusha.core.placement.solver import MinCostFlowSolver, OrToolsSolver

MAX_ROUNDS = 8


class FlowScheduler:
    """Places a batch of pod classes on a cluster by min-cost flow; deterministic for the same input.

    ``prune=False`` gives every class arcs to every feasible node instead of
    its cheapest candidates: slower, and the reference that pruning's cost is
    measured against.
    """

    def __init__(self, make_solver: Callable[[], MinCostFlowSolver] = OrToolsSolver,
                 max_rounds: int = MAX_ROUNDS, prune: bool = True):
        self.make_solver = make_solver
        self.max_rounds = max_rounds
        self.prune = prune
        self.last_solves = 0
        self.last_arcs = 0

    def schedule(self, cluster: Cluster, pending: tuple[PodClass, ...] | list[PodClass]) -> Placement:
        """Where each pending pod goes, and why each pod left pending stays there.

        Raises BadInput when class or pod names repeat; never over-commits a node.
        """
        classes = check_pending(pending)
        index = ClusterIndex(cluster, classes)
        excluded: dict[str, str] = {}
        self.last_solves = self.last_arcs = 0
        while True:
            state = index.state()
            chosen, rounds, stuck = self._place(index, state, np.array(gang_counts(classes, excluded),
                                                                       dtype=np.int64))
            dropped = incomplete_gangs(classes, chosen, excluded)
            if not dropped:
                return assemble(classes, index.names, chosen, state, excluded, rounds, stuck)
            excluded.update(dropped)

    def _place(self, index: ClusterIndex, state: NodeState, remaining: np.ndarray):
        chosen: list[list[tuple[int, int]]] = [[] for _ in index.classes]
        rounds = 0
        turned_away = 0
        unpruned = frozenset() if self.prune else frozenset(range(len(index.classes)))
        for rounds in range(1, self.max_rounds + 1):  # noqa: B007 - rounds is reported
            if not remaining.any():
                break
            flows = solve_round(index, state, remaining, self.make_solver, unpruned)
            self.last_solves += 1
            self.last_arcs += flows.arcs
            turned_away = self._commit(state, flows, chosen, remaining)
            # Pods left out while some of their class's nodes had no arc get every node next time.
            widen = {c for c in flows.pruned if flows.unscheduled[c]}
            unpruned = unpruned | widen
            if not turned_away and not widen:
                break
            turned_away += int(sum(flows.unscheduled[c] for c in widen))
        stuck = {}
        if turned_away:
            for c in np.flatnonzero(remaining):
                if state.fit_counts(int(c)).any():
                    stuck[int(c)] = f"not placed within {self.max_rounds} solver rounds"
        return chosen, rounds, stuck

    @staticmethod
    def _commit(state: NodeState, flows: RoundFlows, chosen: list[list[tuple[int, int]]],
                remaining: np.ndarray) -> int:
        """Commit the solve's flows that fit; returns how many pods nodes turned away."""
        index = state.index
        classes, nodes, pods = flows.classes, flows.nodes, flows.pods
        size = len(index.names)
        over = (np.bincount(nodes, index.class_cpu[classes] * pods, size) > state.cpu_free) | (
            np.bincount(nodes, index.class_ram[classes] * pods, size) > state.ram_free) | (
            np.bincount(nodes, pods, size) > state.slots)
        services = index.class_service[classes]
        limited = np.flatnonzero(index.service_limit[services] < NO_LIMIT)
        if len(limited):
            keys, where = np.unique(services[limited] * size + nodes[limited], return_inverse=True)
            added = np.bincount(where, pods[limited])
            full = state.service_used.ravel()[keys] + added > index.service_limit[keys // size]
            over[keys[full] % size] = True
        fine = ~over[nodes]
        state.commit_many(classes[fine], nodes[fine], pods[fine])
        take = np.where(fine, pods, 0)
        # An over-full node keeps its biggest pods first (their dominant share of the
        # node), as first-fit decreasing does: a small pod turned away fits elsewhere more
        # often than a big one. Ties go to flow order (grouped by class), so the same
        # input keeps the same pods.
        over_flows = np.flatnonzero(~fine)
        share = np.maximum(index.class_cpu[classes[over_flows]] / index.cpu_cap[nodes[over_flows]],
                           index.class_ram[classes[over_flows]] / index.ram_cap[nodes[over_flows]])
        for i in over_flows[np.lexsort((over_flows, -share))].tolist():
            c, n = int(classes[i]), int(nodes[i])
            take[i] = min(int(pods[i]), state.room_on(c, n))
            if take[i]:
                state.commit(c, n, int(take[i]))
        remaining -= np.bincount(classes, take, len(remaining)).astype(np.int64)
        kept = take > 0
        classes, nodes, take = classes[kept], nodes[kept], take[kept]
        # Flows come grouped by class: one slice a class.
        starts = np.flatnonzero(np.diff(classes, prepend=-1))
        ends = np.append(starts[1:], len(classes)) if len(starts) else starts
        for c, start, end in zip(classes[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
            chosen[c].extend(zip(nodes[start:end].tolist(), take[start:end].tolist(), strict=True))
        return int(pods.sum() - take.sum())
