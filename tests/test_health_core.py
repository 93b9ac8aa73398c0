"""Pod health in the core (katyusha.core.health through the service balancer), on a fake clock.

Probes, active checks and outlier ejection are decided by the core alone: the
driver only runs the probes it is told to and reports them with ``now``.
"""

from __future__ import annotations

import random

import pytest

from katyusha.core.errors import ConfigError
from katyusha.core.health import HealthSettings, PodHealth
from katyusha.core.membership import PodChange, PodSpec
from katyusha.core.service import ServiceBalancer, ServiceSettings


def service(pods: int = 3, admin: bool = True, **health) -> ServiceBalancer:
    # Per-pod capacity off: these tests are about which pods are in the ready set.
    balancer = ServiceBalancer(ServiceSettings(capacity_factor=0, health=HealthSettings(**health)),
                               rng=random.Random(3))
    balancer.change_pods(PodChange(upsert=tuple(spec(i, admin) for i in range(pods))), 0.0)
    return balancer


def spec(index: int, admin: bool = True, port: int = 0) -> PodSpec:
    url = f"http://127.0.0.1:{9100 + 2 * index + port}"
    return PodSpec(f"pod-{index}", url, "node-1", f"http://127.0.0.1:{9101 + 2 * index}" if admin else None)


def ready(s: ServiceBalancer) -> list[str]:
    return sorted(entry.name for entry in s.table.ready())


def entry(s: ServiceBalancer, name: str):
    return s.table.get(name)


def answer(s: ServiceBalancer, name: str, now: float, status: int, pod_error: str | None = None) -> None:
    """One request that the policy sent to ``name`` (forced) answered ``status``."""
    ticket = s.offer(now)
    handle = s.dispatch(ticket, now, avoid=[e for e in s.table.ready() if e.name != name])
    assert handle.entry.name == name
    handle.on_head(now, None, status, pod_error)
    s.end(ticket, now)


def run_probes(s: ServiceBalancer, now: float, healthy: set[str]) -> list:
    """Run every probe due at ``now``; the pods in ``healthy`` answer. Returns the tickets let in."""
    admitted = []
    for pod, probe in s.health_due(now):
        admitted += s.probe_result(pod, now, probe.pod in healthy)
    return admitted


def test_a_pod_whose_connection_is_refused_leaves_at_once_and_returns_after_rise_probes():
    s = service()
    ticket = s.offer(0.0)
    handle = s.dispatch(ticket, 0.0)
    dead = handle.entry.name
    # Nothing reached the pod: out of the ready set before the next pick.
    assert handle.on_failure(0.1, retryable=True, sent_nothing=True)
    assert dead not in ready(s) and len(ready(s)) == 2
    assert s.pod_row(entry(s, dead), 0.1)["health"] == "probing"
    # Probed every health-down-interval (0.5 s), nonna's /healthz since it has an admin URL.
    assert s.next_health_deadline() == pytest.approx(0.6)
    assert s.health_due(0.5) == []
    [(pod, probe)] = s.health_due(0.6)
    assert probe.kind == "admin" and probe.url.endswith("/healthz") and probe.pod == dead
    # In flight: not asked again until it answers.
    assert s.health_due(0.7) == [] and s.next_health_deadline() is None
    s.probe_result(pod, 0.8, ok=False)
    assert dead not in ready(s)
    # Back after two probes in a row succeed (health-rise), not one; after a success the next
    # probe comes health-fast-interval (0.1 s) later, not another health-down-interval.
    assert run_probes(s, 1.3, {dead}) == [] and dead not in ready(s)
    assert s.next_health_deadline() == pytest.approx(1.4)
    run_probes(s, 1.41, {dead})
    assert dead in ready(s)
    row = s.pod_row(entry(s, dead), 1.41)
    assert (row["health"], row["downs"], row["returns"]) == ("ok", 1, 1)
    assert [e.what for e in s.take_health_events()] == ["down", "back"]
    s.end(ticket, 2.0)


def test_requests_wait_while_no_pod_serves_and_go_out_when_one_returns():
    s = service(pods=1)
    ticket = s.offer(0.0)
    first = s.dispatch(ticket, 0.0)
    # The only pod refused: the request may try again, and waits for a pod (no 502).
    assert first.on_failure(0.1, retryable=True, sent_nothing=True)
    assert s.dispatch(ticket, 0.1) is None and s.needs_pods
    assert run_probes(s, 0.6, set()) == []
    run_probes(s, 1.1, {"pod-0"})
    # The pod's return lets the ticket out: the driver wakes it.
    assert run_probes(s, 1.21, {"pod-0"}) == [ticket]
    handle = s.dispatch(ticket, 1.21)
    assert handle.entry.name == "pod-0" and not ticket.maybe_executed
    s.end(ticket, 1.7)


def test_consecutive_5xx_eject_a_pod_which_returns_after_the_ejection_time_when_healthy():
    s = service(pods=4, base_ejection=30.0, max_ejection_percent=50)
    for n in range(4):
        answer(s, "pod-1", 0.1 * n, 500)
    assert "pod-1" in ready(s)
    answer(s, "pod-1", 0.5, 503)  # the fifth in a row (outlier-consecutive-failures 5)
    assert "pod-1" not in ready(s)
    row = s.pod_row(entry(s, "pod-1"), 10.5)
    assert (row["health"], row["ejections"], row["ejected_until_s"]) == ("ejected", 1, 20.0)
    # Traffic moves to the others.
    picks = set()
    for n in range(30):
        ticket = s.offer(1.0 + n)
        picks.add(s.dispatch(ticket, 1.0 + n).entry.name)
        s.end(ticket, 1.0 + n)
    assert picks == {"pod-0", "pod-2", "pod-3"}
    # Nothing to probe until the ejection ends; then it is probed, and back once healthy.
    assert s.next_health_deadline() == pytest.approx(30.5)
    assert s.health_due(30.4) == []
    run_probes(s, 30.5, set())
    assert "pod-1" not in ready(s)
    run_probes(s, 31.0, {"pod-1"})
    run_probes(s, 31.5, {"pod-1"})
    assert "pod-1" in ready(s)
    # Ejected again soon after: twice as long (a level per ejection).
    for n in range(5):
        answer(s, "pod-1", 40.0 + n * 0.1, 500)
    assert s.pod_row(entry(s, "pod-1"), 40.4)["ejected_until_s"] == pytest.approx(60.0)
    events = [(e.what, e.pod) for e in s.take_health_events()]
    assert events == [("ejected", "pod-1"), ("back", "pod-1"), ("ejected", "pod-1")]


def test_the_ejection_level_decays_while_the_pod_stays_healthy():
    health = PodHealth(HealthSettings(base_ejection=10.0, consecutive=2, max_ejection_percent=50))
    for key in "abc":
        health.add(key, key, f"http://{key}", None)
    for _ in range(2):
        health.response("a", 0.0, 500)
    assert health.get("a").ejected_until == 10.0
    for now in (10.0, 10.5):
        for key, _ in health.due(now):
            health.probe_result(key, now, True)
    assert health.serving("a")
    for _ in range(2):
        health.response("a", 11.0, 500)
    assert health.get("a").ejected_until == 31.0  # level 2
    for now in (31.0, 31.5):
        for key, _ in health.due(now):
            health.probe_result(key, now, True)
    # 35 s healthy: three levels' worth of decay, so the next ejection is the first level again.
    for _ in range(2):
        health.response("a", 66.5, 502)
    assert health.get("a").ejected_until == 76.5


def test_nonna_s_overload_answers_are_not_failures_and_a_success_resets_the_count():
    s = service(pods=3)
    for n in range(4):
        answer(s, "pod-0", n, 500)
    answer(s, "pod-0", 5, 200)
    for n in range(4):
        answer(s, "pod-0", 6 + n, 502)
    # nonna's own queue-full and queue-timeout answers: the app was never asked.
    for n in range(10):
        answer(s, "pod-0", 10 + n, 503, "queue-full")
        answer(s, "pod-0", 10 + n, 504, "queue-timeout")
    assert "pod-0" in ready(s)
    assert s.pod_row(entry(s, "pod-0"), 20)["consecutive_failures"] == 0


def test_failed_tries_count_as_outlier_failures_too():
    s = service(pods=3, max_ejection_percent=50)
    for n in range(5):
        ticket = s.offer(n)
        handle = s.dispatch(ticket, n, avoid=[e for e in s.table.ready() if e.name != "pod-2"])
        handle.on_failure(n + 0.1, retryable=False)  # a reset or a timeout: maybe executed
        s.end(ticket, n + 0.1)
    assert "pod-2" not in ready(s)
    assert s.pod_row(entry(s, "pod-2"), 5.0)["health"] == "ejected"


def test_at_most_max_ejection_percent_at_once_and_never_the_last_serving_pod():
    s = service(pods=4)  # defaults: 10% of 4 pods, at least one
    for name in ("pod-0", "pod-1"):
        for n in range(5):
            answer(s, name, n, 500)
    assert ready(s) == ["pod-1", "pod-2", "pod-3"]
    events = [(e.what, e.pod) for e in s.take_health_events()]
    assert events == [("ejected", "pod-0"), ("not-ejected", "pod-1")]
    # Two pods: ejection could leave one; one pod: never ejected, whatever it answers.
    alone = service(pods=1, max_ejection_percent=100)
    for n in range(20):
        answer(alone, "pod-0", n, 500)
    assert ready(alone) == ["pod-0"]
    # Unreachable pods leave whatever the share: they serve nobody.
    for name in ("pod-1", "pod-2"):
        ticket = s.offer(30.0)
        handle = s.dispatch(ticket, 30.0, avoid=[e for e in s.table.ready() if e.name != name])
        handle.on_failure(30.0, retryable=True, sent_nothing=True)
        s.end(ticket, 30.0)
    assert ready(s) == ["pod-3"]


def test_active_checks_for_pods_without_nonna_fall_and_rise():
    s = service(pods=2, admin=False, path="/health", interval=2.0, rise=2, fall=3)
    assert s.next_health_deadline() == 2.0
    due = s.health_due(2.0)
    assert sorted((p.pod, p.kind, p.url) for _, p in due) == [
        ("pod-0", "http", "http://127.0.0.1:9100/health"), ("pod-1", "http", "http://127.0.0.1:9102/health")]
    for pod, probe in due:
        s.probe_result(pod, 2.0, probe.pod == "pod-0")
    # Two failed checks are not a fall; three in a row are. After a failed check the next one
    # comes health-fast-interval (0.1 s) later (falling), a passing pod's every interval.
    assert s.next_health_deadline() == pytest.approx(2.1)
    assert [p.pod for _, p in s.health_due(2.11)] == ["pod-1"]
    s.probe_result(entry(s, "pod-1"), 2.11, False)
    assert ready(s) == ["pod-0", "pod-1"]
    run_probes(s, 2.22, {"pod-0"})
    assert ready(s) == ["pod-0"]
    assert s.pod_row(entry(s, "pod-1"), 2.22)["health_cause"] == "check"
    # Out: probed every down interval; back after two successes, the second one fast.
    run_probes(s, 2.73, {"pod-0", "pod-1"})
    assert ready(s) == ["pod-0"]
    run_probes(s, 2.84, {"pod-0", "pod-1"})
    assert ready(s) == ["pod-0", "pod-1"]
    # pod-0 passed every check: next checked one interval after its last.
    assert s.health_due(3.9) == [] and [p.pod for _, p in s.health_due(4.0)] == ["pod-0"]


def test_without_health_path_pods_with_no_nonna_are_not_checked_but_probed_by_tcp_when_out():
    s = service(pods=2, admin=False)
    assert s.next_health_deadline() is None
    ticket = s.offer(0.0)
    handle = s.dispatch(ticket, 0.0, avoid=[entry(s, "pod-0")])
    handle.on_failure(0.0, retryable=True, sent_nothing=True)
    [(_, probe)] = s.health_due(0.5)
    assert (probe.kind, probe.url) == ("tcp", "http://127.0.0.1:9102")
    s.end(ticket, 0.5)


def test_a_pod_given_again_keeps_its_verdict_unless_its_address_changed():
    s = service(pods=2)
    ticket = s.offer(0.0)
    s.dispatch(ticket, 0.0, avoid=[entry(s, "pod-0")]).on_failure(0.0, sent_nothing=True)
    s.end(ticket, 0.0)
    assert ready(s) == ["pod-0"]
    # The control plane puts the same pod again: still out until its probes say otherwise.
    s.change_pods(PodChange(upsert=(spec(1),)), 1.0)
    assert ready(s) == ["pod-0"]
    # Restarted on another port: a new address, a fresh start.
    s.change_pods(PodChange(upsert=(spec(1, port=40),)), 2.0)
    assert ready(s) == ["pod-0", "pod-1"]
    assert s.pod_row(entry(s, "pod-1"), 2.0)["health"] == "ok"


def test_a_removed_pod_forgets_its_health_and_late_results_change_nothing():
    s = service(pods=2)
    ticket = s.offer(0.0)
    handle = s.dispatch(ticket, 0.0, avoid=[entry(s, "pod-0")])
    handle.on_failure(0.0, sent_nothing=True)
    [(pod, _)] = s.health_due(0.5)
    s.change_pods(PodChange(remove=("pod-1",)), 0.6)
    assert s.probe_result(pod, 0.7, True) == [] and ready(s) == ["pod-0"]
    s.change_pods(PodChange(upsert=(spec(1),)), 0.8)
    assert ready(s) == ["pod-0", "pod-1"]
    s.end(ticket, 1.0)


@pytest.mark.parametrize("field, value, key", [
    ("rise", 0, "health-rise"), ("interval", 0, "health-interval"), ("path", "health", "health-path"),
    ("fast_interval", 0, "health-fast-interval"),
    ("max_ejection_percent", 101, "max-ejection-percent"), ("consecutive", -1, "outlier-consecutive-failures"),
])
def test_bad_health_settings_name_the_key(field, value, key):
    with pytest.raises(ConfigError) as info:
        HealthSettings(**{field: value})
    assert info.value.key == key
