"""The Kubernetes decisions in the core: EndpointSlices to pod sets, subsets, lease election, annotations."""

import copy
import json
import pathlib
import random

import pytest

from katyusha.core.autoscaler_config import KPAConfig
from katyusha.core.backoff import Backoff
from katyusha.core.endpoints import pod_change, service_endpoints
from katyusha.core.errors import ConfigError
from katyusha.core.kube_annotations import CONCURRENCY_ANNOTATION, container_concurrency, kpa_config
from katyusha.core.lease import Create, LeaseElector, LeaseRecord, Update
from katyusha.core.subset import assign, subset, subset_endpoints

DATA = pathlib.Path(__file__).parent / "k8s_data"


def slice_doc(name: str) -> dict:
    return json.loads((DATA / f"endpointslice-{name}.json").read_text())


# -- EndpointSlices to a pod set -------------------------------------------------------


def test_ready_endpoints_serve_terminating_drain_starting_are_out():
    eps = service_endpoints("demo/hello", [slice_doc("hello-7x2kq"), slice_doc("hello-9m4tz")], port="http")
    assert eps.ready_names() == ("hello-5f8b9c6d7-abcde", "hello-5f8b9c6d7-fghij")
    assert [p.name for p in eps.draining] == ["hello-5f8b9c6d7-pqrst"]  # terminating, still serving
    assert "hello-5f8b9c6d7-klmno" not in {p.name for p in eps.ready + eps.draining}  # starting: not ready
    first = eps.ready[0]
    assert (first.url, first.node, first.zone) == ("http://10.244.1.17:8012", "node-a", "zone-a")
    assert eps.problems == ()


def test_port_by_name_number_or_only_port_and_admin_url():
    doc = slice_doc("hello-7x2kq")
    by_number = service_endpoints("demo/hello", [doc], port=8012, admin_port="nonna-admin")
    assert by_number.ready[0].url == "http://10.244.1.17:8012"
    assert by_number.ready[0].admin == "http://10.244.1.17:8022"
    # Two ports and none named: the slice is skipped and the problem says what to do.
    none = service_endpoints("demo/hello", [doc])
    assert none.ready == () and "name the one to use" in none.problems[0]
    missing = service_endpoints("demo/hello", [doc], port="grpc")
    assert missing.ready == () and "no TCP port 'grpc'" in missing.problems[0]
    only = service_endpoints("demo/other", [slice_doc("other-k2j9d")])
    assert only.ready[0].url == "http://10.244.2.40:8080"


def test_slices_of_other_services_and_namespaces_are_ignored():
    other = slice_doc("other-k2j9d")
    elsewhere = slice_doc("hello-7x2kq")
    elsewhere["metadata"]["namespace"] = "prod"
    eps = service_endpoints("demo/hello", [other, elsewhere, slice_doc("hello-9m4tz")], port="http")
    assert eps.ready == ()
    assert [p.name for p in eps.draining] == ["hello-5f8b9c6d7-pqrst"]


def test_merge_is_deterministic_and_a_pod_in_two_slices_is_kept_once():
    docs = [slice_doc("hello-7x2kq"), slice_doc("hello-9m4tz"), slice_doc("hello-v6-q8w2n")]
    forward = service_endpoints("demo/hello", docs, port="http")
    backward = service_endpoints("demo/hello", list(reversed(docs)), port="http")
    assert forward == backward
    # abcde is in the IPv4 and the IPv6 slice: one entry, the IPv4 address.
    assert forward.ready_names().count("hello-5f8b9c6d7-abcde") == 1
    assert forward.ready[0].url == "http://10.244.1.17:8012"
    # An endpoint moving between slices: the ready copy wins over a stale terminating one.
    moving = slice_doc("hello-9m4tz")
    moving["endpoints"][1]["targetRef"]["name"] = "hello-5f8b9c6d7-fghij"
    eps = service_endpoints("demo/hello", [moving, slice_doc("hello-7x2kq")], port="http")
    assert "hello-5f8b9c6d7-fghij" in eps.ready_names()
    assert eps.draining == ()


def test_ipv6_only_and_nil_conditions():
    v6 = slice_doc("hello-v6-q8w2n")
    del v6["endpoints"][0]["conditions"]  # nil ready means ready (API reference)
    del v6["endpoints"][0]["targetRef"]
    eps = service_endpoints("demo/hello", [v6], port="http", concurrency=4)
    pod = eps.ready[0]
    assert pod.url == "http://[fd00:10:244:1::11]:8012"
    assert pod.name == "[fd00:10:244:1::11]:8012"  # no targetRef: named by address
    assert (pod.node, pod.concurrency) == ("node-a", 4)


def test_bad_endpoints_are_problems_not_exceptions():
    doc = slice_doc("hello-7x2kq")
    doc["endpoints"].append({"addresses": [], "conditions": {"ready": True}})
    doc["endpoints"].append("junk")
    eps = service_endpoints("demo/hello", [doc, {"metadata": None}, "junk"], port="http")
    assert len(eps.ready) == 2
    assert len(eps.problems) == 2 and all("has no address" in p for p in eps.problems)


def test_pod_change_makes_the_set_the_ready_pods_and_drains_the_rest():
    from katyusha.core.service import ServiceBalancer, ServiceSettings

    balancer = ServiceBalancer(ServiceSettings(), rng=random.Random(1))
    before = service_endpoints("demo/hello", [slice_doc("hello-7x2kq")], port="http", admin_port="nonna-admin")
    change = pod_change(before)
    assert change.replace and change.source == "kubernetes"
    assert [(s.name, s.node, s.admin) for s in change.upsert] == [
        ("hello-5f8b9c6d7-abcde", "node-a", "http://10.244.1.17:8022"),
        ("hello-5f8b9c6d7-fghij", "node-b", "http://10.244.2.9:8022"),
    ]
    balancer.change_pods(change, 0.0)
    tickets = [balancer.offer(0.0) for _ in range(2)]
    handles = [balancer.dispatch(ticket, 0.0) for ticket in tickets]  # one request in flight on each pod
    assert sorted(h.entry.name for h in handles) == ["hello-5f8b9c6d7-abcde", "hello-5f8b9c6d7-fghij"]
    doc = slice_doc("hello-7x2kq")
    doc["endpoints"][0]["conditions"] = {"ready": False, "serving": True, "terminating": True}  # abcde terminates
    doc["endpoints"].append(
        {"addresses": ["10.244.4.2"], "conditions": {"ready": True}, "targetRef": {"kind": "Pod", "name": "hello-new"}}
    )
    result = balancer.change_pods(pod_change(service_endpoints("demo/hello", [doc], port="http")), 1.0)
    # abcde drains: out of picking, its request still in flight; fghij stays with its counters.
    assert [(e.name, e.in_flight) for e in result.removed] == [("hello-5f8b9c6d7-abcde", 1)]
    assert [(e.name, e.in_flight) for e in balancer.table.pods()] == [("hello-5f8b9c6d7-fghij", 1), ("hello-new", 0)]
    for ticket in tickets:
        balancer.end(ticket, 2.0)
    assert [h.entry.in_flight for h in handles] == [0, 0]


# -- subsets between replicas ----------------------------------------------------------

REPLICAS = ["katyusha-6d8f7b9c5-2xk4p", "katyusha-6d8f7b9c5-9qz7r", "katyusha-6d8f7b9c5-hv3mw", "katyusha-6d8f7b9c5-t5n8d"]


def owners(assignment):
    return {pod: replica for replica, pods in assignment.items() for pod in pods}


@pytest.mark.parametrize("count", [1, 3, 4, 10, 37, 100])
def test_every_pod_has_one_owner_and_counts_differ_by_at_most_one(count):
    pods = [f"hello-5f8b9c6d7-{i:05d}" for i in range(count)]
    assignment = assign(pods, REPLICAS)
    assert sorted(owners(assignment)) == sorted(pods)
    assert sum(len(v) for v in assignment.values()) == count
    loads = [len(v) for v in assignment.values()]
    assert max(loads) - min(loads) <= 1
    # The same answer whatever order the names came in.
    assert assign(list(reversed(pods)), list(reversed(REPLICAS))) == assignment


def test_subset_is_stable_under_pod_churn_and_replica_replacement():
    pods = [f"hello-5f8b9c6d7-{i:05d}" for i in range(100)]
    before = owners(assign(pods, REPLICAS))
    # One pod more, or one fewer: few others change owner (index slicing as Knative's moves about 2 per boundary).
    grown = owners(assign(pods + ["hello-5f8b9c6d7-new00"], REPLICAS))
    assert sum(before[p] != grown[p] for p in pods) <= 3
    shrunk = owners(assign(pods[1:], REPLICAS))
    assert sum(before[p] != shrunk[p] for p in pods[1:]) <= 3
    # A replica replaced by a new pod of another name: its own 25 pods move, and fewer than as many others.
    replaced = REPLICAS[:3] + ["katyusha-6d8f7b9c5-aaaaa"]
    after = owners(assign(pods, replaced))
    own = [p for p in pods if before[p] == REPLICAS[3]]
    others_moved = sum(before[p] != after[p] for p in pods if p not in own)
    assert all(after[p] != REPLICAS[3] for p in own)
    assert others_moved < len(own)


def test_subset_of_one_replica_borrows_when_pods_are_fewer_and_takes_all_when_unknown():
    pods = ["hello-a", "hello-b"]
    shares = [subset(pods, r, REPLICAS) for r in REPLICAS]
    assert all(len(s.pods) == 1 for s in shares)  # each replica gets one pod
    assert sorted({p for s in shares for p in s.owned}) == pods  # and each pod has its owner
    assert sum(len(s.borrowed) for s in shares) == 2
    # Not in the list yet (not ready), or alone: every pod, as Knative's activator at index -1.
    assert subset(pods, "katyusha-new", REPLICAS).pods == tuple(pods)
    assert subset(pods, REPLICAS[0], REPLICAS[:1]).pods == tuple(pods)
    assert subset([], REPLICAS[0], REPLICAS).pods == ()


def test_subset_endpoints_only_with_finite_concurrency():
    unlimited = service_endpoints("demo/hello", [slice_doc("hello-7x2kq"), slice_doc("hello-9m4tz")], port="http")
    assert subset_endpoints(unlimited, REPLICAS[0], REPLICAS) == unlimited
    limited = service_endpoints(
        "demo/hello", [slice_doc("hello-7x2kq"), slice_doc("hello-9m4tz")], port="http", concurrency=2
    )
    shares = [subset_endpoints(limited, r, REPLICAS[:2]) for r in REPLICAS[:2]]
    assert sorted(name for s in shares for name in s.ready_names()) == sorted(limited.ready_names())
    assert all(len(s.ready) == 1 and s.draining == limited.draining for s in shares)


# -- leader election on a fake clock ---------------------------------------------------


class FakeLease:
    """An API server's Lease with resourceVersion checks, to play two electors against."""

    def __init__(self):
        self.record: LeaseRecord | None = None
        self.version = 0

    def read(self):
        return self.record

    def write(self, action):
        if isinstance(action, Create):
            if self.record is not None:
                return None  # 409: exists
        elif self.record is None or action.record.resource_version != self.record.resource_version:
            return None  # 409: conflict
        self.version += 1
        r = action.record
        self.record = LeaseRecord(r.holder, r.duration, r.acquire_time, r.renew_time, r.transitions, str(self.version))
        return self.record


def play(elector, lease, now):
    elector.observe(now, lease.read())
    action = elector.step(now, f"t={now}")
    if action is not None:
        written = lease.write(action)
        if written is not None:
            elector.written(now, written)
    return elector.is_leader(now)


def test_one_leader_renews_and_a_follower_takes_over_only_after_expiry():
    lease = FakeLease()
    a = LeaseElector("a", lease_duration=15, renew_deadline=10, retry_period=2)
    b = LeaseElector("b", lease_duration=15, renew_deadline=10, retry_period=2)
    assert play(a, lease, 0.0) and not play(b, lease, 0.5)
    for t in range(2, 30, 2):  # a renews every 2 s: b never takes over
        assert play(a, lease, float(t)) and not play(b, lease, t + 0.5)
    assert lease.record.transitions == 0 and lease.record.acquire_time == "t=0.0"
    # a stops (killed): b first sees the last renewal at 28.5, so it waits a full duration from then.
    assert not play(b, lease, 43.0)
    assert not a.is_leader(38.1)  # a would have stopped acting at its renew deadline (28 + 10)
    assert play(b, lease, 43.6)
    assert lease.record.holder == "b" and lease.record.transitions == 1


def test_racing_candidates_one_wins_and_a_released_lease_is_taken_at_once():
    lease = FakeLease()
    a, b = LeaseElector("a"), LeaseElector("b")
    a.observe(0.0, lease.read())
    b.observe(0.0, lease.read())
    wins = [lease.write(a.step(0.0, "s")), lease.write(b.step(0.0, "s"))]
    assert wins[1] is None  # b's create found the lease made: 409
    a.written(0.0, wins[0])
    assert a.is_leader(0.0) and not play(b, lease, 0.1)
    # a stops cleanly: the release clears the holder, and b takes it without waiting the duration.
    release = a.release("s2")
    assert isinstance(release, Update) and lease.write(release) is not None
    assert not a.is_leader(0.3)
    assert play(b, lease, 0.4) and lease.record.holder == "b"


def test_lease_timings_are_checked():
    with pytest.raises(ConfigError, match="renew-deadline"):
        LeaseElector("a", lease_duration=15, renew_deadline=1, retry_period=2)
    with pytest.raises(ConfigError, match="lease-duration"):
        LeaseElector("a", lease_duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ConfigError, match="identity"):
        LeaseElector("")


def test_lease_record_round_trips_a_lease_document():
    doc = {
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "katyusha-control", "namespace": "katyusha", "resourceVersion": "991"},
        "spec": {"holderIdentity": "control-7c9d-x2", "leaseDurationSeconds": 15, "leaseTransitions": 3,
                 "acquireTime": "2026-12-01T09:00:00.000000Z", "renewTime": "2026-12-01T09:05:10.250000Z"},
    }  # fmt: skip
    record = LeaseRecord.from_document(doc)
    assert (record.holder, record.duration, record.transitions, record.resource_version) == ("control-7c9d-x2", 15.0, 3, "991")
    assert record.spec() == doc["spec"]


# -- annotations ------------------------------------------------------------------------


def test_kpa_settings_from_service_then_deployment_annotations():
    service = {"kind": "Service", "metadata": {"name": "hello", "namespace": "demo", "annotations": {
        "autoscaling.knative.dev/target": "10", "autoscaling.knative.dev/min-scale": "1",
        "description": "not ours", CONCURRENCY_ANNOTATION: "4"}}}  # fmt: skip
    deployment = {"kind": "Deployment", "metadata": {"name": "hello", "namespace": "demo", "annotations": {
        "autoscaling.knative.dev/minScale": "2", "deployment.kubernetes.io/revision": "3"}}}  # fmt: skip
    config = kpa_config(KPAConfig(), service, deployment)
    assert config.target == 10.0
    assert config.min_scale == 2  # the Deployment's wins
    assert config.container_concurrency == 4
    assert container_concurrency(service, deployment) == 4
    assert kpa_config(KPAConfig(), None, None) == KPAConfig()


def test_bad_annotations_name_the_object_and_key():
    deployment = {"kind": "Deployment", "metadata": {"name": "hello", "namespace": "demo",
                                                     "annotations": {"autoscaling.knative.dev/min-scale": "lots"}}}
    with pytest.raises(ConfigError, match="Deployment demo/hello: autoscaling.knative.dev/min-scale"):
        kpa_config(KPAConfig(), None, deployment)
    unknown = copy.deepcopy(deployment)
    unknown["metadata"]["annotations"] = {"autoscaling.knative.dev/nonsense": "1"}
    with pytest.raises(ConfigError, match="unknown autoscaling annotation"):
        kpa_config(KPAConfig(), None, unknown)
    negative = {"kind": "Service", "metadata": {"name": "s", "namespace": "n", "annotations": {CONCURRENCY_ANNOTATION: "-1"}}}
    with pytest.raises(ConfigError, match="Service n/s: katyusha.dev/container-concurrency"):
        container_concurrency(negative)


def test_backoff_doubles_to_the_cap_with_jitter_and_resets():
    backoff = Backoff(0.5, 4.0, random.Random(7))
    delays = [backoff.next() for _ in range(6)]
    assert all(0.25 <= d < 0.5 for d in delays[:1]) and all(2.0 <= d < 4.0 for d in delays[3:])
    backoff.reset()
    assert backoff.next() < 0.5
