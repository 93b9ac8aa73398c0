"""End to end: `katyusha fleet up --autoscale` scales from zero without an error, and back to zero when idle.

Real processes on loopback: the fleet runner, its katyusha, sim-backend pods
that start null and cold-start with real delays, nonna sidecars. Windows are
short (stable window 6 s, grace 2 s, tick 0.5 s, cold start about 0.5 s) so
the whole cycle fits in well under a minute.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import urllib.request

import aiohttp
import pytest

from tests.procs import FleetUp, get_json, script, wait_for

FLEET_YAML = """
nodes: 2
pods: 3
katyusha:
  port: 0
  admin_port: 0
defaults:
  service_time: const:50ms
  concurrency: 0        # unlimited in the pod: the test is about waking, not about queueing in nonna
  queue_depth: 100
  image_size_mb: 10
  pull_mbps: 40         # 0.25 s pull
  start_s: 0.25         # + 0.25 s container start: a 0.5 s cold start from null
autoscaler:
  retire-to: warmdisk
  stable-window: 6s
  scale-to-zero-grace-period: 2s
  tick-interval: 0.5s
  initial-scale: 0
  allow-zero-initial-scale: true
  container-concurrency-target-default: 10
runner:
  poll_interval_s: 0.2
"""

COLD_START_S = 0.5




def get_text(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()





@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    up = FleetUp(tmp_path_factory.mktemp("autoscale"), FLEET_YAML, "--autoscale")
    try:
        up.wait_ready(90)
        yield up
    finally:
        up.stop()


def autoscaler(fleet) -> dict:
    return get_json(fleet.doc["autoscaler"]["admin"] + "/autoscaler")


def sim_states(fleet) -> list[str]:
    return [get_json(pod["sim"]["admin"] + "/state")["state"] for pod in fleet.doc["pods"]]


def ready_pods(fleet) -> int:
    return get_json(fleet.doc["katyusha"][0]["admin"] + "/demand")["ready_pods"]


async def burst(url: str, count: int) -> list[tuple[int, float]]:
    """``count`` requests at once; (status, seconds to answer) of each."""
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

        async def one(i: int) -> tuple[int, float]:
            async with session.get(f"{url}/work/{i}") as response:
                await response.read()
                return response.status, time.monotonic() - started

        return await asyncio.gather(*(one(i) for i in range(count)))


def test_scale_from_zero_serves_every_request_then_returns_to_zero(fleet):
    # An idle fleet at zero: every pod null, nothing in katyusha's set.
    assert sim_states(fleet) == ["null", "null", "null"]
    assert ready_pods(fleet) == 0
    assert autoscaler(fleet)["pods"]["serving"] == 0

    results = asyncio.run(burst(fleet.doc["url"], 50))
    statuses = [status for status, _ in results]
    assert statuses == [200] * 50, f"statuses: {statuses}\n" + "".join(fleet.lines[-40:])
    first = min(seconds for _, seconds in results)
    # Every request waited for a cold start (none was failed fast), and not much longer than one.
    assert COLD_START_S * 0.6 <= first <= COLD_START_S + 8.0, first
    done_at = time.monotonic()

    view = autoscaler(fleet)
    assert view["cold_starts"]["total"] >= 1
    assert view["desired"] >= 1 and view["pods"]["serving"] >= 1
    # 50 concurrent at a per-pod target of 7 asks for more than one pod (all three slots).
    assert view["desired"] >= 2, view

    metrics = get_text(fleet.doc["autoscaler"]["admin"] + "/metrics")
    cold = re.search(r"^katyusha_autoscaler_cold_starts_total (\S+)$", metrics, re.M)
    assert cold and float(cold[1]) >= 1, metrics
    for name in ("katyusha_autoscaler_desired_pods", "katyusha_autoscaler_actual_pods",
                 "katyusha_autoscaler_panic", "katyusha_autoscaler_observed_concurrency",
                 "katyusha_autoscaler_observed_rps", "katyusha_autoscaler_cold_start_seconds_bucket"):
        assert name in metrics, name  # fmt: skip

    status = subprocess.run([script("katyusha"), "fleet", "status", "--state-file", str(fleet.state_file)],
                            capture_output=True, text=True, timeout=30)  # fmt: skip
    assert "autoscaler:" in status.stdout and "desired" in status.stdout, status.stdout + status.stderr

    # No traffic: after the stable window and the grace period the fleet is back at zero pods,
    # drained out of katyusha and parked in warmdisk (the image is kept).
    wait_for(lambda: autoscaler(fleet)["pods"]["serving"] == 0 and autoscaler(fleet)["pods"]["retiring"] == 0,
             30, "the autoscaler to retire every pod")  # fmt: skip
    idle_for = time.monotonic() - done_at
    assert idle_for >= 6 * 0.5, f"scaled to zero after only {idle_for:.1f}s of silence"
    wait_for(lambda: ready_pods(fleet) == 0, 5, "katyusha's set to be empty")

    def parked() -> bool:
        # retire-to warmdisk: every pod that was woken keeps its image; one never woken stays null.
        docs = [get_json(pod["sim"]["admin"] + "/state") for pod in fleet.doc["pods"]]
        return all(doc["state"] == ("warmdisk" if doc["counters"]["cold_starts"] else "null") for doc in docs)

    wait_for(parked, 5, "every woken pod down in warmdisk, the others still null")
    assert "warmdisk" in sim_states(fleet)

    # From zero again: the next request is served, faster now that the image is on disk.
    results = asyncio.run(burst(fleet.doc["url"], 5))
    assert [status for status, _ in results] == [200] * 5


TIGHT_YAML = FLEET_YAML.replace("concurrency: 0 ", "concurrency: 1 ").replace("queue_depth: 100", "queue_depth: 1")


def test_a_burst_held_at_zero_never_overflows_a_small_pod_queue(tmp_path):
    # One request at a time per pod and room for one more in nonna's queue: katyusha sends a pod at most
    # its container concurrency (the control plane gives it with every pod it adds), so the burst waits
    # in katyusha's L1 queue and goes out as pods free a slot or join, instead of a 503 from nonna.
    assert "concurrency: 1 " in TIGHT_YAML and "queue_depth: 1" in TIGHT_YAML
    up = FleetUp(tmp_path, TIGHT_YAML, "--autoscale")
    try:
        up.wait_ready(90)
        results = asyncio.run(burst(up.doc["url"], 50))
        assert [status for status, _ in results] == [200] * 50, "".join(up.lines[-40:])
        rows = get_json(up.doc["katyusha"][0]["admin"] + "/pods")["pods"]
        assert rows and all(row["concurrency"] == 1 for row in rows), rows
    finally:
        up.stop()


def test_bad_demand_notice_is_refused_and_changes_nothing(fleet):
    request = urllib.request.Request(fleet.doc["autoscaler"]["admin"] + "/demand", data=b'{"waiting": -1}',
                                     method="POST")  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)
    assert refused.value.code == 400
    assert "waiting" in json.loads(refused.value.read())["error"]


@pytest.mark.parametrize(
    ("section", "named"),
    [("retire-to: warm", "autoscaler.retire-to"), ("stable-windw: 6s", "autoscaler.stable-windw"),
     ("tick-interval: fast", "autoscaler.tick-interval")],
)  # fmt: skip
def test_bad_autoscaler_section_is_refused_before_anything_starts(tmp_path, section, named):
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text(f"pods: 1\nautoscaler:\n  {section}\n")
    done = subprocess.run([script("katyusha"), "fleet", "up", "--autoscale", "--fleet", str(fleet_file),
                           "--port", "0"], capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert named in done.stderr
