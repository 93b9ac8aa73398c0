"""Under random clusters and batches, no scheduler ever over-commits a node or loses a pod."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from katyusha.core.placement import (
    Cluster,
    FitBasis,
    FlowScheduler,
    LabelRequirement,
    Node,
    NodeAffinity,
    PodAtATimeScheduler,
    PodClass,
    RunningPod,
    Taint,
    Toleration,
)


@st.composite
def inputs(draw):
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    nodes = []
    for i in range(draw(st.integers(1, 12))):
        taints = (Taint("t", "v", rng.choice(("NoSchedule", "PreferNoSchedule"))),) if rng.random() < 0.3 else ()
        nodes.append(Node(f"n{i}", cpu=rng.randint(500, 8000), ram=rng.randint(256, 16384),
                          max_pods=rng.randint(0, 12), labels={"zone": rng.choice("abc")},
                          taints=taints, images=frozenset(rng.sample(["i0", "i1", "i2"], rng.randint(0, 3)))))
    running = [
        RunningPod(f"r{j}", rng.choice(("s0", "s1", "old")), rng.choice(nodes).name,
                   cpu=rng.randint(0, 2000), ram=rng.randint(0, 4096),
                   measured_cpu=rng.choice((None, rng.randint(0, 2000))))
        for j in range(rng.randint(0, 10))
    ]
    classes = []
    for c in range(draw(st.integers(1, 6))):
        service = rng.choice(("s0", "s1", f"own{c}"))
        # A service's pods share one per-node limit, whichever class they come in.
        limit = {"s0": 2, "s1": None}.get(service, rng.choice((None, 1, 3)))
        affinity = NodeAffinity()
        if rng.random() < 0.3:
            affinity = NodeAffinity(required=((LabelRequirement("zone", rng.choice(("In", "NotIn")), ("a",)),),))
        classes.append(PodClass(
            f"c{c}", tuple(f"c{c}-{k}" for k in range(rng.randint(1, 25))),
            cpu=rng.randint(50, 3000), ram=rng.randint(32, 6000), image=rng.choice(("i0", "i1", "i2")),
            service=service, node_affinity=affinity,
            tolerations=(Toleration("t", "Exists"),) if rng.random() < 0.5 else (),
            max_per_node=limit,
            gang=rng.choice((None, None, "g")),
        ))
    basis = rng.choice(list(FitBasis))
    return Cluster(tuple(nodes), tuple(running), basis=basis), classes


def check(cluster: Cluster, classes: list[PodClass], placement) -> None:
    measured = cluster.basis is FitBasis.MEASURED
    cpu = {n.name: 0 for n in cluster.nodes}
    ram = dict(cpu)
    count = dict(cpu)
    per_service: dict[tuple[str, str], int] = {}
    for pod in cluster.running:
        cpu[pod.node] += pod.measured_cpu if measured and pod.measured_cpu is not None else pod.cpu
        ram[pod.node] += pod.measured_ram if measured and pod.measured_ram is not None else pod.ram
        count[pod.node] += 1
        per_service[pod.service, pod.node] = per_service.get((pod.service, pod.node), 0) + 1
    every_pod = {pod for cls in classes for pod in cls.pods}
    assert set(placement.assignments) | set(placement.unscheduled) == every_pod
    assert not set(placement.assignments) & set(placement.unscheduled)
    new_cpu = {n: 0 for n in cpu}
    new_ram = dict(new_cpu)
    new_count = dict(new_cpu)
    gangs: dict[str, list[bool]] = {}
    limited: dict[tuple[str, str], int] = {}
    for cls in classes:
        for pod in cls.pods:
            if cls.gang:
                gangs.setdefault(cls.gang, []).append(pod in placement.assignments)
            if pod not in placement.assignments:
                assert placement.unscheduled[pod]
                continue
            target = placement.assignments[pod]
            new_cpu[target] += cls.cpu
            new_ram[target] += cls.ram
            new_count[target] += 1
            key = (cls.service, target)
            per_service[key] = per_service.get(key, 0) + 1
            if cls.max_per_node is not None:
                limited[key] = cls.max_per_node
    for n in cluster.nodes:
        if new_count[n.name]:
            # Pods already there may exceed the node; the batch must fit what was free.
            assert new_cpu[n.name] <= max(n.cpu - cpu[n.name], 0), n.name
            assert new_ram[n.name] <= max(n.ram - ram[n.name], 0), n.name
            assert new_count[n.name] <= max(n.max_pods - count[n.name], 0), n.name
    for key, limit in limited.items():
        assert per_service[key] <= limit, key
    for placed in gangs.values():
        assert all(placed) or not any(placed)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs())
def test_flow_never_over_commits(data):
    cluster, classes = data
    check(cluster, classes, FlowScheduler().schedule(cluster, classes))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inputs())
def test_pod_at_a_time_never_over_commits(data):
    cluster, classes = data
    check(cluster, classes, PodAtATimeScheduler(random.Random(0)).schedule(cluster, classes))
