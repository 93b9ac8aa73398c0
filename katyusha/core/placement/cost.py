"""The one cost function both schedulers are judged by, and the pieces the flow network is built from.

A placement's cost is a sum of integers (OR-Tools needs integer costs):

- ``PULL_COST`` for every pod placed on a node whose disk lacks its image: that
  pod waits for a pull before its cold start; a warmdisk node starts it sooner.
- spreading: the m-th pod this batch puts on a node costs ``SPREAD_COST`` times
  the node's dominant utilisation after it, in steps of doubling width
  (``SEGMENTS`` of them), so the marginal cost rises as a node fills: a convex
  cost that the network expresses exactly as parallel node-to-sink arcs of
  increasing cost.
- preferences: the weights of unmet preferred node-affinity terms, and
  ``PREFER_NO_SCHEDULE_COST`` for each PreferNoSchedule taint not tolerated.
- ``UNSCHEDULED_COST`` for every pod left pending; it exceeds any placement's
  cost, so leaving a pod out is only ever the answer when nothing can take it.

Utilisation is counted in mean-sized batch pods. The steps depend on the
cluster before the batch and on the batch's mean request, never on the scheduler, so the same assignment costs the same
whichever scheduler produced it. A placement is scored by
:func:`katyusha.core.placement.score.evaluate`, which prices it with these pieces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from katyusha.core.placement.model import PodClass

PULL_COST = 300
SPREAD_COST = 200
SEGMENTS = 8
PREFER_NO_SCHEDULE_COST = 100
UNSCHEDULED_COST = 100_000


def step_of(m):
    """Which spreading step the m-th batch pod on a node falls in (m >= 1; scalar or array).

    Steps double in width (1, 1, 2, 4, 8, ... pods), so the first pods on a
    node are priced finely, which is what makes a batch spread, while a node
    still needs only ``SEGMENTS`` arcs to the sink.
    """
    m = np.asarray(m)
    step = np.ceil(np.log2(np.maximum(m, 1))).astype(np.int64)
    return np.minimum(step, SEGMENTS - 1)


@dataclass(frozen=True)
class SpreadModel:
    """Per node: dominant utilisation before the batch (``base``), one mean batch pod's share, and
    ``steps``, the unit cost of every spreading step (``SEGMENTS`` rows by nodes)."""

    base: np.ndarray  # float, 0..1
    share: np.ndarray  # float
    steps: np.ndarray  # int64, SEGMENTS x nodes

    def step_cost(self, nodes, step):
        """Unit cost of ``step`` on ``nodes``: the utilisation at the step's last pod, scaled."""
        return self.steps[step, nodes]

    def marginal(self, node: int, m: int) -> int:
        """Cost of the m-th batch pod (m >= 1) on node index ``node``."""
        return int(self.steps[int(step_of(m)), node])

    def total(self, node: int, count: int) -> int:
        """Cost of ``count`` batch pods on node index ``node``."""
        return sum(self.marginal(node, m) for m in range(1, count + 1))

    def segments(self, nodes: np.ndarray, placed: np.ndarray, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Node-to-sink arcs for one solve: (capacity, unit cost), each ``SEGMENTS`` rows by ``nodes``.

        ``placed`` counts batch pods already committed to each node; ``slots``
        is how many more each node may take. The last step takes every slot
        left, so each column's capacities sum to ``slots``.
        """
        placed = np.asarray(placed, dtype=np.int64)
        width = 2 ** np.arange(SEGMENTS - 1, dtype=np.int64)  # pods up to the end of each step
        low = np.concatenate(([0], width[:-1]))
        bounded = np.clip(width[:, None] - np.maximum(placed[None, :], low[:, None]), 0, None)
        caps = np.empty((SEGMENTS, len(placed)), dtype=np.int64)
        left = np.asarray(slots, dtype=np.int64).copy()
        for step in range(SEGMENTS - 1):
            caps[step] = np.minimum(bounded[step], left)
            left -= caps[step]
        caps[-1] = left
        return caps, self.steps[:, nodes]


def spread_model(cpu_cap, ram_cap, cpu_used, ram_used, classes: tuple[PodClass, ...]) -> SpreadModel:
    """The spreading steps for a batch on nodes with these capacities and uses (arrays over nodes)."""
    count = sum(len(c.pods) for c in classes)
    mean_cpu = sum(c.cpu * len(c.pods) for c in classes) / count if count else 1.0
    mean_ram = sum(c.ram * len(c.pods) for c in classes) / count if count else 1.0
    base = np.clip(np.maximum(cpu_used / cpu_cap, ram_used / ram_cap), 0.0, 1.0)
    share = np.maximum(mean_cpu / cpu_cap, mean_ram / ram_cap)
    pods_at_end = 2.0 ** np.arange(SEGMENTS)[:, None]
    util = np.minimum(1.0, base[None, :] + pods_at_end * share[None, :])
    steps = np.rint(SPREAD_COST * util).astype(np.int64)
    return SpreadModel(base=base, share=share, steps=steps)
