"""Which nodes can take a pod class, how many of its pods, and why not: shared by both schedulers.

Static constraints (required node affinity, NoSchedule taints) and preference
costs depend only on a node's taints and on the labels the batch's affinity
terms mention, so they are computed once per distinct signature and broadcast
to every node with it: node pools make signatures few, even when every node
carries a label of its own (a hostname), which keeps a 12,500-node cluster cheap.

Dynamic constraints (CPU, RAM, pods per node, at most k pods of a service per
node) live in :class:`NodeState`, which both schedulers update as they commit
pods, so neither can over-commit a node. It answers per class (the baseline
asks one class at a time) and for many classes at once (the flow network is
built from a classes-by-nodes matrix).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from katyusha.core.placement.cost import PREFER_NO_SCHEDULE_COST, PULL_COST, spread_model
from katyusha.core.placement.model import Cluster, FitBasis, PodClass

NO_LIMIT = np.iinfo(np.int64).max // 4  # a per-node service limit that never binds


class ClusterIndex:
    """Arrays over nodes and over the batch's classes for one cluster and batch."""

    def __init__(self, cluster: Cluster, classes: tuple[PodClass, ...]):
        self.cluster = cluster
        self.classes = classes
        nodes = cluster.nodes
        size = len(nodes)
        self.names = [n.name for n in nodes]
        self.node_index = {name: i for i, name in enumerate(self.names)}
        self.cpu_cap = np.fromiter((n.cpu for n in nodes), np.int64, size)
        self.ram_cap = np.fromiter((n.ram for n in nodes), np.int64, size)
        self.max_pods = np.fromiter((n.max_pods for n in nodes), np.int64, size)

        self.class_cpu = np.fromiter((c.cpu for c in classes), np.int64, len(classes))
        self.class_ram = np.fromiter((c.ram for c in classes), np.int64, len(classes))
        self.class_limit = np.fromiter(
            (NO_LIMIT if c.max_per_node is None else c.max_per_node for c in classes), np.int64, len(classes))
        self.services = list(dict.fromkeys(c.service for c in classes))
        service_of = {s: i for i, s in enumerate(self.services)}
        self.class_service = np.fromiter((service_of[c.service] for c in classes), np.int64, len(classes))
        # A service's pods on a node are held to the tightest limit any of its classes asks for.
        self.service_limit = np.full(len(self.services), NO_LIMIT, dtype=np.int64)
        np.minimum.at(self.service_limit, self.class_service, self.class_limit)

        self._count_running(cluster, service_of)
        self._index_signatures(nodes, classes)
        self._index_images(nodes, classes)
        self.spread = spread_model(self.cpu_cap, self.ram_cap, self.cpu_used, self.ram_used, classes)
        self._rows: dict[int, tuple[np.ndarray, ...]] = {}
        self._masks: dict[int, np.ndarray] = {}
        self._static: np.ndarray | None = None
        self._costs: np.ndarray | None = None

    def _count_running(self, cluster: Cluster, service_of: dict[str, int]) -> None:
        size = len(self.names)
        where, get = self.node_index, service_of.get
        running = cluster.running
        node = np.array([where[p.node] for p in running], dtype=np.int64)
        service = np.array([get(p.service, -1) for p in running], dtype=np.int64)
        if cluster.basis is FitBasis.MEASURED:
            cpu = [p.cpu if p.measured_cpu is None else p.measured_cpu for p in running]
            ram = [p.ram if p.measured_ram is None else p.measured_ram for p in running]
        else:
            cpu = [p.cpu for p in running]
            ram = [p.ram for p in running]
        self.cpu_used = np.bincount(node, np.array(cpu, dtype=np.float64), size).astype(np.int64)
        self.ram_used = np.bincount(node, np.array(ram, dtype=np.float64), size).astype(np.int64)
        self.pods = np.bincount(node, minlength=size).astype(np.int64)
        self.service_running = np.zeros((len(self.services), size), dtype=np.int64)
        mine = service >= 0
        np.add.at(self.service_running, (service[mine], node[mine]), 1)

    def _index_signatures(self, nodes, classes: tuple[PodClass, ...]) -> None:
        keys = sorted({req.key for cls in classes for term in cls.node_affinity.required for req in term}
                      | {req.key for cls in classes for _, term in cls.node_affinity.preferred for req in term})
        ids: dict[tuple, int] = {}
        signature = [ids.setdefault((tuple(map(n.labels.get, keys)), n.taints), len(ids)) for n in nodes]
        self.signature = np.array(signature, dtype=np.int64)
        _, first = np.unique(self.signature, return_index=True)
        rep = [nodes[i] for i in first.tolist()]
        # Classes with the same affinity and tolerations (most of a batch) share one evaluation.
        kinds: dict[tuple, int] = {}
        kind = np.array([kinds.setdefault((c.node_affinity, c.tolerations), len(kinds)) for c in classes],
                        dtype=np.int64)
        rules = [classes[i] for i in np.unique(kind, return_index=True)[1].tolist()]
        table = np.array([[(cls.node_affinity.allows(node.labels),
                            not cls.untolerated(node.taints, "NoSchedule"),
                            cls.node_affinity.unmet_weight(node.labels),
                            len(cls.untolerated(node.taints, "PreferNoSchedule")))
                           for node in rep] for cls in rules], dtype=np.int64).reshape(len(rules), len(rep), 4)
        self._allows = table[kind, :, 0].astype(bool)
        self._tolerated = table[kind, :, 1].astype(bool)
        self._unmet = table[kind, :, 2]
        self._untolerated = table[kind, :, 3]

    def _index_images(self, nodes, classes: tuple[PodClass, ...]) -> None:
        images = {image: k for k, image in enumerate(dict.fromkeys(c.image for c in classes))}
        self.class_image = np.fromiter((images[c.image] for c in classes), np.int64, len(classes))
        self.images = np.zeros((len(images), len(nodes)), dtype=bool)
        get = images.get
        found = np.array([get(image, -1) for n in nodes for image in n.images], dtype=np.int64)
        holder = np.repeat(np.arange(len(nodes)), [len(n.images) for n in nodes])
        mine = found >= 0
        self.images[found[mine], holder[mine]] = True

    def _class_static(self, c: int) -> tuple[np.ndarray, ...]:
        """Per node: affinity allows, NoSchedule taints tolerated, unmet preferred weight,
        untolerated PreferNoSchedule taints."""
        row = self._rows.get(c)
        if row is None:
            sig = self.signature
            row = self._rows[c] = (self._allows[c][sig], self._tolerated[c][sig],
                                   self._unmet[c][sig], self._untolerated[c][sig])
        return row

    def unmet_preferred(self, c: int) -> np.ndarray:
        """Per node: the weight of class ``c``'s preferred affinity terms the node does not meet."""
        return self._class_static(c)[2]

    def untolerated_preferred(self, c: int) -> np.ndarray:
        """Per node: how many PreferNoSchedule taints class ``c`` does not tolerate."""
        return self._class_static(c)[3]

    def static_mask(self, c: int) -> np.ndarray:
        """Nodes that class ``c``'s required affinity and NoSchedule taints allow."""
        mask = self._masks.get(c)
        if mask is None:
            # An array of its own, not a row of static_matrix(): numpy's loops run much
            # slower on a bool row that starts at an unaligned offset.
            allows, tolerated, _, _ = self._class_static(c)
            mask = self._masks[c] = allows & tolerated
        return mask

    def preference_cost(self, c: int) -> np.ndarray:
        """Per node: unmet preferred-affinity weight plus the untolerated PreferNoSchedule taints' cost."""
        _, _, unmet, untolerated = self._class_static(c)
        return unmet + PREFER_NO_SCHEDULE_COST * untolerated

    def has_image(self, c: int) -> np.ndarray:
        """Nodes whose disk already holds class ``c``'s image (warmdisk)."""
        return self.images[self.class_image[c]]

    def static_matrix(self) -> np.ndarray:
        """Classes by nodes: the nodes each class's required affinity and NoSchedule taints allow."""
        if self._static is None:
            self._static = (self._allows & self._tolerated)[:, self.signature]
        return self._static

    def arc_costs(self) -> np.ndarray:
        """Classes by nodes: a pod's cost on a node before spreading (image pull and preferences)."""
        if self._costs is None:
            preference = (self._unmet + PREFER_NO_SCHEDULE_COST * self._untolerated).astype(np.int32)
            cost = preference[:, self.signature]  # small integers: int32 halves the memory traffic
            cost += np.multiply(~self.images[self.class_image], PULL_COST, dtype=np.int32)
            self._costs = cost
        return self._costs

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
        self.service_used = index.service_running.copy()
        # Per service, a row of service_used (a view: committing updates both).
        self.service_counts = {s: self.service_used[i] for i, s in enumerate(index.services)}

    def fit_counts(self, c: int) -> np.ndarray:
        """How many pods of class ``c`` each node could take on its own now (0 where it cannot)."""
        return self.fit_matrix(np.array([c], dtype=np.int64))[0]

    def fit_matrix(self, classes: np.ndarray) -> np.ndarray:
        """Rows of :meth:`fit_counts` for each of ``classes`` (class indices), as one matrix."""
        index = self.index
        # Float division is exact here (capacities are far below 2**50) and much faster than //.
        room = self.cpu_free.astype(np.float64) / index.class_cpu[classes, None]
        np.minimum(room, self.ram_free.astype(np.float64) / index.class_ram[classes, None], out=room)
        np.minimum(room, self.slots, out=room)
        room = room.astype(np.int32)  # at most a node's pod slots
        limited = np.flatnonzero(index.class_limit[classes] < NO_LIMIT)
        if len(limited):
            rows = classes[limited]
            left = index.class_limit[rows, None] - self.service_used[index.class_service[rows]]
            room[limited] = np.minimum(room[limited], np.maximum(left, 0))
        room *= index.static_matrix()[classes]
        return room

    def feasible_matrix(self, classes: np.ndarray) -> np.ndarray:
        """Classes by nodes: whether each node can take one more pod of each of ``classes``."""
        index = self.index
        ok = self.cpu_free[None, :] >= index.class_cpu[classes, None]
        ok &= self.ram_free[None, :] >= index.class_ram[classes, None]
        ok &= (self.slots > 0)[None, :]
        limited = np.flatnonzero(index.class_limit[classes] < NO_LIMIT)
        if len(limited):
            rows = classes[limited]
            ok[limited] &= self.service_used[index.class_service[rows]] < index.class_limit[rows, None]
        ok &= index.static_matrix()[classes]
        return ok

    def fit_pairs(self, classes: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """How many pods of class ``classes[i]`` node ``nodes[i]`` can take now, for every i."""
        index = self.index
        # Float division is exact here (capacities are far below 2**50) and much faster than //.
        room = np.minimum(self.cpu_free[nodes] / index.class_cpu[classes],
                          self.ram_free[nodes] / index.class_ram[classes]).astype(np.int64)
        np.minimum(room, self.slots[nodes], out=room)
        limited = np.flatnonzero(index.class_limit[classes] < NO_LIMIT)
        if len(limited):
            c, n = classes[limited], nodes[limited]
            left = index.class_limit[c] - self.service_used[index.class_service[c], n]
            room[limited] = np.minimum(room[limited], np.maximum(left, 0))
        static = index.static_matrix()
        return room * static.ravel()[classes * static.shape[1] + nodes]

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
        index = self.index
        size = len(index.names)
        self.cpu_free -= np.bincount(nodes, index.class_cpu[classes] * pods, size).astype(np.int64)
        self.ram_free -= np.bincount(nodes, index.class_ram[classes] * pods, size).astype(np.int64)
        added = np.bincount(nodes, pods, size).astype(np.int64)
        self.slots -= added
        self.placed += added
        np.add.at(self.service_used, (index.class_service[classes], nodes), pods)

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
