"""The pod-at-a-time baseline, in the manner of the Kubernetes default scheduler.

For each pod in turn: filter every node (required node affinity, NoSchedule
taints, CPU, memory, pods per node, at most k pods of the service per node),
score every node that passes, take the best (ties broken at random, as
kube-scheduler's selectHost does), commit, next pod. It scans all nodes for
every pod: kube-scheduler's percentageOfNodesToScore sampling is not used,
so the baseline's placements are as good as per-pod greed can make them.

Scores follow kube-scheduler's default plugins and weights, each 0..100:
NodeResourcesFit LeastAllocated (1), NodeResourcesBalancedAllocation (1),
ImageLocality (1; scaled by image size times the fraction of nodes holding
the image, with ``IMAGE_MB`` for every image, as the model carries no sizes),
NodeAffinity preferred terms (2) and TaintToleration PreferNoSchedule (3).
Filtering and scoring are numpy operations over all nodes, once per pod.
"""

from __future__ import annotations

import random

import numpy as np

from katyusha.core.placement.constraints import ClusterIndex, NodeState
from katyusha.core.placement.model import Cluster, Placement, PodClass, check_pending
from katyusha.core.placement.outcome import assemble, gang_counts, incomplete_gangs

IMAGE_MB = 500
IMAGE_MIN_MB, IMAGE_MAX_MB = 23, 1000  # kube-scheduler's ImageLocality thresholds
WEIGHT_FIT, WEIGHT_BALANCED, WEIGHT_IMAGE, WEIGHT_AFFINITY, WEIGHT_TAINT = 1, 1, 1, 2, 3


class PodAtATimeScheduler:
    """Places pods one by one, each on the best-scoring node that fits it."""

    def __init__(self, rng: random.Random | None = None):
        self.rng = rng if rng is not None else random.Random(0)

    def schedule(self, cluster: Cluster, pending: tuple[PodClass, ...] | list[PodClass]) -> Placement:
        """Where each pending pod goes, and why each pod left pending stays there.

        Raises BadInput when class or pod names repeat; never over-commits a node.
        """
        classes = check_pending(pending)
        index = ClusterIndex(cluster, classes)
        excluded: dict[str, str] = {}
        while True:
            state = index.state()
            chosen = self._place(index, state, gang_counts(classes, excluded))
            dropped = incomplete_gangs(classes, chosen, excluded)
            if not dropped:
                return assemble(classes, index.names, chosen, state, excluded, rounds=1)
            excluded.update(dropped)

    def _static_scores(self, index: ClusterIndex, c: int) -> np.ndarray:
        """The scores that do not change as pods are placed: image, affinity, taints."""
        present = index.has_image(c)
        spread = present.mean() if len(present) else 0.0
        sized = np.clip(IMAGE_MB * spread, IMAGE_MIN_MB, IMAGE_MAX_MB)
        image = np.where(present, 100.0 * (sized - IMAGE_MIN_MB) / (IMAGE_MAX_MB - IMAGE_MIN_MB), 0.0)
        cls = index.classes[c]
        allowed = index.static_mask(c)
        matched = sum(w for w, _ in cls.node_affinity.preferred) - index.unmet_preferred(c)
        top = matched[allowed].max() if allowed.any() else 0
        affinity = 100.0 * matched / top if top > 0 else np.zeros(len(allowed))
        taints = index.untolerated_preferred(c)
        worst = taints[allowed].max() if allowed.any() else 0
        taint = 100.0 - 100.0 * taints / worst if worst else np.full(len(allowed), 100.0)
        return WEIGHT_IMAGE * image + WEIGHT_AFFINITY * affinity + WEIGHT_TAINT * taint

    def _place(self, index: ClusterIndex, state: NodeState, counts: list[int]):
        chosen: list[list[tuple[int, int]]] = [[] for _ in index.classes]
        cpu_cap = index.cpu_cap.astype(float)
        ram_cap = index.ram_cap.astype(float)
        for c, count in enumerate(counts):
            if not count:
                continue
            cls = index.classes[c]
            allowed = index.static_mask(c)
            static = self._static_scores(index, c)
            counter = state.service_counts[cls.service]
            per_node: dict[int, int] = {}
            for _ in range(count):
                fits = allowed & (state.cpu_free >= cls.cpu) & (state.ram_free >= cls.ram) & (state.slots > 0)
                if cls.max_per_node is not None:
                    fits &= counter < cls.max_per_node
                where = np.flatnonzero(fits)
                if not len(where):
                    continue  # stays pending; the reason is read from the final state
                cpu_left = (state.cpu_free[where] - cls.cpu) / cpu_cap[where]
                ram_left = (state.ram_free[where] - cls.ram) / ram_cap[where]
                least = 50.0 * (cpu_left + ram_left)
                balanced = 100.0 * (1.0 - np.abs(cpu_left - ram_left) / 2.0)
                score = WEIGHT_FIT * least + WEIGHT_BALANCED * balanced + static[where]
                best = np.flatnonzero(score == score.max())
                n = int(where[best[0] if len(best) == 1 else best[self.rng.randrange(len(best))]])
                state.commit(c, n, 1)
                per_node[n] = per_node.get(n, 0) + 1
            chosen[c] = list(per_node.items())
        return chosen
