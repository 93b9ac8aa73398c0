"""Pods killed under load, as benchmarks/chaos.py does it, bounded: real processes, a few seconds each.

Three pods (sim-backend + nonna, concurrency 2) behind katyusha with its
defaults, open-loop load at about half their capacity; one pod's app (then its
nonna) is SIGKILLed and started again 1.5 s later. Every GET succeeds; no
request goes unanswered; a POST fails only when it was executing on the killed
pod, and then katyusha says it may have run; every pod is back in the ready set.
"""

from __future__ import annotations

import pytest

from benchmarks import chaos

RATE = 120.0  # 3 pods x 2 slots / 20 ms = 300 req/s of capacity
DURATION_S = 6.0


@pytest.fixture(scope="module")
def fleet():
    with chaos.pods_running(3) as pods, chaos.katyusha_in_front(pods) as proxy:
        yield proxy, pods


@pytest.mark.parametrize("which, method", [("sim", "GET"), ("sim", "POST"), ("nonna", "GET")])
async def test_a_pod_killed_under_load(fleet, which, method):
    proxy, pods = fleet
    assert chaos.wait_all_ready(proxy)
    result, events = await chaos.pod_run(proxy, pods, which, method, RATE, DURATION_S, seed=3,
                                         every_s=2.0, down_s=1.5)
    row = chaos.summarize(result, events, method, None)
    assert [what for _, what, _ in events.events] == [f"kill-{which}", f"{which}-back"]
    assert row["sent"] > 500 and row["unanswered"] == 0, row
    if method == "GET":
        assert row["ok"] == row["sent"], row
    else:
        # Only the POSTs executing on the killed app fail (at most its two slots), and say so.
        assert row["failed_other"] == 0 and row["failed_maybe_executed"] <= 2, row
        assert set(row["failed_by"]) <= {"502"}, row
    assert chaos.wait_all_ready(proxy, 10.0), chaos.pod_health(proxy)
    killed = next(pod for pod in chaos.pod_health(proxy) if pod["name"] == events.events[0][2])
    assert killed["downs"] >= 1 and killed["returns"] >= 1


def test_recovery_is_judged_against_the_baseline_at_the_same_moments():
    """benchmarks/chaos's figures on made-up runs: 200 requests a second for 20 s, a pod killed at
    5 and 10 s and back 2 s later; after each return requests are slow (100 ms) for 0.6 s, then
    as fast as the baseline's (10 to 30 ms)."""
    from benchmarks.loadgen import RunResult, Sample

    def run(slow_after_return: bool) -> RunResult:
        samples = []
        for i in range(4000):
            at = i / 200
            latency = 10.0 + (i * 7919 % 21)
            if slow_after_return and any(0.0 <= at - back < 0.6 for back in (7.0, 12.0)):
                latency = 100.0
            samples.append(Sample(sent_at=at, latency_ms=latency, status=200))
        return RunResult(rate=200, duration_s=20.0, samples=samples)

    baseline = run(False)
    events = chaos.Chaos(events=[(5.0, "kill-sim", "pod-0"), (7.0, "sim-back", "pod-0"),
                                 (10.0, "kill-sim", "pod-1"), (12.0, "sim-back", "pod-1"),
                                 (15.0, "kill-sim", "pod-2")],
                         readmitted=[(7.3, "pod-0"), (12.4, "pod-1")])
    row = chaos.summarize(run(True), events, "GET", 30.0, baseline)
    assert row["readmit_lag_s"]["all"] == [0.3, 0.4]
    # The 0.25 s steps from 0 to 0.5 s are slow; from 0.75 s on the p99 is the baseline's.
    assert row["normal_from_s"] == 0.75
    steps = {step["offset_s"]: step for step in row["timeline"]}
    assert steps[0.25]["p99_ms"] == 100.0 and steps[1.0]["p99_ms"] == steps[1.0]["baseline_p99_ms"]
    # From 2 s on (to one baseline p99 before the next kill) nothing is slower than the baseline.
    assert row["recovery_pooled_vs_baseline_windows"] == 1.0
    assert chaos.summarize(baseline, events, "GET", 30.0, baseline)["normal_from_s"] == 0.0
