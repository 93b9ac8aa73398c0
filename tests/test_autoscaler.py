"""The KPA decision core on synthetic metric series; every expected count is worked out in a comment."""

import pytest

from katyusha.core.autoscaler import Autoscaler, MetricWindow
from katyusha.core.autoscaler_config import KPAConfig
from katyusha.core.errors import BadInput

# Default target: 100 concurrent x 70% = 70 per pod. Stable window 60 s, panic window 6 s.
DEFAULT = KPAConfig()


def feed(scaler, start, stop, concurrency, rps=0.0):
    """One observation per second for t in [start, stop)."""
    for t in range(start, stop):
        scaler.record(float(t), concurrency, rps)


def test_stable_scaling_is_ceil_of_load_over_target():
    scaler = Autoscaler(DEFAULT, 0.0)
    feed(scaler, 0, 60, 400)
    # 400 / 70 = 5.71 -> 6 pods. Panic? ceil(400/70)=6 over 5 ready = 1.2 < 2.0: no.
    decision = scaler.decide(59.0, ready_pods=5)
    assert decision.desired == 6
    assert decision.panic is False
    assert decision.stable_value == pytest.approx(400)
    assert decision.target == pytest.approx(70)
    assert decision.reason == "stable"


def test_several_observations_in_one_second_are_averaged():
    window = MetricWindow(60)
    window.record(10.1, 10)
    window.record(10.9, 30)  # same bucket: mean 20
    window.record(12.0, 50)  # 11 has no observation: left out, not read as 0
    # (20 + 50) / 2 = 35 over the last 60 s; the last 1 s holds only bucket 12.
    assert window.average(12.5, 60) == pytest.approx(35)
    assert window.average(12.5, 1) == pytest.approx(50)
    # A window with no observation reads 0.
    assert window.average(200.0, 60) == 0.0


def test_panic_entry_on_a_2x_burst_hold_and_exit():
    scaler = Autoscaler(DEFAULT, 0.0)
    feed(scaler, 0, 60, 140)
    # Steady 140 on 2 pods: 140 / 70 = 2 pods, no panic.
    assert scaler.decide(59.0, 2).desired == 2

    # A burst to 280 (2x) for 6 s. At t=65 the panic window (6 s) holds buckets 60..65,
    # all 280: ceil(280/70) = 4 pods, 4 / 2 ready = 2.0 >= 200%: panic.
    # The stable window holds 54 x 140 + 6 x 280 = 9240 over 60 = 154 -> ceil(2.2) = 3;
    # panic provisions for the larger, 4.
    feed(scaler, 60, 66, 280)
    burst = scaler.decide(65.0, 2)
    assert burst.panic is True
    assert burst.panic_value == pytest.approx(280)
    assert burst.stable_value == pytest.approx(154)
    assert burst.desired == 4
    assert burst.reason == "panic"

    # Load falls to 70 and 4 pods are ready: the panic value soon wants 1 pod and no
    # longer crosses the threshold, but in panic the count never goes below the peak, 4.
    for t in range(66, 126):
        scaler.record(float(t), 70)
        if t % 2 == 0:
            held = scaler.decide(float(t), 4)
            assert held.desired == 4, t
            assert held.panic is True, t

    # Panic ends once a stable window has passed since the last crossing: 65 + 60 = 125,
    # strictly after it. At t=126 the stable window holds buckets 67..126, all 70: 1 pod,
    # but scaling down is limited to floor(4 ready / max-scale-down-rate 2) = 2.
    scaler.record(126.0, 70)
    calm = scaler.decide(126.0, 4)
    assert calm.panic is False
    assert calm.desired == 2
    assert calm.reason == "max-scale-down-rate"


def test_a_1_5x_rise_does_not_panic():
    scaler = Autoscaler(DEFAULT, 0.0)
    feed(scaler, 0, 60, 140)
    feed(scaler, 60, 66, 210)
    # ceil(210/70) = 3 pods over 2 ready = 1.5 < 2.0: stable mode. Stable value
    # (54 x 140 + 6 x 210) / 60 = 147 -> ceil(2.1) = 3.
    decision = scaler.decide(65.0, 2)
    assert decision.panic is False
    assert decision.desired == 3


def test_scale_to_zero_only_after_stable_window_and_grace():
    scaler = Autoscaler(DEFAULT, 0.0)
    feed(scaler, 0, 10, 10)  # traffic in seconds 0..9
    desired = {}
    for t in range(10, 101):
        scaler.record(float(t), 0)
        desired[t] = scaler.decide(float(t), 1)
    # Bucket 9 (the last with traffic) leaves the 60 s window when floor(now) - 60 >= 9,
    # i.e. at t=69: the first decision that wants zero. Until then one pod serves.
    assert desired[68].desired == 1 and desired[68].stable_value > 0
    assert desired[69].stable_value == 0
    # Zero is wanted from t=69; the grace period (30 s) holds one pod until 69 + 30 = 99.
    assert all(desired[t].desired == 1 for t in range(69, 99))
    assert desired[98].reason == "scale-to-zero grace"
    assert desired[99].desired == 0
    assert desired[99].reason == "scale to zero"
    # At zero, with nothing ready, it stays there.
    assert scaler.decide(100.0, 0).desired == 0


def test_pod_retention_period_longer_than_grace_delays_zero():
    cfg = DEFAULT.with_annotations({"autoscaling.knative.dev/scale-to-zero-pod-retention-period": "45s"})
    scaler = Autoscaler(cfg, 0.0)
    feed(scaler, 0, 10, 10)
    # As above zero is first wanted at t=69; max(grace 30, retention 45) = 45 -> 69 + 45 = 114.
    for t in range(10, 114):
        scaler.record(float(t), 0)
        assert scaler.decide(float(t), 1).desired == 1, t
    assert scaler.decide(114.0, 1).desired == 0


def test_a_new_service_is_not_idle_during_its_first_stable_window():
    scaler = Autoscaler(DEFAULT, 0.0)
    # No traffic at all: initial-scale 1 holds through the first stable window (60 s),
    # then the grace period runs: zero at 60 + 30 = 90, not before.
    assert scaler.decide(0.0, 1).desired == 1
    assert scaler.decide(59.0, 1).desired == 1
    assert scaler.decide(89.0, 1).desired == 1
    assert scaler.decide(90.0, 1).desired == 0


def test_initial_scale_then_rate_limited_scale_down():
    scaler = Autoscaler(KPAConfig(initial_scale=6), 0.0)
    assert scaler.decide(0.0, 0).desired == 6
    # After the first stable window with no load: 0 wanted, floor(6 / 2) = 3 allowed.
    assert scaler.decide(60.0, 6).desired == 3
    assert scaler.decide(62.0, 3).desired == 1  # floor(3 / 2) = 1


def test_scale_to_zero_disabled_and_min_scale_keep_pods():
    off = Autoscaler(KPAConfig(enable_scale_to_zero=False), 0.0)
    assert off.decide(500.0, 1).desired == 1
    assert off.decide(500.0, 1).reason == "scale-to-zero disabled"
    floor = Autoscaler(KPAConfig(min_scale=2), 0.0)
    decision = floor.decide(500.0, 2)
    assert decision.desired == 2 and decision.reason == "min-scale"


def test_max_scale_caps_desired():
    scaler = Autoscaler(KPAConfig(max_scale=3), 0.0)
    feed(scaler, 0, 60, 7000)
    # 7000 / 70 = 100 pods wanted; max-scale 3.
    decision = scaler.decide(59.0, 3)
    assert decision.desired == 3
    assert decision.reason == "max-scale"


def test_max_scale_up_rate_limits_growth():
    scaler = Autoscaler(KPAConfig(max_scale_up_rate=2), 0.0)
    feed(scaler, 0, 60, 700)
    # 700 / 70 = 10 wanted; ceil(2 ready x rate 2) = 4 at most this tick.
    first = scaler.decide(59.0, 2)
    assert first.desired == 4
    # Next tick with 4 ready: ceil(4 x 2) = 8; then with 8 ready: 10 (the need).
    assert scaler.decide(61.0, 4).desired == 8
    assert scaler.decide(63.0, 8).desired == 10


def test_max_scale_down_rate_limits_shrinking():
    scaler = Autoscaler(KPAConfig(max_scale_down_rate=4), 0.0)
    feed(scaler, 0, 60, 70)
    # 70 / 70 = 1 pod wanted; with 20 ready, floor(20 / 4) = 5 at least.
    decision = scaler.decide(59.0, 20)
    assert decision.desired == 5
    assert decision.reason == "max-scale-down-rate"


def test_rps_metric():
    cfg = KPAConfig.from_mapping({"metric": "rps"})
    scaler = Autoscaler(cfg, 0.0)
    feed(scaler, 0, 60, concurrency=1, rps=700)
    # Target 200 rps x 70% = 140 per pod: 700 / 140 = 5 pods. Concurrency (1) is not used.
    decision = scaler.decide(59.0, 5)
    assert decision.target == pytest.approx(140)
    assert decision.stable_value == pytest.approx(700)
    assert decision.desired == 5


def test_annotation_overrides_change_the_decision():
    cfg = DEFAULT.with_annotations({"autoscaling.knative.dev/target": "10",
                                    "autoscaling.knative.dev/window": "10s"})
    scaler = Autoscaler(cfg, 0.0)
    feed(scaler, 0, 10, 50)
    # Target 10 x 70% = 7: 50 / 7 = 7.14 -> 8 pods (default config would want ceil(50/70) = 1).
    assert scaler.decide(9.0, 8).desired == 8
    # A 10 s stable window forgets quickly: 10 s later only zeros remain -> floor(8/2) = 4.
    feed(scaler, 10, 20, 0)
    assert scaler.decide(19.0, 8).desired == 4


def test_poke_from_zero_asks_for_activation_scale_at_once():
    scaler = Autoscaler(KPAConfig(activation_scale=3), 0.0)
    assert scaler.decide(500.0, 0).desired == 0
    # One request waits with no pod ready: ceil(1/70) = 1, raised to activation-scale 3.
    decision = scaler.poke(501.0, waiting=1, ready_pods=0)
    assert decision.desired == 3
    assert decision.reason == "activation-scale"
    # Without activation-scale a single waiting request wants 1 pod.
    plain = Autoscaler(DEFAULT, 0.0)
    assert plain.decide(500.0, 0).desired == 0
    assert plain.poke(501.0).desired == 1


def test_poke_with_a_backlog_panics_from_zero():
    scaler = Autoscaler(DEFAULT, 0.0)
    # 500 waiting: ceil(500/70) = 8 pods; over max(1, 0 ready) = 8 >= 2: panic, 8 at once.
    decision = scaler.poke(300.0, waiting=500)
    assert decision.desired == 8
    assert decision.panic is True


def test_scale_down_delay_holds_the_peak():
    # A 6 s stable window, and a panic threshold high enough to keep panic out of the way.
    base = KPAConfig(stable_window=6, panic_threshold_percentage=1000)
    delayed = Autoscaler(KPAConfig(stable_window=6, panic_threshold_percentage=1000, scale_down_delay=10), 0.0)
    plain = Autoscaler(base, 0.0)
    for scaler in (delayed, plain):
        feed(scaler, 0, 6, 280)
        # 280 / 70 = 4 pods on 4 ready.
        assert scaler.decide(5.0, 4).desired == 4
        feed(scaler, 6, 16, 0)
    # At t=12 the stable window (6, 12] holds only zeros: 0 wanted, floor(4/2) = 2 allowed.
    assert plain.decide(12.0, 4).desired == 2
    # With a 10 s delay the highest count decided in (2, 12] is t=5's 4: it holds.
    held = delayed.decide(12.0, 4)
    assert held.desired == 4 and held.reason == "scale-down-delay"
    # At t=15 the t=5 decision is 10 s old and drops out: 2 (t=12's raw count, and now's).
    assert delayed.decide(15.0, 4).desired == 2


def test_excess_burst_capacity_tells_whether_the_queue_stays_in_path():
    scaler = Autoscaler(DEFAULT, 0.0)
    feed(scaler, 0, 10, 50)
    # 3 ready x 100 total per pod - 211 burst - 50 panic concurrency = 39 >= 0: not needed.
    roomy = scaler.decide(9.0, 3)
    assert roomy.excess_burst_capacity == 39
    assert roomy.activator_in_path is False
    # 2 ready: 200 - 211 - 50 = -61 < 0: the queueing proxy stays in the path.
    tight = scaler.decide(9.0, 2)
    assert tight.excess_burst_capacity == -61
    assert tight.activator_in_path is True
    assert Autoscaler(KPAConfig(target_burst_capacity=0), 0.0).decide(0.0, 1).excess_burst_capacity == 0
    assert Autoscaler(KPAConfig(target_burst_capacity=-1), 0.0).decide(0.0, 9).activator_in_path is True


def test_restart_with_ready_pods_starts_in_panic_holding_them():
    # No history after a restart must not read as idle: hold the 5 ready pods.
    scaler = Autoscaler(DEFAULT, 100.0, ready_pods=5)
    decision = scaler.decide(101.0, 5)
    assert decision.panic is True
    assert decision.desired == 5


def test_bad_observations_are_rejected():
    scaler = Autoscaler(DEFAULT, 0.0)
    for bad in (-1, float("nan"), float("inf"), "3", True):
        with pytest.raises(BadInput, match="concurrency"):
            scaler.record(1.0, bad)
    with pytest.raises(BadInput, match="rps"):
        scaler.record(1.0, 1, -5)
    with pytest.raises(BadInput, match="ready_pods"):
        scaler.decide(1.0, -1)
    # A rejected observation leaves the state usable.
    scaler.record(1.0, 70)
    assert scaler.decide(1.0, 1).stable_value == pytest.approx(70)


# -- the live loop, with an in-memory actuator and the demand source as a plain function --


class MemoryActuator:
    """Keeps the asked-for count per service; ``ready`` pods follow it only when the test says so."""

    def __init__(self, count=0):
        self.asked = {None: count}
        self.calls = []

    def current(self, service):
        return self.asked.get(service, 0)

    async def scale_to(self, service, count):
        self.calls.append(count if service is None else (service, count))
        self.asked[service] = count


class Clock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


def make_loop(demand, stats=None, actuator=None, config=None, configs=None):
    from katyusha.control.autoscaler import AutoscalerLoop

    documents = {"http://k/demand": demand}
    for index, doc in enumerate(stats or []):
        documents[f"http://pod{index}/stats"] = doc

    async def fetch(url):
        value = documents[url]
        if isinstance(value, Exception):
            raise value
        return value

    clock = Clock()
    loop = AutoscalerLoop(
        configs or {None: config or DEFAULT}, actuator or MemoryActuator(1), demand_urls=lambda: ["http://k/demand"],
        stats_urls=lambda service: [f"http://pod{i}/stats" for i in range(len(stats or []))],
        fetch_json=fetch, clock=clock,
    )
    return loop, documents, clock


async def test_loop_scales_the_actuator_from_demand():
    actuator = MemoryActuator(1)
    loop, documents, clock = make_loop({"waiting": 0, "in_flight": 200, "ready_pods": 1}, actuator=actuator)
    # 200 concurrent on 1 pod: ceil(200/70) = 3; 3 / 1 >= 2: panic, 3 pods.
    [command] = await loop.tick()
    assert command.count == 3 and command.decision.panic
    assert actuator.calls == [3] and loop.desired(None) == 3
    # Same demand, pods now ready: nothing to change, the actuator is not called again.
    documents["http://k/demand"] = {"waiting": 0, "in_flight": 200, "ready_pods": 3}
    clock.now = 2.0
    assert await loop.tick() == []
    assert actuator.calls == [3]
    assert loop.status()["decision"]["reason"] == "panic"


async def test_loop_decides_each_service_on_its_own_demand_and_settings():
    actuator = MemoryActuator(1)
    actuator.asked["web"] = 0
    configs = {None: DEFAULT, "web": KPAConfig().with_annotations({"autoscaling.knative.dev/target": "10"})}
    loop, _, _ = make_loop({"waiting": 0, "in_flight": 70, "ready_pods": 1,
                            "services": {"default": {"waiting": 0, "in_flight": 70, "ready_pods": 1},
                                         "web": {"waiting": 3, "in_flight": 11, "ready_pods": 0}}},
                           actuator=actuator, configs=configs)  # fmt: skip
    # default: 70 / 70 = 1 pod, as now. web: 14 / (10 x 0.7) = 2 pods.
    commands = await loop.tick()
    assert [(c.service, c.count) for c in commands] == [("web", 2)]
    assert actuator.calls == [("web", 2)]
    status = loop.status()
    assert status["services"]["web"]["observed"]["waiting"] == 3 and status["services"]["default"]["desired"] == 1


async def test_loop_uses_pod_stats_for_the_rps_metric():
    cfg = KPAConfig(metric="rps")
    stats = [{"requests_per_second": 300.0}, {"last": {"requests_per_second": 260.0}}, OSError("down")]
    loop, _, _ = make_loop({"waiting": 0, "in_flight": 1, "ready_pods": 4}, stats=stats,
                           actuator=MemoryActuator(4), config=cfg)
    # 300 + 260 (the unreachable pod adds nothing) = 560 rps / 140 per pod = 4 pods.
    assert await loop.tick() == []
    decision = loop.core.last[None]
    assert decision.stable_value == pytest.approx(560)
    assert decision.desired == 4


async def test_loop_survives_an_unreadable_demand():
    actuator = MemoryActuator(2)
    loop, documents, _ = make_loop(OSError("connection refused"), actuator=actuator)
    assert await loop.tick() is None
    assert loop.errors == 1 and actuator.calls == []
    documents["http://k/demand"] = {"waiting": "lots"}
    assert await loop.tick() is None and loop.errors == 2


async def test_demand_notice_scales_from_zero_at_once_and_bad_ones_change_nothing():
    from katyusha.control.autoscaler import UnknownService
    from katyusha.core.errors import BadInput
    from katyusha.core.scaling import ScaleTo

    actuator = MemoryActuator(0)
    loop, _, clock = make_loop({"waiting": 0, "in_flight": 0, "ready_pods": 0}, actuator=actuator,
                               config=KPAConfig(activation_scale=2))
    clock.now = 500.0
    # One request waits with nothing ready: activation-scale 2 is asked for before any tick.
    outcome = await loop.on_demand({"waiting": 1, "in_flight": 0, "ready_pods": 0, "service": "default"})
    assert isinstance(outcome, ScaleTo) and outcome.count == 2
    assert actuator.calls == [2]
    with pytest.raises(BadInput, match="waiting"):
        await loop.on_demand({"waiting": -3})
    with pytest.raises(BadInput, match="service"):
        await loop.on_demand({"waiting": 1, "service": 7})
    with pytest.raises(UnknownService, match="web"):
        await loop.on_demand({"waiting": 1, "service": "web"})
    assert actuator.calls == [2]


async def test_run_ticks_until_stopped():
    import asyncio

    actuator = MemoryActuator(1)
    loop, _, _ = make_loop({"waiting": 0, "in_flight": 70, "ready_pods": 1}, actuator=actuator,
                           config=KPAConfig(tick_interval=0.01))
    stop = asyncio.Event()
    task = asyncio.create_task(loop.run(stop))
    await asyncio.sleep(0.1)
    stop.set()
    await asyncio.wait_for(task, 5)
    # 70 / 70 = 1 pod: ticks ran (a decision exists) and the count stayed.
    assert loop.core.last[None].desired == 1
    assert actuator.calls == []
