"""Which nodes a pod class gets arcs to: its cheapest feasible nodes, enough for its pods and its rivals'.

Firmament gives a task arcs to a few preferred machines and one arc to a
cluster aggregator; here a class gets arcs to the nodes where its pods are
cheapest, and the scheduler widens a class to every feasible node when a
solve leaves some of its pods pending, so pruning never leaves a pod out.

A slot is the next pod a node can take, priced at the class's arc cost there
(image pull, preferences) plus the node's spreading step for that pod.
Counting slots rather than nodes matters: a lightly used node's third pod is
often cheaper than a busy node's first. Each class keeps the nodes whose
first slot is priced within the price at which its candidate nodes together
offer ``CANDIDATE_FACTOR`` times the pending pods of every class sharing its
image: those classes compete for the same warm nodes (a pull costs more than
any spreading), so a class sized only for itself would crowd onto the nodes
its rivals fill.

Everything is computed on classes-by-nodes matrices and (class, node) pair
arrays, with histograms over the (small, integer) prices in place of sorts.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from katyusha.core.placement.constraints import ClusterIndex

CANDIDATE_FACTOR = 2  # candidate slots per pending pod of the class and its rivals
MIN_CANDIDATES = 32  # and at least this many slots
STEPS_COUNTED = 5  # slots counted over a node's first steps, its first 16 pods


def slots_needed(index: ClusterIndex, active: np.ndarray, pending: np.ndarray) -> np.ndarray:
    """Per active class (indices ``active``, ``pending`` pods each): the slots its candidates must offer."""
    image = index.class_image[active]
    rivals = np.bincount(image, pending)[image].astype(np.int64)
    return np.maximum(np.ceil(CANDIDATE_FACTOR * rivals).astype(np.int64), MIN_CANDIDATES)


def candidate_arcs(feasible: np.ndarray, cost: np.ndarray, need: np.ndarray,
                   steps: tuple[np.ndarray, np.ndarray], first: np.ndarray,
                   room: Callable[[np.ndarray, np.ndarray], np.ndarray],
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Candidate (class row, node) pairs, grouped by row in node order, with the pods each can hold,
    and each row's count of feasible nodes.

    ``feasible`` and ``cost`` are rows (classes) by nodes: whether a pod fits,
    and a pod's arc cost. ``steps`` is the nodes' spreading steps,
    (capacity, unit cost), each steps by nodes; ``first`` the unit cost of
    each node's next pod; ``room(rows, cols)`` how many pods each pair can
    hold. A row whose feasible nodes offer fewer than ``need`` slots keeps
    them all.
    """
    rank = cost + first[None, :]
    width = int(cost.max()) + int(first.max()) + 2 if rank.size else 2
    rank[~feasible] = width - 1  # past every threshold
    # A bound first, counting each node as one slot (it offers at least one).
    rows, cols, counts = _cheapest_nodes(rank, width, need)
    held = room(rows, cols)
    if not len(rows):
        return rows, cols, held, counts
    # Then the slots those nodes offer: min(fit, pending) pods spread over the node's steps.
    caps, unit = steps
    left = held.copy()
    price = cost.ravel()[rows * cost.shape[1] + cols]
    top = int(price.max()) + int(unit.max()) + 1
    base = rows * top + price
    by_price = np.zeros(len(need) * top)
    # Steps past a node's sixteenth pod are not counted: a node then offers fewer slots, so a
    # class gets more nodes, never fewer, and the work stays small.
    for step in range(min(STEPS_COUNTED, len(caps))):
        take = np.minimum(caps[step, cols], left)
        left -= take
        by_price += np.bincount(unit[step, cols] + base, take, len(by_price))
    by_price = by_price.reshape(len(need), top)
    reached = by_price.cumsum(axis=1) >= need[:, None]
    threshold = np.where(reached.any(axis=1), reached.argmax(axis=1), top)
    keep = price + first[cols] <= threshold[rows]
    return rows[keep], cols[keep], held[keep], counts


def _cheapest_nodes(rank: np.ndarray, width: int,
                    need: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``rank`` (below ``width - 1``; ``width - 1`` marks infeasible), the ``need``
    lowest-ranked nodes, or every feasible one if fewer; ties at the threshold in node order.

    Returns (rows, cols) grouped by row, and each row's count of feasible nodes.
    """
    count = len(need)
    offsets = np.arange(count, dtype=np.int64) * width
    keys = (rank + offsets[:, None]).ravel()
    cumulative = np.bincount(keys, minlength=count * width).reshape(count, width).cumsum(axis=1)
    feasible = cumulative[:, -2]
    reached = cumulative[:, :-1] >= need[:, None]
    threshold = np.where(reached.any(axis=1), reached.argmax(axis=1), width - 2)
    picked = np.flatnonzero(rank <= threshold[:, None])
    rows, cols = np.divmod(picked, rank.shape[1])
    tie = keys[picked] == (threshold + offsets)[rows]
    if tie.any():
        # Nodes ranked at the threshold may be more than needed: keep the first ones.
        below = np.where(threshold > 0, cumulative[np.arange(count), np.maximum(threshold - 1, 0)], 0)
        seen = np.cumsum(tie)
        starts = np.searchsorted(rows, np.arange(count))
        before_row = np.where(starts > 0, seen[np.maximum(starts - 1, 0)], 0)
        position = seen - tie - before_row[rows]
        keep = ~tie | (position < (need - below)[rows])
        rows, cols = rows[keep], cols[keep]
    return rows, cols, feasible
