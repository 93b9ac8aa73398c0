"""Turning per-class node counts into a placement, and the all-or-nothing rule for gangs.

Both schedulers end the same way: pods of a class are handed to nodes in the
class's pod order and in the order the scheduler chose the nodes, so the same
input always names the same pod on the same node; every pod not placed gets
the reason its class could not go anywhere.
"""

from __future__ import annotations

from collections import defaultdict

from katyusha.core.placement.constraints import NodeState
from katyusha.core.placement.model import Placement, PodClass


def incomplete_gangs(classes: tuple[PodClass, ...], chosen: list[list[tuple[int, int]]],
                     excluded: dict[str, str]) -> dict[str, str]:
    """Gangs, not yet excluded, with some but not all pods placed, each with the reason to drop it."""
    want: dict[str, int] = defaultdict(int)
    got: dict[str, int] = defaultdict(int)
    for c, cls in enumerate(classes):
        if cls.gang is not None and cls.gang not in excluded:
            want[cls.gang] += len(cls.pods)
            got[cls.gang] += sum(k for _, k in chosen[c])
    return {
        gang: f"gang {gang}: only {got[gang]} of {want[gang]} pods fit, and a gang is placed whole or not at all"
        for gang in want
        if got[gang] < want[gang]
    }


def gang_counts(classes: tuple[PodClass, ...], excluded: dict[str, str]) -> list[int]:
    """Pods each class still has to place: none for classes of an excluded gang."""
    return [0 if c.gang in excluded else len(c.pods) for c in classes]


def assemble(classes: tuple[PodClass, ...], names: list[str], chosen: list[list[tuple[int, int]]],
             state: NodeState, excluded: dict[str, str], rounds: int,
             fallback: dict[int, str] | None = None) -> Placement:
    """The placement from each class's (node index, pods) choices; the rest unscheduled with reasons."""
    assignments: dict[str, str] = {}
    unscheduled: dict[str, str] = {}
    for c, cls in enumerate(classes):
        targets = [names[n] for n, k in chosen[c] for _ in range(k)]
        assignments.update(zip(cls.pods, targets, strict=False))  # the pods beyond stay pending
        rest = cls.pods[len(targets):]
        if not rest:
            continue
        if cls.gang in excluded:
            why = excluded[cls.gang]
        elif fallback and c in fallback:
            why = fallback[c]
        else:
            why = state.reason(c)
        for pod in rest:
            unscheduled[pod] = why
    return Placement(assignments=assignments, unscheduled=unscheduled, rounds=rounds)
