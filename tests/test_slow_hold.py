"""slow-pod-hold (katyusha.core.capacity): a slow pod is left out while the L1 queue is short.

Driven through the service balancer's public calls, as the proxy and the
simulator drive it, with nonna's reports telling each pod's app time.
"""

from __future__ import annotations

import collections
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from katyusha.core.capacity import HOLD_PROBE_S
from katyusha.core.errors import ConfigError
from katyusha.core.feedback import Feedback
from katyusha.core.membership import PodChange, PodSpec
from katyusha.core.service import ServiceBalancer, ServiceSettings
from katyusha.proxy import config
from tests.katyusha_fleet import admin, blast, katyusha, start_pods

# pod-0 is four times slower than the three others (app time 80 against 20 ms).
APP_MS = {"pod-0": 80.0, "pod-1": 20.0, "pod-2": 20.0, "pod-3": 20.0}


def balancer(hold: float) -> ServiceBalancer:
    # One slot per pod (no extra), so the hold's arithmetic below counts slots as pods.
    service = ServiceBalancer(ServiceSettings(slow_hold=hold, capacity_extra=0), rng=random.Random(1))
    service.change_pods(PodChange(upsert=tuple(
        PodSpec(name, f"http://127.0.0.1:{9000 + i}", "node-1", None, 1) for i, name in enumerate(APP_MS))), 0.0)
    return service


def answer(service: ServiceBalancer, ticket, now: float) -> list:
    """The ticket's pod answers with its report; the request ends. Returns the tickets admitted."""
    handle = ticket.dispatch
    name = handle.entry.name
    handle.on_head(now, Feedback(0, 0, 1, 0.0, APP_MS[name], name, None), 200)
    return service.end(ticket, now)


def warm(service: ServiceBalancer, now: float) -> float:
    """Every pod answers one request (pod-0 last), so each one's app time is known."""
    tickets = []
    for _ in APP_MS:
        ticket = service.offer(now)
        assert ticket.admitted
        service.dispatch(ticket, now)
        tickets.append(ticket)
    assert {t.dispatch.entry.name for t in tickets} == set(APP_MS)
    now += 0.08
    for ticket in sorted(tickets, key=lambda t: t.dispatch.entry.name, reverse=True):
        answer(service, ticket, now)
    return now


def fill_fast_pods(service: ServiceBalancer, now: float) -> list:
    """Three requests in flight, on the three fast pods (pod-0 is left idle)."""
    tickets = []
    for _ in range(3):
        ticket = service.offer(now)
        assert ticket.admitted
        service.dispatch(ticket, now, avoid=[service.table.get("pod-0")])
        tickets.append(ticket)
    assert sorted(t.dispatch.entry.name for t in tickets) == ["pod-1", "pod-2", "pod-3"]
    return tickets


def test_without_the_hold_an_idle_slow_pod_takes_the_next_request():
    service = balancer(hold=0.0)
    now = warm(service, 0.0)
    fill_fast_pods(service, now)
    ticket = service.offer(now)
    assert ticket.admitted
    assert service.dispatch(ticket, now).entry.name == "pod-0"


def test_a_slow_pod_is_held_while_the_queue_is_short_and_takes_requests_beyond_its_threshold():
    service = balancer(hold=1.0)
    now = warm(service, 0.0)
    capacity = service.capacity
    slow = service.table.get("pod-0")
    assert list(capacity.slow) == [slow]
    # Break-even: 3 other slots x (4 - 1) = 9 requests may wait before pod-0 is worth it.
    assert capacity.thresholds[slow] == pytest.approx(9.0)
    running = fill_fast_pods(service, now)
    # The queue is short: the request waits in L1 for a fast pod rather than go to idle pod-0.
    first = service.offer(now)
    assert first.waiting and slow.in_flight == 0
    assert service.queue.limit == 3
    # A fast pod frees: the waiting request goes there, not to pod-0.
    admitted = answer(service, running.pop(0), now + 0.02)
    assert admitted == [first]
    assert service.dispatch(first, now + 0.02).entry.name != "pod-0"
    running.append(first)
    # Eleven more wait: when the next end has let one in, 10 still wait, beyond the threshold
    # of 9: pod-0 is let in and takes one.
    waiting = [service.offer(now + 0.02) for _ in range(11)]
    assert all(t.waiting for t in waiting)
    admitted = answer(service, running.pop(0), now + 0.03)
    assert len(admitted) == 2 and service.queue.limit == 4
    picked = sorted(service.dispatch(t, now + 0.03).entry.name for t in admitted)
    assert "pod-0" in picked
    # Every request still holds a place: 4 in flight, the rest waiting, none lost.
    assert service.queue.active == 4 and service.queue.waiting == 9


def test_with_the_default_extra_slot_a_held_pod_gets_nothing_while_the_fast_pods_are_full():
    """Each fast pod holds 2 (its concurrency and the extra); the L1 limit counts no slot of the
    held pod-0, so the 7th request waits for a fast pod instead of being let in with no pod
    having room (then any pod may be picked: idle pod-0 would be)."""
    service = ServiceBalancer(ServiceSettings(slow_hold=1.0), rng=random.Random(1))
    service.change_pods(PodChange(upsert=tuple(
        PodSpec(name, f"http://127.0.0.1:{9000 + i}", "node-1", None, 1) for i, name in enumerate(APP_MS))), 0.0)
    assert service.settings.capacity_extra == 1
    now = warm(service, 0.0)
    slow = service.table.get("pod-0")
    tickets = [service.offer(now) for _ in range(7)]
    assert slow in service.capacity.held
    sent = [service.dispatch(t, now).entry.name for t in tickets if t.admitted]
    assert sorted(sent) == ["pod-1", "pod-1", "pod-2", "pod-2", "pod-3", "pod-3"]
    assert tickets[-1].waiting and slow.in_flight == 0 and service.queue.limit == 6


def test_a_held_pod_gets_a_request_after_a_while_without_one():
    service = balancer(hold=1.0)
    now = warm(service, 0.0)
    slow = service.table.get("pod-0")
    running = fill_fast_pods(service, now)
    assert service.offer(now).waiting
    answer(service, running[0], now + 0.02)
    assert slow in service.capacity.held
    # Over HOLD_PROBE_S later pod-0 is let in again when a request ends, so its speed is seen anew.
    later = now + HOLD_PROBE_S + 0.1
    answer(service, running[1], later)
    assert slow not in service.capacity.held and slow in service.capacity.open


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.integers(0, 3)), min_size=1, max_size=300))
def test_with_the_hold_no_pod_is_sent_more_than_it_may_hold_and_every_request_is_served(steps):
    """Random arrivals and ends: every admitted request finds a pod with room; all are served in the end."""
    service = balancer(hold=0.5)
    now = warm(service, 0.0)
    caps = {e.name: service.capacity.caps[e] for e in service.table.pods()}
    in_flight: list = []
    offered = served = 0

    def send(tickets):
        for ticket in tickets:
            handle = service.dispatch(ticket, now)
            assert handle.entry.in_flight <= caps[handle.entry.name]
            in_flight.append(ticket)

    for arrive, which in steps:
        now += 0.005
        if arrive or not in_flight:
            offered += 1
            ticket = service.offer(now)
            if ticket.admitted:
                send([ticket])
        else:
            ticket = in_flight.pop(which % len(in_flight))
            served += 1
            send(answer(service, ticket, now))
    while in_flight:
        now += 0.005
        served += 1
        send(answer(service, in_flight.pop(0), now))
    assert served == offered and service.queue.waiting == 0 and service.queue.active == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_l1_limit_follows_the_held_pods_as_app_times_change(seed):
    """Two equal pods with heavy-tailed app times (lognormal, sigma 1, mean 10 ms; 60% load), the
    defaults: a pod is now and then slow against a median a round of ends old, held with a
    request in flight, and let go when its own end finds it no longer slow. After every end the
    L1 limit is the ready pods' room (two each, one while slow, none while held): no slot is lost for good (a lost one
    turned the simulator's M/M/2 into an M/M/1, its queue growing without end)."""
    import heapq

    service = ServiceBalancer(ServiceSettings(), rng=random.Random(1))
    service.change_pods(PodChange(upsert=tuple(
        PodSpec(f"pod-{i}", f"http://127.0.0.1:{9000 + i}", "node-1", None, 1) for i in range(2))), 0.0)
    capacity = service.capacity
    rng = random.Random(seed)
    events: list = [(rng.expovariate(120.0), 0, None)]
    app_ms: dict = {}
    count = 0
    while events:
        now, seq, ticket = heapq.heappop(events)
        if ticket is None:  # an arrival
            admitted = [service.offer(now)]
            if seq < 5_000:
                heapq.heappush(events, (now + rng.expovariate(120.0), seq + 1, None))
        else:
            handle = ticket.dispatch
            # The pod's report: our other request there, if any (no other balancer sends to it).
            handle.on_head(now, Feedback(0, handle.entry.in_flight - 1, 1, 0.0, app_ms.pop(ticket),
                                         handle.entry.name, None), 200)
            admitted = service.end(ticket, now)
            # Each pod's concurrency and its extra one; a slow pod without the extra; a held one none.
            room = sum(0 if entry in capacity.held else 1 if entry in capacity.slow else 2
                       for entry in service.table.ready())
            assert service.queue.limit == room, (now, capacity.held, capacity.slow)
        for t in admitted:
            if t.admitted:
                service.dispatch(t, now)
                app_ms[t] = 10.0 * rng.lognormvariate(-0.5, 1.0)
                count += 1
                heapq.heappush(events, (now + app_ms[t] / 1000.0, -count, t))
    assert service.queue.waiting == 0 and service.queue.active == 0


def seconds_to_forgive(seed: int) -> float:
    """Four equal pods (exp 20 ms, 40% load), the defaults; pod-0 is four times slower from 2 to
    5 s. How long after 5 s until it is no longer held as much slower (out of ``thresholds``)."""
    import heapq

    service = ServiceBalancer(ServiceSettings(), rng=random.Random(1))
    service.change_pods(PodChange(upsert=tuple(
        PodSpec(f"pod-{i}", f"http://127.0.0.1:{9000 + i}", "node-1", None, 1) for i in range(4))), 0.0)
    capacity = service.capacity
    slow = service.table.get("pod-0")
    rng = random.Random(seed)
    rate = 0.4 * 4 / 0.020
    events: list = [(rng.expovariate(rate), 0, None)]
    app_ms: dict = {}
    count = 0
    held = False
    while events:
        now, seq, ticket = heapq.heappop(events)
        if ticket is None:  # an arrival
            admitted = [service.offer(now)]
            if now < 12.0:
                heapq.heappush(events, (now + rng.expovariate(rate), seq + 1, None))
        else:
            handle = ticket.dispatch
            # The pod's report: our other request there, if any (no other balancer sends to it).
            handle.on_head(now, Feedback(0, handle.entry.in_flight - 1, 1, 0.0, app_ms.pop(ticket),
                                         handle.entry.name, None), 200)
            admitted = service.end(ticket, now)
        held = held or (4.0 < now < 5.0 and slow in capacity.held)
        if now >= 5.0 and slow not in capacity.thresholds:
            assert held  # the slow window did hold it
            return now - 5.0
        for t in admitted:
            if t.admitted:
                entry = service.dispatch(t, now).entry
                work = 20.0 * rng.expovariate(1.0)
                app_ms[t] = work * 4 if entry is slow and 2.0 <= now < 5.0 else work
                count += 1
                heapq.heappush(events, (now + app_ms[t] / 1000.0, -count, t))
    return float("inf")


def test_a_pod_slow_for_a_while_is_let_go_within_seconds_of_being_fast_again():
    """Held, pod-0 is sent one request a second (a probe) and the fast pods take the rest: a
    report after a second of silence weighs 0.63 of its app time, so one or two probes that
    find it fast let it go (2.4 s at most over 40 runs). Weighted as one report of many (0.15),
    its app time took up to five probes to come down, the fleet a pod short meanwhile."""
    times = sorted(seconds_to_forgive(seed) for seed in range(1, 41))
    assert times[-1] <= 3.0, times


def test_slow_pod_hold_is_a_setting_globally_and_per_service_with_errors_naming_it():
    c = config.validate({"slow-pod-hold": 0.5, "services": [
        {"name": "a", "pods": []}, {"name": "b", "path-prefix": "/b", "pods": [], "slow-pod-hold": 0}]})
    assert [c.service_settings(spec).slow_hold for spec in c.service_specs] == [0.5, 0.0]
    # The default (0.5) is what a service gets when neither sets it.
    defaults = config.validate({})
    assert defaults.service_settings(defaults.service_specs[0]).slow_hold == 0.5
    assert ServiceSettings().slow_hold == 0.5
    # With fukabunsan (load-aware placement) off, pods are picked round robin and none is held.
    off = config.validate({"katyusha-enable-fukabunsan": False, "slow-pod-hold": 1})
    assert off.service_settings(off.service_specs[0]).slow_hold == 0.0
    for raw, key in (({"slow-pod-hold": -1}, "slow-pod-hold"), ({"slow-pod-hold": "x"}, "slow-pod-hold"),
                     ({"services": [{"name": "a", "slow-pod-hold": "x"}]}, "services[0].slow-pod-hold")):
        with pytest.raises(ConfigError) as caught:
            config.validate(raw)
        assert caught.value.key == key


# -- live: real sim-backend and nonna processes behind katyusha ---------------------------

@pytest.fixture(scope="module")
def slow_and_fast_pods():
    # pod-0 answers in 100 ms, the three others in 20 ms (a constant service time, so the
    # slowness is the speed alone).
    started = start_pods([0.2, 1.0, 1.0, 1.0], service="const:20ms")
    yield started
    for pod in started:
        pod.stop()


async def served_by_pod(pods, *args: str) -> collections.Counter:
    """400 requests, 8 at a time, through katyusha with ``args``: how many each pod served."""
    with katyusha(*[a for pod in pods for a in ("--pod", pod.spec + ",concurrency=1")],
                  "--keep-nonna-headers", "true", *args) as proxy:
        results = await blast(proxy.url + "/", 400, 8)
        assert collections.Counter(status for status, _, _ in results) == {200: 400}
        _, state = admin(proxy, "GET", "/pods")
        by_name = {pod["name"]: pod for pod in state["pods"]}
        assert by_name["pod-0"]["capacity"] == 2  # concurrency 1 and the extra (not used while slow)
    return collections.Counter(headers["nonna-pod"] for _, headers, _ in results)


async def test_with_the_defaults_a_much_slower_pod_is_left_out_while_the_queue_is_short(slow_and_fast_pods):
    """Eight clients keep two requests waiting for three fast pods (each holding its request and
    one waiting in nonna, the default extra slot): with the defaults they wait for a
    fast pod (pod-0 gets its first request, then one a second to see whether it is still slow);
    with the hold off, pod-0 takes a request whenever it is idle, its share of the work."""
    held = await served_by_pod(slow_and_fast_pods)
    not_held = await served_by_pod(slow_and_fast_pods, "--slow-pod-hold", "0")
    # pod-0 serves 10 requests a second when never held (400 x 10/160 = 25 of them); held, about
    # one a second: a third of the unheld count leaves room for a slow machine's longer run.
    assert not_held["pod-0"] >= 15, not_held
    assert held["pod-0"] * 3 <= not_held["pod-0"], (held, not_held)
    assert sum(held.values()) == sum(not_held.values()) == 400
