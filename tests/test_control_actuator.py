"""The fleet actuator against real processes: a retired pod is drained before it goes down; settings and choice."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request

import aiohttp
import pytest

from katyusha.control.actuator import FleetActuator, Slot
from katyusha.control.choose import choose_pods
from katyusha.control.settings import parse_section
from katyusha.core.errors import ConfigError
from tests.procs import Proc, script

SERVICE_S = 1.5


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def pod_and_katyusha():
    sim = Proc([script("sim-backend"), "--port", "0", "--admin-port", "0", "--pod", "pod-1", "--state", "warm",
                "--service-time", f"const:{SERVICE_S}s"])  # fmt: skip
    nonna = Proc([script("nonna"), "--port", "0", "--admin-port", "0", "--upstream", sim.url,
                  "--concurrency", "0", "--pod", "pod-1"])  # fmt: skip
    katyusha = Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0",
                     "--pod", f"{nonna.url},name=pod-1,node=node-1,admin={nonna.admin},concurrency=0"])  # fmt: skip
    try:
        yield sim, nonna, katyusha
    finally:
        for proc in (katyusha, nonna, sim):
            proc.terminate()
            proc.kill()


async def test_retired_pod_finishes_its_requests_before_going_down(pod_and_katyusha):
    sim, nonna, katyusha = pod_and_katyusha
    slot = Slot("pod-1", "node-1", sim.admin, nonna.url, nonna.admin, concurrency=0)
    actuator = FleetActuator(lambda: [slot], lambda: [katyusha.admin], retire_to="warmdisk")
    await actuator.adopt()
    assert actuator.current() == 1 and actuator.may_serve("pod-1")

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def one(i: int) -> int:
            async with session.get(f"{katyusha.url}/slow/{i}") as response:
                await response.read()
                return response.status

        requests = [asyncio.create_task(one(i)) for i in range(4)]
        # Let them reach the pod, then scale to zero while they execute.
        deadline = time.monotonic() + 5
        while (await asyncio.to_thread(get_json, sim.admin + "/state"))["in_flight"] < 4:
            assert time.monotonic() < deadline, "requests never reached the pod"
            await asyncio.sleep(0.05)
        asked = time.monotonic()
        await actuator.scale_to(0)
        assert actuator.current() == 0 and not actuator.may_serve("pod-1")

        # Out of katyusha's set at once, but still up while its requests run.
        await asyncio.sleep(0.3)
        assert (await asyncio.to_thread(get_json, katyusha.admin + "/demand"))["ready_pods"] == 0
        state = await asyncio.to_thread(get_json, sim.admin + "/state")
        assert state["state"] == "active" and state["in_flight"] == 4

        statuses = await asyncio.gather(*requests)
        finished = time.monotonic()
    assert statuses == [200] * 4
    assert finished - asked >= SERVICE_S * 0.5

    async def down() -> dict:
        for _ in range(100):
            state = await asyncio.to_thread(get_json, sim.admin + "/state")
            if state["state"] == "warmdisk":
                return state
            await asyncio.sleep(0.05)
        raise AssertionError(f"pod not down: {state}")

    state = await down()
    assert state["counters"]["served"] == 4 and state["counters"]["rejected"] == 0
    # The actuator's own bookkeeping follows the pod's state once its retire step ends.
    for _ in range(100):
        if actuator.counts()["free"] == 1:
            break
        await asyncio.sleep(0.05)
    assert actuator.counts()["free"] == 1, actuator.counts()
    await actuator.close()


async def test_wake_brings_a_null_pod_into_katyusha_and_counts_a_cold_start():
    sim = Proc([script("sim-backend"), "--port", "0", "--admin-port", "0", "--pod", "pod-1", "--state", "null",
                "--image-size-mb", "10", "--pull-mbps", "50", "--start-s", "0.2", "--service-time", "const:5ms"])  # fmt: skip
    nonna = Proc([script("nonna"), "--port", "0", "--admin-port", "0", "--upstream", sim.url, "--pod", "pod-1"])
    katyusha = Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0"])
    try:
        slot = Slot("pod-1", "node-1", sim.admin, nonna.url, nonna.admin, concurrency=0)
        actuator = FleetActuator(lambda: [slot], lambda: [katyusha.admin])
        await actuator.scale_to(3)  # more than there are slots: every free one is woken
        assert actuator.counts() == {"waking": 1, "serving": 0, "retiring": 0, "free": 0, "slots": 1}
        for _ in range(100):
            if actuator.may_serve("pod-1"):
                break
            await asyncio.sleep(0.05)
        assert actuator.may_serve("pod-1")
        assert (await asyncio.to_thread(get_json, sim.admin + "/state"))["state"] == "warm"
        assert (await asyncio.to_thread(get_json, katyusha.admin + "/demand"))["ready_pods"] == 1
        assert actuator.cold.total == 1 and 0.4 * 0.5 <= actuator.cold.last_s <= 10
        await actuator.close()
    finally:
        for proc in (katyusha, nonna, sim):
            proc.terminate()
            proc.kill()


def test_choose_pods_takes_the_first_candidates():
    assert choose_pods(["a", "b", "c"], 2) == ["a", "b"]
    assert choose_pods(["a"], 5) == ["a"]
    assert choose_pods(["a", "b"], 0) == [] and choose_pods(["a"], -1) == []


def test_autoscaler_section_reads_knative_keys_and_names_bad_ones():
    settings = parse_section({"enabled": "true", "retire-to": "null", "stable-window": "6s", "tick-interval": "500ms"})
    assert settings.enabled and settings.retire_to == "null"
    assert settings.kpa.stable_window == 6 and settings.kpa.tick_interval == 0.5
    assert parse_section(None, enabled=True).retire_to == "warmdisk"
    with pytest.raises(ConfigError, match=r"autoscaler\.retire-to"):
        parse_section({"retire-to": "warm"})
    with pytest.raises(ConfigError, match=r"autoscaler\.stable-windw.*unknown"):
        parse_section({"stable-windw": "6s"})
    with pytest.raises(ConfigError, match=r"autoscaler\.stable-window"):
        parse_section({"stable-window": "2s"})
    with pytest.raises(ConfigError, match=r"autoscaler\.admin-port"):
        parse_section({"admin-port": 70000})
