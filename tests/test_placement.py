"""Placement by min-cost flow: known optima, every constraint, reasons, gangs, determinism."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from katyusha.core.errors import BadInput
from katyusha.core.placement import (
    Cluster,
    FitBasis,
    FlowScheduler,
    LabelRequirement,
    Node,
    NodeAffinity,
    OrToolsSolver,
    PodAtATimeScheduler,
    PodClass,
    RunningPod,
    SuccessiveShortestPaths,
    Taint,
    Toleration,
    evaluate,
)
from katyusha.core.placement.constraints import ClusterIndex
from katyusha.core.placement.cost import PULL_COST, UNSCHEDULED_COST

SCHEDULERS = {
    "flow": lambda: FlowScheduler(),
    "flow-ssp": lambda: FlowScheduler(SuccessiveShortestPaths),
    "pod-at-a-time": lambda: PodAtATimeScheduler(random.Random(7)),
}


def pods(name: str, count: int, **kw) -> PodClass:
    kw.setdefault("cpu", 1000)
    kw.setdefault("ram", 1024)
    kw.setdefault("image", "app:1")
    return PodClass(name, tuple(f"{name}-{i}" for i in range(count)), **kw)


def node(name: str, cpu: int = 4000, ram: int = 8192, **kw) -> Node:
    return Node(name, cpu=cpu, ram=ram, **kw)


def by_node(placement) -> dict[str, int]:
    out: dict[str, int] = {}
    for target in placement.assignments.values():
        out[target] = out.get(target, 0) + 1
    return out


@pytest.fixture(params=sorted(SCHEDULERS))
def scheduler(request):
    return SCHEDULERS[request.param]()


# Known optima on hand-built clusters.

def test_pods_go_where_the_image_is_on_disk():
    cluster = Cluster((node("cold"), node("warm", images={"app:1"})))
    placement = FlowScheduler().schedule(cluster, [pods("web", 2)])
    assert placement.assignments == {"web-0": "warm", "web-1": "warm"}
    assert evaluate(cluster, (pods("web", 2),), placement).image_pulls == 0


def test_spreading_beats_piling_on_one_node_when_images_are_equal():
    cluster = Cluster(tuple(node(f"n{i}", cpu=16000, ram=65536) for i in range(4)))
    placement = FlowScheduler().schedule(cluster, [pods("web", 8, cpu=500, ram=512)])
    assert sorted(by_node(placement).values()) == [2, 2, 2, 2]


def test_two_classes_competing_for_one_warm_node_get_the_cheaper_whole():
    # One warm slot: whichever class takes it saves one pull; the optimum pays exactly one pull.
    cluster = Cluster((node("warm", max_pods=1, images={"a", "b"}), node("cold", max_pods=1)))
    batch = [pods("x", 1, image="a"), pods("y", 1, image="b")]
    placement = FlowScheduler().schedule(cluster, batch)
    assert evaluate(cluster, tuple(batch), placement).pods_waiting_pull == 1
    assert len(placement.assignments) == 2


def brute_force_min_cost(cluster: Cluster, batch: list[PodClass]) -> int:
    """Every assignment of every pod to a node or to nothing, checked by hand: the true optimum."""
    from katyusha.core.placement.model import Placement

    index = ClusterIndex(cluster, tuple(batch))
    names = [n.name for n in cluster.nodes]
    all_pods = [(c, pod) for c, cls in enumerate(batch) for pod in cls.pods]
    best = None
    for choice in itertools.product(range(len(names) + 1), repeat=len(all_pods)):
        state = index.state()
        ok = True
        for (c, _), n in zip(all_pods, choice, strict=True):
            if n < len(names):
                if state.room_on(c, n) < 1:
                    ok = False
                    break
                state.commit(c, n, 1)
        if not ok:
            continue
        placement = Placement(
            {pod: names[n] for (_, pod), n in zip(all_pods, choice, strict=True) if n < len(names)},
            {pod: "-" for (_, pod), n in zip(all_pods, choice, strict=True) if n == len(names)},
        )
        cost = evaluate(cluster, tuple(batch), placement).total
        best = cost if best is None else min(best, cost)
    return best


def random_small_case(seed: int) -> tuple[Cluster, list[PodClass]]:
    """Three nodes of mixed sizes, images and zones; two classes of one to five pods in all."""
    rng = random.Random(seed)
    nodes = tuple(
        node(f"n{i}", cpu=rng.choice((1000, 2000, 3000)), ram=rng.choice((2048, 4096)),
             max_pods=rng.choice((1, 2, 3)), images=frozenset(rng.sample(["a", "b"], rng.randint(0, 2))),
             labels={"zone": rng.choice("xy")})
        for i in range(3)
    )
    batch = [
        pods("p", rng.randint(1, 3), cpu=1000, ram=1024, image="a",
             node_affinity=NodeAffinity(preferred=((40, (LabelRequirement("zone", "In", ("x",)),)),))),
        pods("q", rng.randint(0, 2), cpu=rng.choice((1000, 2000)), ram=1024, image="b",
             max_per_node=rng.choice((None, 1))),
    ]
    return Cluster(nodes), batch


# Runs (of 400: 200 clusters, two solvers) where repair left a pod pending that a placement of
# the whole batch places; docs/placement.md ("Repair") reports the figure this holds.
REPAIR_SHORT_AT_MOST = 8


def test_flow_finds_the_brute_force_optimum_on_small_clusters():
    short = []
    for seed in range(200):
        cluster, batch = random_small_case(seed)
        best = brute_force_min_cost(cluster, batch)
        for make in (OrToolsSolver, SuccessiveShortestPaths):
            placement = FlowScheduler(make).schedule(cluster, batch)
            cost = evaluate(cluster, tuple(batch), placement).total
            if placement.rounds == 1:
                # One solve, no node over-committed: the solve's optimum is the placement.
                assert cost == best, (seed, make.__name__, placement)
            assert len(placement.unscheduled) >= best // UNSCHEDULED_COST
            if len(placement.unscheduled) > best // UNSCHEDULED_COST:
                short.append((seed, make.__name__))
    # After a repair, a pod may stay pending that a whole-batch placement would place (a flow
    # capacity is one number, a node has two resources); the rate is bounded and documented.
    assert len(short) <= REPAIR_SHORT_AT_MOST, short


@pytest.mark.parametrize("seed", range(20))
def test_both_solvers_agree_on_random_networks(seed):
    rng = random.Random(seed)
    size = rng.randint(3, 8)
    arcs = [(u, v) for u in range(size) for v in range(size) if u != v and rng.random() < 0.5]
    arcs += [(0, size - 1)]  # always feasible
    caps = [rng.randint(1, 6) for _ in arcs]
    costs = [rng.randint(0, 20) for _ in arcs]
    supply = rng.randint(1, 5)
    results = []
    for make in (OrToolsSolver, SuccessiveShortestPaths):
        solver = make()
        solver.add_arcs(np.array([a[0] for a in arcs]), np.array([a[1] for a in arcs]),
                        np.array(caps), np.array(costs))
        solver.set_supplies(np.array([0, size - 1]), np.array([supply, -supply]))
        try:
            results.append(solver.solve().cost)
        except Exception as error:  # both must agree that it is infeasible, too
            results.append(type(error).__name__)
    assert results[0] == results[1]


# Every constraint, with both schedulers.

def test_cpu_fit_and_the_reason_when_nothing_fits(scheduler):
    cluster = Cluster((node("a", cpu=2000), node("b", cpu=1500)))
    placement = scheduler.schedule(cluster, [pods("web", 3, cpu=1000)])
    assert by_node(placement) == {"a": 2, "b": 1}
    placement = scheduler.schedule(cluster, [pods("big", 1, cpu=3000)])
    assert placement.unscheduled == {"big-0": "0/2 nodes are available: 2 insufficient cpu"}


def test_memory_fit(scheduler):
    cluster = Cluster((node("a", ram=2048),))
    placement = scheduler.schedule(cluster, [pods("web", 3, ram=1024)])
    assert len(placement.assignments) == 2
    assert "insufficient memory" in placement.unscheduled["web-2"]


def test_running_pods_use_capacity(scheduler):
    cluster = Cluster((node("a", cpu=2000),), running=(RunningPod("old", "old", "a", cpu=1500, ram=10),))
    placement = scheduler.schedule(cluster, [pods("web", 1, cpu=1000)])
    assert "insufficient cpu" in placement.unscheduled["web-0"]


def test_max_pods_per_node(scheduler):
    cluster = Cluster((node("a", cpu=64000, ram=65536, max_pods=2),),
                      running=(RunningPod("old", "old", "a", cpu=1, ram=1),))
    placement = scheduler.schedule(cluster, [pods("web", 2, cpu=10, ram=10)])
    assert len(placement.assignments) == 1
    assert "too many pods" in placement.unscheduled["web-1"]


def test_required_node_affinity(scheduler):
    cluster = Cluster((node("gpu", labels={"pool": "gpu"}), node("cpu", labels={"pool": "cpu"})))
    want_gpu = NodeAffinity(required=((LabelRequirement("pool", "In", ("gpu",)),),))
    placement = scheduler.schedule(cluster, [pods("train", 6, node_affinity=want_gpu)])
    assert set(placement.assignments.values()) == {"gpu"}
    assert len(placement.assignments) == 4
    assert "1 node(s) didn't match node affinity" in placement.unscheduled["train-4"]


def test_required_node_anti_affinity(scheduler):
    cluster = Cluster((node("edge", labels={"pool": "edge"}), node("core", labels={"pool": "core"}),
                       node("bare")))
    not_edge = NodeAffinity(required=((LabelRequirement("pool", "NotIn", ("edge",)),),))
    placement = scheduler.schedule(cluster, [pods("db", 8, node_affinity=not_edge)])
    assert set(placement.assignments.values()) == {"core", "bare"}


def test_preferred_node_affinity():
    cluster = Cluster((node("x", labels={"zone": "x"}), node("y", labels={"zone": "y"})))
    prefer_y = NodeAffinity(preferred=((100, (LabelRequirement("zone", "In", ("y",)),)),))
    for make in SCHEDULERS.values():
        placement = make().schedule(cluster, [pods("web", 1, node_affinity=prefer_y)])
        assert placement.assignments == {"web-0": "y"}


def test_no_schedule_taint_needs_a_toleration(scheduler):
    cluster = Cluster((node("batch", taints=(Taint("dedicated", "batch"),)),))
    placement = scheduler.schedule(cluster, [pods("web", 1)])
    assert placement.unscheduled == {
        "web-0": "0/1 nodes are available: 1 node(s) had untolerated NoSchedule taint"
    }
    tolerant = pods("job", 1, tolerations=(Toleration("dedicated", "Equal", "batch"),))
    assert scheduler.schedule(cluster, [tolerant]).assignments == {"job-0": "batch"}
    anything = pods("any", 1, tolerations=(Toleration("dedicated", "Exists"),))
    assert scheduler.schedule(cluster, [anything]).assignments == {"any-0": "batch"}


def test_prefer_no_schedule_taint_is_avoided_not_forbidden(scheduler):
    flaky = (Taint("flaky", "", "PreferNoSchedule"),)
    cluster = Cluster((node("flaky", taints=flaky), node("ok")))
    assert scheduler.schedule(cluster, [pods("web", 1)]).assignments == {"web-0": "ok"}
    alone = Cluster((node("flaky", taints=flaky),))
    assert scheduler.schedule(alone, [pods("web", 1)]).assignments == {"web-0": "flaky"}


def test_pod_anti_affinity_at_most_k_per_node_counting_running_pods(scheduler):
    cluster = Cluster(
        tuple(node(f"n{i}", cpu=64000, ram=65536) for i in range(3)),
        running=(RunningPod("web-old", "web", "n0", cpu=10, ram=10),),
    )
    placement = scheduler.schedule(cluster, [pods("web", 6, cpu=10, ram=10, max_per_node=2)])
    assert by_node(placement) == {"n0": 1, "n1": 2, "n2": 2}
    assert "pod anti-affinity: web at most 2 per node" in placement.unscheduled["web-5"]


def test_gang_is_placed_whole_or_not_at_all(scheduler):
    cluster = Cluster((node("a", cpu=3000),))
    batch = [pods("ps", 1, cpu=1000, gang="train"), pods("worker", 3, cpu=1000, gang="train"),
             pods("web", 2, cpu=1000)]
    placement = scheduler.schedule(cluster, batch)
    # The gang needs 4 CPUs and there are 3: none of it runs, and its room goes to web.
    assert sorted(placement.assignments) == ["web-0", "web-1"]
    assert placement.unscheduled["worker-2"].startswith("gang train: only")
    assert set(placement.unscheduled) == {"ps-0", "worker-0", "worker-1", "worker-2"}
    roomy = Cluster((node("a", cpu=4000), node("b", cpu=4000)))
    placement = scheduler.schedule(roomy, batch)
    assert not placement.unscheduled


def test_measured_use_admits_what_requests_refuse(scheduler):
    busy_on_paper = RunningPod("old", "old", "a", cpu=3500, ram=1024, measured_cpu=500)
    nodes = (node("a", cpu=4000),)
    by_requests = Cluster(nodes, (busy_on_paper,), basis=FitBasis.REQUESTS)
    by_measure = Cluster(nodes, (busy_on_paper,), basis=FitBasis.MEASURED)
    assert "insufficient cpu" in scheduler.schedule(by_requests, [pods("web", 1)]).unscheduled["web-0"]
    assert scheduler.schedule(by_measure, [pods("web", 3)]).assignments == {
        "web-0": "a", "web-1": "a", "web-2": "a"
    }


def test_same_input_same_placement(scheduler):
    rng = random.Random(3)
    cluster = Cluster(tuple(node(f"n{i}", images=frozenset({"app:1"}) if i % 3 else frozenset())
                            for i in range(30)))
    batch = [pods(f"s{c}", rng.randint(1, 20), cpu=rng.choice((250, 500)), ram=256) for c in range(5)]
    first = scheduler.schedule(cluster, batch)
    again = (SCHEDULERS["pod-at-a-time"]() if isinstance(scheduler, PodAtATimeScheduler)
             else scheduler).schedule(cluster, batch)
    assert first.assignments == again.assignments
    assert first.unscheduled == again.unscheduled


def test_flow_costs_no_more_than_pod_at_a_time_and_pulls_fewer_images():
    from benchmarks.placement import make_batch, make_cluster

    rng = random.Random(11)
    cluster = make_cluster(150, rng)
    batch = make_batch(1500, 15, rng)
    flow = evaluate(cluster, tuple(batch), FlowScheduler().schedule(cluster, batch))
    greedy = evaluate(cluster, tuple(batch), PodAtATimeScheduler(random.Random(1)).schedule(cluster, batch))
    assert flow.pods_unscheduled <= greedy.pods_unscheduled
    assert flow.total <= greedy.total
    assert flow.image_pulls <= greedy.image_pulls


# Bad input.

@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Node("a", cpu=0, ram=1), "node a: cpu must be a positive integer"),
        (lambda: Node("a", cpu=1, ram=-5), "node a: ram must be a positive integer"),
        (lambda: pods("web", 1, cpu=-1), "pod class web: cpu must be a positive integer"),
        (lambda: PodClass("web", ("x", "x"), cpu=1, ram=1, image="i"), "pod names repeat"),
        (lambda: Taint("k", "v", "Sometimes"), "taint k: effect must be one of"),
        (lambda: LabelRequirement("zone", "In"), "operator In needs values"),
        (lambda: Cluster((node("a"),), (RunningPod("p", "s", "zz", 1, 1),)), "unknown node 'zz'"),
        (lambda: Cluster((node("a"), node("a"))), "node names repeat"),
    ],
)
def test_bad_input_names_what_is_wrong(build, message):
    with pytest.raises(BadInput, match=message):
        build()


def test_a_pod_in_two_classes_is_refused_before_scheduling(scheduler):
    a = PodClass("a", ("p",), cpu=1, ram=1, image="i")
    b = PodClass("b", ("p",), cpu=1, ram=1, image="i")
    with pytest.raises(BadInput, match="pod p appears in more than one class"):
        scheduler.schedule(Cluster((node("n"),)), [a, b])


def test_pull_cost_is_counted_per_waiting_pod():
    cluster = Cluster((node("a"),))
    placement = FlowScheduler().schedule(cluster, [pods("web", 2)])
    report = evaluate(cluster, (pods("web", 2),), placement)
    assert report.pull == 2 * PULL_COST
    assert report.image_pulls == 1


def test_benchmark_case_reports_both_schedulers_on_the_same_input():
    from benchmarks.placement import run_case

    row = run_case(60, 300, 6, repeat=1, seed=2)
    for name in ("flow", "pod_at_a_time"):
        assert row[name]["placed"] + row[name]["unscheduled"] == 300
        assert row[name]["seconds"] > 0
    assert row["cost_ratio"] <= 1


def test_pruned_candidate_arcs_never_leave_a_placeable_pod_out(monkeypatch):
    import katyusha.core.placement.candidates as candidates

    # Arcs to as few nodes as pods: two classes of different images then fight over the same
    # five nodes that hold both images.
    monkeypatch.setattr(candidates, "CANDIDATE_FACTOR", 1)
    monkeypatch.setattr(candidates, "MIN_CANDIDATES", 1)
    warm = tuple(node(f"w{i}", max_pods=1, images={"app:1", "app:2"}) for i in range(5))
    cold = tuple(node(f"c{i}", max_pods=1) for i in range(10))
    cluster = Cluster(warm + cold)
    scheduler = FlowScheduler()
    placement = scheduler.schedule(cluster, [pods("a", 5), pods("b", 5, image="app:2")])
    assert not placement.unscheduled
    assert len(set(placement.assignments.values())) == 10
    assert scheduler.last_solves >= 2


@pytest.mark.parametrize("seed", range(15))
def test_both_solvers_move_the_same_most_flow_at_the_same_cost_when_capacity_is_short(seed):
    rng = random.Random(100 + seed)
    size = rng.randint(4, 8)
    arcs = [(u, v) for u in range(size - 1) for v in range(1, size) if u != v and rng.random() < 0.4]
    caps = [rng.randint(1, 4) for _ in arcs]
    costs = [rng.randint(0, 20) for _ in arcs]
    supply = rng.randint(5, 15)  # usually more than the arcs can carry
    results = []
    for make in (OrToolsSolver, SuccessiveShortestPaths):
        solver = make()
        solver.add_arcs(np.array([a[0] for a in arcs], dtype=np.int64), np.array([a[1] for a in arcs], dtype=np.int64),
                        np.array(caps, dtype=np.int64), np.array(costs, dtype=np.int64))
        solver.set_supplies(np.array([0, size - 1]), np.array([supply, -supply]))
        solution = solver.solve_max_flow()
        into_sink = sum(int(f) for f, (_, v) in zip(solution.flows, arcs, strict=True) if v == size - 1)
        out_of_source = sum(int(f) for f, (u, _) in zip(solution.flows, arcs, strict=True) if u == 0)
        assert into_sink == out_of_source <= supply
        results.append((into_sink, solution.cost))
    assert results[0] == results[1]


def test_pruned_candidates_cost_little_more_than_arcs_to_every_node():
    from benchmarks.placement import make_batch, make_cluster

    rng = random.Random(5)
    cluster = make_cluster(1500, rng)
    batch = make_batch(4000, 40, rng)
    pruned_scheduler = FlowScheduler()
    pruned = evaluate(cluster, tuple(batch), pruned_scheduler.schedule(cluster, batch))
    full_scheduler = FlowScheduler(prune=False)
    full = evaluate(cluster, tuple(batch), full_scheduler.schedule(cluster, batch))
    assert pruned.pods_unscheduled == full.pods_unscheduled == 0
    assert pruned.total <= 1.02 * full.total
    assert pruned_scheduler.last_arcs < full_scheduler.last_arcs / 2


def test_classes_sharing_an_image_get_enough_warm_nodes_between_them(monkeypatch):
    import katyusha.core.placement.candidates as candidates

    # Six classes of one image, 4 pods each, and 24 warm nodes of one slot. Sized only for
    # itself (2 x 4 slots), every class would get arcs to the same first 8 warm nodes, and
    # 16 pods would need a second solve.
    monkeypatch.setattr(candidates, "MIN_CANDIDATES", 1)
    warm = tuple(node(f"w{i:02d}", max_pods=1, images={"app:1"}) for i in range(24))
    cold = tuple(node(f"c{i:02d}", max_pods=4) for i in range(40))
    cluster = Cluster(warm + cold)
    batch = [pods(f"s{k}", 4) for k in range(6)]
    scheduler = FlowScheduler()
    placement = scheduler.schedule(cluster, batch)
    assert not placement.unscheduled
    assert evaluate(cluster, tuple(batch), placement).pods_waiting_pull == 0
    assert scheduler.last_solves == 1
