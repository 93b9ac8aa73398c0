"""The placement scheduler live: a scale-up wakes the slot the min-cost-flow scheduler picks.

Pure tests of the decisions over a snapshot (cluster building, slot mapping,
retirement order, wake plans with states given directly; no I/O), of the
fleet file's nodes, services and placement keys, then one real fleet:
`katyusha fleet up --autoscale` with null slots on node-1, a warmdisk slot on
node-2 and a warmdisk slot on a tainted node-3.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time

import pytest

from katyusha.core.errors import ConfigError
from katyusha.core.fleetplan import (
    NO_SLOT,
    ServiceSpec,
    SlotView,
    build_cluster,
    choose_retirements,
    map_to_slots,
    plan_wakes,
)
from katyusha.core.placement import (
    FitBasis,
    FlowScheduler,
    LabelRequirement,
    Node,
    NodeAffinity,
    Taint,
    Toleration,
)
from katyusha.core.podstate import PodState
from katyusha.fleet.spec import build_spec
from tests.procs import FleetUp, get_json, script, wait_for

WEB = ServiceSpec("web", cpu=500, ram=256, image="web:1")
NULL, COLD, WARMDISK, WARM, ACTIVE = (PodState.NULL, PodState.COLD, PodState.WARMDISK, PodState.WARM,
                                      PodState.ACTIVE)  # fmt: skip


def nodes(count: int = 2, **kwargs) -> tuple[Node, ...]:
    return tuple(Node(f"node-{i + 1}", cpu=2000, ram=4096, **kwargs) for i in range(count))


def view(name: str, node: str, state: PodState | None, *, busy: bool = False, service: str = "web") -> SlotView:
    return SlotView(name, node, service, state, busy=busy)


def wake(node_list, views, count, services=(WEB,), basis=FitBasis.REQUESTS):
    return plan_wakes(node_list, {s.name: s for s in services}, [s.name for s in services], views, count,
                      scheduler=FlowScheduler(), basis=basis)  # fmt: skip


def woken(plan) -> list[str]:
    return [w.pod for w in plan.wakes]


# -- the decisions, pure ------------------------------------------------------------------


def test_cluster_has_images_from_image_states_running_pods_and_slot_limits():
    views = [
        view("a", "node-1", NULL),
        view("b", "node-1", WARM, busy=True),
        view("c", "node-2", WARMDISK),
        view("d", "node-2", COLD),
        view("e", "node-2", WARMDISK),
    ]
    cluster = build_cluster(nodes(), {"web": WEB}, views, "web")
    one, two = cluster.nodes
    assert one.images == {"web:1"} and two.images == {"web:1"}
    assert [(p.name, p.node, p.cpu, p.ram) for p in cluster.running] == [("b", "node-1", 500, 256)]
    # A node takes at most what is there plus its free slots of the service placed.
    assert (one.max_pods, two.max_pods) == (2, 3)
    no_image = build_cluster(nodes(), {"web": WEB}, [view("a", "node-1", COLD)], "web")
    assert no_image.nodes[0].images == frozenset() and no_image.nodes[1].max_pods == 0


def test_slots_are_mapped_nearest_to_serving_first_then_fleet_order():
    free = [
        view("n1", "node-1", NULL),
        view("c1", "node-1", COLD),
        view("w1", "node-1", WARMDISK),
        view("u1", "node-1", None),
        view("w2", "node-2", WARMDISK),
        view("n2", "node-2", NULL),
    ]
    placed = {"p1": "node-1", "p2": "node-1", "p3": "node-1", "p4": "node-2"}
    assert map_to_slots(placed, free) == ["w1", "c1", "n1", "w2"]
    assert map_to_slots({"p1": "node-1", "p2": "node-1", "p3": "node-1", "p4": "node-1"}, free[:4]) == [
        "w1", "c1", "n1", "u1"]  # fmt: skip
    assert map_to_slots({}, free) == []


def test_retirement_takes_from_the_fullest_node_idle_pods_first():
    serving = [
        view("a", "node-1", ACTIVE, busy=True),
        view("b", "node-1", WARM, busy=True),
        view("c", "node-1", ACTIVE, busy=True),
        view("d", "node-2", ACTIVE, busy=True),
    ]

    def retired(count):
        return [r.pod for r in choose_retirements(nodes(), {"web": WEB}, serving, count)]

    # node-1 holds three pods: its idle one goes first, then its last active one; then both nodes hold one.
    assert retired(2) == ["b", "c"]
    assert retired(3) == ["b", "c", "d"]
    assert retired(9) == ["b", "c", "d", "a"]
    assert retired(0) == []


def test_wake_plan_takes_the_warmdisk_slot_before_earlier_null_ones():
    views = [view("a-1", "node-1", NULL), view("a-2", "node-1", NULL), view("b-1", "node-2", WARMDISK)]
    assert woken(wake(nodes(), views, 1)) == ["b-1"]
    # Two pods: the image-holding slot, and one more where room is (spreading is cheaper than stacking).
    plan = wake(nodes(), views, 2)
    assert sorted(woken(plan)) == ["a-1", "b-1"]
    assert {"pod": "a-1", "node": "node-1", "from": "null"} in plan.to_json()["woken"]


def test_wake_plan_never_takes_a_slot_on_an_excluded_node_and_says_why():
    tainted = (Node("node-1", 2000, 4096), Node("node-2", 2000, 4096, taints=(Taint("dedicated", "batch"),)))
    views = [view("a-1", "node-1", NULL), view("b-1", "node-2", WARMDISK), view("b-2", "node-2", WARM)]
    plan = wake(tainted, views, 3)
    assert woken(plan) == ["a-1"] and plan.unplaced == 2 and "taint" in plan.reasons["web"]
    tolerant = ServiceSpec("web", 500, 256, "web:1", tolerations=(Toleration("dedicated", "Equal", "batch"),))
    assert woken(wake(tainted, views, 1, (tolerant,))) == ["b-2"]

    labelled = (Node("node-1", 2000, 4096, labels={"disk": "ssd"}), Node("node-2", 2000, 4096))
    ssd_only = ServiceSpec("web", 500, 256, "web:1",
                           node_affinity=NodeAffinity(required=((LabelRequirement("disk", "In", ("ssd",)),),)))  # fmt: skip
    plan = wake(labelled, views, 2, (ssd_only,))
    assert woken(plan) == ["a-1"]
    assert plan.to_json()["unplaced"] == 1 and "affinity" in plan.to_json()["reasons"]["web"]


def test_wake_plan_counts_busy_slots_against_node_room_and_keeps_unreadable_slots_last():
    small = (Node("node-1", 1000, 4096), Node("node-2", 1000, 4096))
    views = [view("a-1", "node-1", WARM, busy=True), view("x", "node-1", WARM, busy=True),
             view("a-2", "node-1", WARMDISK), view("b-1", "node-2", NULL), view("b-2", "node-2", None)]  # fmt: skip
    # node-1 already runs two 500m pods: full, whatever its disk holds.
    assert woken(wake(small, views, 1)) == ["b-1"]
    # A slot whose sim-backend does not answer comes last, but is not lost.
    plan = wake(small, views, 3)
    assert woken(plan) == ["b-1", "b-2"] and plan.unplaced == 1


def test_services_are_offered_the_scale_up_in_order_and_a_gang_wakes_all_or_none():
    batch = ServiceSpec("batch", 500, 256, "batch:1")
    views = [view("w-1", "node-1", NULL), view("b-1", "node-1", NULL, service="batch"),
             view("b-2", "node-2", NULL, service="batch")]  # fmt: skip
    # web has one slot: the other two pods of the scale-up go to batch, the next service.
    plan = wake(nodes(), views, 3, (WEB, batch))
    assert woken(plan) == ["w-1", "b-1", "b-2"]
    assert plan.unplaced == 0
    # As a gang, web's three pods do not fit its one slot: none is woken, and the reason says so.
    gang = ServiceSpec("web", 500, 256, "web:1", gang=True)
    plan = wake(nodes(), views, 3, (gang,))
    assert woken(plan) == [] and "gang" in plan.reasons["web"]
    assert woken(wake(nodes(), views, 1, (gang,))) == ["w-1"]
    assert wake(nodes(), [v for v in views if v.service == "batch"], 1).reasons == {"web": NO_SLOT}


def test_measured_use_lets_a_node_take_pods_its_requests_would_refuse():
    one = (Node("node-1", 1000, 4096),)
    # Two busy pods request 500m each (the node is full by requests) but use 50m each.
    views = [SlotView("a", "node-1", "web", WARM, busy=True, measured_cpu=50, measured_ram=64),
             SlotView("b", "node-1", "web", WARM, busy=True, measured_cpu=50, measured_ram=64),
             view("c", "node-1", WARMDISK)]  # fmt: skip
    assert woken(wake(one, views, 1)) == []
    assert woken(wake(one, views, 1, basis=FitBasis.MEASURED)) == ["c"]


# -- the fleet file ------------------------------------------------------------------------


def test_fleet_file_nodes_and_services_are_read_and_slots_belong_to_services():
    spec = build_spec({
        "pods": 3,
        "nodes": [{"name": "n1", "cpu": "1500m", "ram": "2Gi", "labels": {"zone": 1}, "taints": ["gpu=yes:NoSchedule"]},
                  {"name": "n2", "cpu": 2, "max_pods": 5}],
        "services": [{"name": "web", "cpu": 0.25, "ram": 300, "image": "web:2", "max_per_node": 1,
                      "node_selector": {"zone": "1"},
                      "tolerations": [{"key": "gpu", "operator": "Exists"}]},
                     {"name": "batch"}],
        "groups": [{"name": "w", "count": 2, "service": "web"}, {"name": "b", "service": "batch", "node": "n2"}],
    }, {})  # fmt: skip
    n1, n2 = spec.node_list
    assert (n1.cpu, n1.ram, dict(n1.labels), [str(t) for t in n1.taints]) == (1500, 2048, {"zone": "1"},
                                                                              ["gpu=yes:NoSchedule"])
    assert (n2.cpu, n2.ram, n2.max_pods) == (2000, 8192, 5)
    web, batch = spec.services
    assert (web.cpu, web.ram, web.image, web.max_per_node) == (250, 300, "web:2", 1)
    assert web.node_affinity.allows({"zone": "1"}) and not web.node_affinity.allows({"zone": "2"})
    assert batch.image == "batch:latest"
    assert [(p.name, p.node, p.service) for p in spec.pods] == [("w-1", "n1", "web"), ("w-2", "n2", "web"),
                                                                ("b-1", "n2", "batch")]
    assert spec.topology()["pod_services"] == {"w-1": "web", "w-2": "web", "b-1": "batch"}


def test_default_fleet_gets_nodes_that_hold_all_their_slots():
    spec = build_spec({"nodes": 2, "pods": 300}, {})
    assert [n.name for n in spec.node_list] == ["node-1", "node-2"]
    assert all(n.max_pods >= 150 and n.cpu >= 150 * 100 for n in spec.node_list)
    assert [s.name for s in spec.services] == ["app"] and {p.service for p in spec.pods} == {"app"}


@pytest.mark.parametrize(
    ("doc", "key"),
    [
        ({"nodes": [{"cpu": 2}]}, "nodes[0].name"),
        ({"nodes": [{"name": "a"}, {"name": "a"}]}, "nodes[1].name"),
        ({"nodes": [{"name": "a", "cpu": "fast"}]}, "nodes[0].cpu"),
        ({"nodes": [{"name": "a", "ram": "2GB"}]}, "nodes[0].ram"),
        ({"nodes": [{"name": "a", "taints": ["gpu:Never"]}]}, "nodes[0].taints[0]"),
        ({"nodes": [{"name": "a", "labels": {"x": [1]}}]}, "nodes[0].labels.x"),
        ({"nodes": [{"name": "a", "zone": "b"}]}, "nodes[0].zone"),
        ({"nodes": []}, "nodes"),
        ({"services": [{"cpu": 1}]}, "services[0].name"),
        ({"services": [{"name": "w"}, {"name": "w"}]}, "services[1].name"),
        ({"services": [{"name": "w", "max_per_node": 0}]}, "services[0].max_per_node"),
        ({"services": [{"name": "w", "node_affinity": {"required": [{"match": [{"key": "z", "operator": "Near"}]}]}}]},
         "services[0].node_affinity.required[0].match[0].operator"),
        ({"services": [{"name": "w", "tolerations": [{"key": "k", "effect": "Always"}]}]}, "services[0].tolerations[0].effect"),
        ({"services": [{"name": "w"}, {"name": "v"}]}, "groups"),
        ({"services": [{"name": "w"}, {"name": "v"}], "groups": [{"name": "g"}]}, "groups[0].service"),
        ({"services": [{"name": "w"}], "groups": [{"name": "g", "service": "v"}]}, "groups[0].service"),
        ({"nodes": [{"name": "a"}], "groups": [{"name": "g", "node": "node-1"}]}, "groups[0].node"),
    ],
)  # fmt: skip
def test_bad_nodes_and_services_are_refused_naming_the_field(doc, key):
    with pytest.raises(ConfigError) as refused:
        build_spec(doc, {})
    assert refused.value.key == key, str(refused.value)


def test_nodes_flag_must_agree_with_a_node_list():
    doc = {"nodes": [{"name": "a"}, {"name": "b"}]}
    assert len(build_spec(doc, {"nodes": 2}).node_list) == 2
    with pytest.raises(ConfigError, match="lists 2 nodes") as refused:
        build_spec(doc, {"nodes": 3})
    assert refused.value.key == "nodes"


def test_placement_basis_and_gangs_are_read_from_the_fleet_file():
    spec = build_spec({"placement": {"basis": "measured"}, "services": [{"name": "web", "gang": True}]}, {})
    assert spec.placement_basis is FitBasis.MEASURED
    assert spec.services[0].gang and spec.services[0].pending(2).gang == "web"
    default = build_spec({}, {})
    assert default.placement_basis is FitBasis.REQUESTS and not default.services[0].gang
    for doc, key in [({"placement": {"basis": "guessed"}}, "placement.basis"),
                     ({"placement": {"bases": "measured"}}, "placement.bases"),
                     ({"placement": "measured"}, "placement"),
                     ({"services": [{"name": "web", "gang": "maybe"}]}, "services[0].gang")]:  # fmt: skip
        with pytest.raises(ConfigError) as refused:
            build_spec(doc, {})
        assert refused.value.key == key, str(refused.value)


# -- a real fleet ----------------------------------------------------------------------------

START_S = 0.5
PULL_S = 2.5  # 50 MB at 20 MB/s: a wake from null takes PULL_S + START_S

FLEET_YAML = f"""
katyusha:
  port: 0
  admin_port: 0
nodes:
  - name: node-1
  - name: node-2
  - name: node-3
    taints: ["dedicated=batch:NoSchedule"]
pods: 4
services:
  - name: web
    cpu: 500m
    ram: 256Mi
    image: web:1
defaults:
  service_time: const:2s
  concurrency: 0
  queue_depth: 200
  image_size_mb: 50
  pull_mbps: 20
  start_s: {START_S}
groups:
  - name: a              # a-1, a-2: null on node-1
    count: 2
    node: node-1
  - name: b              # b-1: warmdisk on node-2 (the image is on its disk)
    count: 1
    node: node-2
    state: warmdisk
  - name: c              # c-1: warmdisk on node-3, which web does not tolerate
    node: node-3
    state: warmdisk
autoscaler:
  stable-window: 6s
  tick-interval: 0.5s
  initial-scale: 0
  allow-zero-initial-scale: true
  container-concurrency-target-default: 10
runner:
  poll_interval_s: 0.2
"""







@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    up = FleetUp(tmp_path_factory.mktemp("placement"), FLEET_YAML, "--autoscale")
    try:
        up.wait_ready(90)
        yield up
    finally:
        up.stop()


async def get_work(url: str, count: int) -> list[tuple[int, dict]]:
    import aiohttp

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(i: int) -> tuple[int, dict]:
            async with session.get(f"{url}/work/{i}") as response:
                return response.status, await response.json(content_type=None)

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_scale_up_wakes_the_warmdisk_slot_then_never_the_tainted_node(fleet):
    assert [fleet.state(p)["state"] for p in ("a-1", "a-2", "b-1", "c-1")] == ["null", "null", "warmdisk", "warmdisk"]

    # From zero by one: the pod that serves is b-1 on node-2, and its wake was a start only.
    started = time.monotonic()
    [(status, body)] = asyncio.run(get_work(fleet.doc["url"], 1))
    took = time.monotonic() - started
    assert status == 200 and (body["pod"], body["node"]) == ("b-1", "node-2"), (body, fleet.output[-3000:])
    cold = get_json(fleet.doc["autoscaler"]["admin"] + "/autoscaler")["cold_starts"]
    assert cold["total"] == 1 and START_S * 0.5 <= cold["last_s"] <= (PULL_S + START_S) * 0.66, cold
    assert took < PULL_S + START_S + 2.0, took  # 2 s of service: a pull would have shown
    b1 = fleet.state("b-1")
    assert b1["counters"]["image_pulls"] == 0 and b1["state"] in ("warm", "active")
    placement = get_json(fleet.doc["autoscaler"]["admin"] + "/placement")
    assert placement["last_wake"]["woken"] == [{"pod": "b-1", "node": "node-2", "from": "warmdisk"}]

    # A burst that wants more pods than node-1 holds: a-1 and a-2 wake (pull and start); c-1 never does.
    results = asyncio.run(get_work(fleet.doc["url"], 40))
    assert [s for s, _ in results] == [200] * 40
    wait_for(lambda: all(fleet.state(p)["state"] in ("warm", "active") for p in ("a-1", "a-2")), 20,
             "node-1's slots to be woken")  # fmt: skip
    c1 = fleet.state("c-1")
    assert c1["state"] == "warmdisk" and c1["counters"]["served"] == 0 and not c1["transition"]
    assert all(body["node"] != "node-3" for _, body in results)
    wake = get_json(fleet.doc["autoscaler"]["admin"] + "/placement")["last_wake"]
    assert wake["unplaced"] >= 1 and "taint" in wake["reasons"]["web"], wake
    assert "placement:" in fleet.output and "not placed" in fleet.output

    status = subprocess.run([script("katyusha"), "fleet", "status", "--state-file", str(fleet.state_file)],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    text = status.stdout
    assert "nodes (requests of serving pods / capacity):" in text, text + status.stderr
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith("node-")}
    assert "1000m/4000m" in rows["node-1"] and "512Mi/8192Mi" in rows["node-1"] and "2/110" in rows["node-1"]
    assert "c-1 warmdisk" in rows["node-3"] and "0m/4000m" in rows["node-3"]
    assert "dedicated=batch:NoSchedule" in rows["node-3"] and "web:1" in rows["node-3"]
    assert "not placed" in text and "taint" in text
    as_json = json.loads(subprocess.run([script("katyusha"), "fleet", "status", "--json", "--state-file",
                                         str(fleet.state_file)], capture_output=True, text=True, timeout=30).stdout)  # fmt: skip
    node2 = next(n for n in as_json["nodes"] if n["name"] == "node-2")
    assert node2["requested_cpu_m"] == 500 and node2["pods"] == [{"name": "b-1", "state": node2["pods"][0]["state"],
                                                                  "service": "web"}]  # fmt: skip
