"""Placement: where pending pods go, by min-cost flow over the whole batch, and a pod-at-a-time peer.

:class:`FlowScheduler` is the scheduler; :class:`PodAtATimeScheduler` is the
Kubernetes-style baseline it is measured against; :func:`evaluate` is the one
cost function both are judged by. See docs/placement.md.
"""

try:  # nonna, sim-backend and `katyusha serve` install without these (pyproject's extras)
    import numpy  # noqa: F401
    import ortools  # noqa: F401
except ImportError as exc:
    raise ImportError(
        f"katyusha's placement needs {exc.name or 'ortools and numpy'}, which the base install "
        "leaves out: pip install 'katyusha[placement]'"
    ) from exc

from katyusha.core.placement.baseline import PodAtATimeScheduler
from katyusha.core.placement.flow import FlowScheduler
from katyusha.core.placement.model import (
    Cluster,
    FitBasis,
    LabelRequirement,
    Node,
    NodeAffinity,
    Placement,
    PodClass,
    RunningPod,
    Taint,
    Toleration,
)
from katyusha.core.placement.score import CostReport, evaluate
from katyusha.core.placement.solver import (
    FlowSolution,
    MinCostFlowSolver,
    OrToolsSolver,
    SolverError,
    SuccessiveShortestPaths,
)

__all__ = [
    "Cluster", "CostReport", "FitBasis", "FlowScheduler", "FlowSolution", "LabelRequirement",
    "MinCostFlowSolver", "Node", "NodeAffinity", "OrToolsSolver", "Placement", "PodAtATimeScheduler",
    "PodClass", "RunningPod", "SolverError", "SuccessiveShortestPaths", "Taint", "Toleration",
    "evaluate",
]
