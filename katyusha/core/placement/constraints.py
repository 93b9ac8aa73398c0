"""Which nodes can take a pod class, how many of its pods, and why not: shared by both schedulers.

Static constraints (required node affinity, NoSchedule taints) and preference
costs depend only on a node's labels and taints, so they are computed once per
distinct (labels, taints) signature and broadcast to every node with it: node
pools make signatures few, which keeps a 12,500-node cluster cheap.

Dynamic constraints (CPU, RAM, pods per node, at most k pods of a service per
node) live in :class:`NodeState`, which both schedulers update as they commit
pods, so neither can over-commit a node.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from katyusha.core.placement.cost import PREFER_NO_SCHEDULE_COST, spread_model
from katyusha.core.placement.model import Cluster, FitBasis, PodClass


class ClusterIndex:
    """Arrays over nodes for one cluster and batch; per-class static masks computed on demand."""

    def __init__(self, cluster: Cluster, classes: tuple[PodClass, ...]):
        self.cluster = cluster
        self.classes = classes
        nodes = cluster.nodes
        self.names = [n.name for n in nodes]
        self.node_index = {name: i for i, name in enumerate(self.names)}
        size = len(nodes)
        self.cpu_cap = np.array([n.cpu for n in nodes], dtype=np.int64)
        self.ram_cap = np.array([n.ram for n in nodes], dtype=np.int64)
        self.max_pods = np.array([n.max_pods for n in nodes], dtype=np.int64)
        self.cpu_used = np.zeros(size, dtype=np.int64)
        self.ram_used = np.zeros(size, dtype=np.int64)
        self.pods = np.zeros(size, dtype=np.int64)
        services = {c.service for c in classes}
        self.service_counts = {s: np.zeros(size, dtype=np.int64) for s in services}
        measured = cluster.basis is FitBasis.MEASURED
        for pod in cluster.running:
            i = self.node_index[pod.node]
            cpu, ram = pod.cpu, pod.ram
            if measured:
                cpu = pod.measured_cpu if pod.measured_cpu is not None else cpu
                ram = pod.measured_ram if pod.measured_ram is not None else ram
            self.cpu_used[i] += cpu
            self.ram_used[i] += ram
            self.pods[i] += 1
            if pod.service in self.service_counts:
                self.service_counts[pod.service][i] += 1

        signatures: dict[tuple, int] = {}
        self.signature = np.empty(size, dtype=np.int64)
        self._signature_nodes = []
        for i, node in enumerate(nodes):
            key = (tuple(sorted(node.labels.items())), node.taints)
            if key not in signatures:
                signatures[key] = len(signatures)
                self._signature_nodes.append(node)
            self.signature[i] = signatures[key]

        self.spread = spread_model(self.cpu_cap, self.ram_cap, self.cpu_used, self.ram_used, classes)
        self._static: dict[int, tuple[np.ndarray, ...]] = {}
        self._images: dict[str, np.ndarray] = {}

    def _class_static(self, c: int) -> tuple[np.ndarray, ...]:
        """Per node: affinity allows, NoSchedule taints tolerated, unmet preferred weight,
        untolerated PreferNoSchedule taints."""
        if c not in self._static:
            cls = self.classes[c]
            rows = [
                (
                    cls.node_affinity.allows(node.labels),
                    not cls.untolerated(node.taints, "NoSchedule"),
                    cls.node_affinity.unmet_weight(node.labels),
                    len(cls.untolerated(node.taints, "PreferNoSchedule")),
                )
                for node in self._signature_nodes
            ]
            columns = list(zip(*rows, strict=True)) if rows else [(), (), (), ()]
            self._static[c] = (
                np.array(columns[0], dtype=bool)[self.signature],
                np.array(columns[1], dtype=bool)[self.signature],
                np.array(columns[2], dtype=np.int64)[self.signature],
                np.array(columns[3], dtype=np.int64)[self.signature],
            )
        return self._static[c]

    def unmet_preferred(self, c: int) -> np.ndarray:
        """Per node: the weight of class ``c``'s preferred affinity terms the node does not meet."""
        return self._class_static(c)[2]

    def untolerated_preferred(self, c: int) -> np.ndarray:
        """Per node: how many PreferNoSchedule taints class ``c`` does not tolerate."""
        return self._class_static(c)[3]

    def static_mask(self, c: int) -> np.ndarray:
        """Nodes that class ``c``'s required affinity and NoSchedule taints allow."""
        affinity_ok, taint_ok, _, _ = self._class_static(c)
        return affinity_ok & taint_ok

    def preference_cost(self, c: int) -> np.ndarray:
        """Per node: unmet preferred-affinity weight plus the untolerated PreferNoSchedule taints' cost."""
        _, _, unmet, untolerated = self._class_static(c)
        return unmet + PREFER_NO_SCHEDULE_COST * untolerated

    def has_image(self, c: int) -> np.ndarray:
        """Nodes whose disk already holds class ``c``'s image (warmdisk)."""
        if not self._images:
            # One pass over the nodes for every image the batch needs.
            for image in {cls.image for cls in self.classes}:
                self._images[image] = np.zeros(len(self.names), dtype=bool)
            for i, node in enumerate(self.cluster.nodes):
                for image in node.images & self._images.keys():
                    self._images[image][i] = True
        return self._images[self.classes[c].image]

    def state(self) -> NodeState:
        return NodeState(self)


class NodeState:
    """What is left on every node as pods are committed; the only place capacity is spent."""

    def __init__(self, index: ClusterIndex):
        self.index = index
        self.cpu_free = np.maximum(index.cpu_cap - index.cpu_used, 0)
        self.ram_free = np.maximum(index.ram_cap - index.ram_used, 0)
        self.slots = np.maximum(index.max_pods - index.pods, 0)
        self.placed = np.zeros(len(index.names), dtype=np.int64)
        self.service_counts = {s: a.copy() for s, a in index.service_counts.items()}

    def fit_counts(self, c: int) -> np.ndarray:
        """How many pods of class ``c`` each node could take on its own now (0 where it cannot)."""
        cls = self.index.classes[c]
        room = np.minimum(self.cpu_free // cls.cpu, self.ram_free // cls.ram)
        room = np.minimum(room, self.slots)
        if cls.max_per_node is not None:
            room = np.minimum(room, np.maximum(cls.max_per_node - self.service_counts[cls.service], 0))
        return np.where(self.index.static_mask(c), room, 0)

    def room_on(self, c: int, n: int) -> int:
        """How many pods of class ``c`` node index ``n`` can take now."""
        cls = self.index.classes[c]
        room = min(int(self.cpu_free[n]) // cls.cpu, int(self.ram_free[n]) // cls.ram, int(self.slots[n]))
        if cls.max_per_node is not None:
            room = min(room, cls.max_per_node - int(self.service_counts[cls.service][n]))
        return max(room, 0) if self.index.static_mask(c)[n] else 0

    def commit(self, c: int, n: int, k: int) -> None:
        """Spend node ``n``'s capacity on ``k`` pods of class ``c``; the caller has checked it fits."""
        cls = self.index.classes[c]
        self.cpu_free[n] -= cls.cpu * k
        self.ram_free[n] -= cls.ram * k
        self.slots[n] -= k
        self.placed[n] += k
        self.service_counts[cls.service][n] += k

    def commit_many(self, classes: np.ndarray, nodes: np.ndarray, pods: np.ndarray) -> None:
        """:meth:`commit` for parallel arrays at once; the caller has checked that all of it fits."""
        cpu = np.array([c.cpu for c in self.index.classes], dtype=np.int64)[classes] * pods
        ram = np.array([c.ram for c in self.index.classes], dtype=np.int64)[classes] * pods
        np.subtract.at(self.cpu_free, nodes, cpu)
        np.subtract.at(self.ram_free, nodes, ram)
        np.subtract.at(self.slots, nodes, pods)
        np.add.at(self.placed, nodes, pods)
        services = [self.index.classes[c].service for c in classes.tolist()]
        for service, counts in self.service_counts.items():
            mine = np.array([s == service for s in services], dtype=bool)
            if mine.any():
                np.add.at(counts, nodes[mine], pods[mine])

    def reason(self, c: int) -> str:
        """Why no node can take a pod of class ``c`` now, counted over nodes as Kubernetes reports it."""
        cls = self.index.classes[c]
        affinity_ok, taint_ok, _, _ = self.index._class_static(c)
        counts: Counter[str] = Counter()
        counts["node(s) didn't match node affinity"] = int((~affinity_ok).sum())
        counts["node(s) had untolerated NoSchedule taint"] = int((~taint_ok).sum())
        counts["insufficient cpu"] = int((self.cpu_free < cls.cpu).sum())
        counts["insufficient memory"] = int((self.ram_free < cls.ram).sum())
        counts["too many pods"] = int((self.slots < 1).sum())
        if cls.max_per_node is not None:
            full = self.service_counts[cls.service] >= cls.max_per_node
            counts[f"pod anti-affinity: {cls.service} at most {cls.max_per_node} per node"] = int(full.sum())
        parts = [f"{k} {why}" for why, k in counts.most_common() if k]
        total = len(self.index.names)
        able = int((self.fit_counts(c) > 0).sum())
        return f"{able}/{total} nodes are available: " + ", ".join(parts or ["no nodes"])
