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
