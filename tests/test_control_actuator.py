"""The fleet actuator and the membership writer against real processes: drain before retire, wake, sync.

Real sim-backend, nonna and katyusha processes on loopback; the actuator and
the writer run in the test's event loop.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from katyusha.control.actuator import FleetActuator
from katyusha.control.adminclient import AdminClient
from katyusha.control.membership import BalancerRef, MembershipWriter, PodAddress
from katyusha.control.settings import parse_section
from katyusha.core.errors import ConfigError
from katyusha.core.fleetplan import ServiceSpec
from katyusha.core.placement import Node
from tests.procs import Proc, get_json, script

SERVICE_S = 1.5
APP = ServiceSpec("app", 100, 128, "app:latest")


def actuator_for(writer: MembershipWriter, pod: PodAddress) -> FleetActuator:
    return FleetActuator(writer, lambda: [pod], nodes=[Node("node-1", 4000, 8192)], services={"app": APP},
                         units={None: ("app",)})  # fmt: skip


def address(sim: Proc, nonna: Proc, concurrency: int | None = 0) -> PodAddress:
    return PodAddress("pod-1", "node-1", "app", sim.admin, nonna.url, nonna.admin, concurrency)


async def state_of(sim: Proc) -> dict:
    return await asyncio.to_thread(get_json, sim.admin + "/state")


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
    async with AdminClient() as client:
        writer = MembershipWriter(client, lambda: [BalancerRef("katyusha-0", katyusha.admin)])
        actuator = actuator_for(writer, address(sim, nonna))
        actuator.adopt({"pod-1": (await state_of(sim))["state"]})
        assert actuator.current(None) == 1 and actuator.may_serve("pod-1")

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

            async def one(i: int) -> int:
                async with session.get(f"{katyusha.url}/slow/{i}") as response:
                    await response.read()
                    return response.status

            requests = [asyncio.create_task(one(i)) for i in range(4)]
            # Let them reach the pod, then scale to zero while they execute.
            deadline = time.monotonic() + 5
            while (await state_of(sim))["in_flight"] < 4:
                assert time.monotonic() < deadline, "requests never reached the pod"
                await asyncio.sleep(0.05)
            asked = time.monotonic()
            await actuator.scale_to(None, 0)
            assert actuator.current(None) == 0 and not actuator.may_serve("pod-1")

            # Out of katyusha's set at once, but still up while its requests run.
            await asyncio.sleep(0.3)
            assert (await asyncio.to_thread(get_json, katyusha.admin + "/demand"))["ready_pods"] == 0
            state = await state_of(sim)
            assert state["state"] == "active" and state["in_flight"] == 4

            statuses = await asyncio.gather(*requests)
            finished = time.monotonic()
        assert statuses == [200] * 4
        assert finished - asked >= SERVICE_S * 0.5

        for _ in range(100):
            state = await state_of(sim)
            if state["state"] == "warmdisk":
                break
            await asyncio.sleep(0.05)
        assert state["state"] == "warmdisk", state
        assert state["counters"]["served"] == 4 and state["counters"]["rejected"] == 0
        # The actuator's own bookkeeping follows the pod's state once its retire step ends.
        for _ in range(100):
            if actuator.counts(None)["free"] == 1:
                break
            await asyncio.sleep(0.05)
        assert actuator.counts(None)["free"] == 1, actuator.counts(None)
        await actuator.close()


async def test_wake_brings_a_null_pod_into_katyusha_and_counts_a_cold_start():
    sim = Proc([script("sim-backend"), "--port", "0", "--admin-port", "0", "--pod", "pod-1", "--state", "null",
                "--image-size-mb", "10", "--pull-mbps", "50", "--start-s", "0.2", "--service-time", "const:5ms"])  # fmt: skip
    nonna = Proc([script("nonna"), "--port", "0", "--admin-port", "0", "--upstream", sim.url, "--pod", "pod-1"])
    katyusha = Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0"])
    try:
        async with AdminClient() as client:
            writer = MembershipWriter(client, lambda: [BalancerRef("katyusha-0", katyusha.admin)])
            actuator = actuator_for(writer, address(sim, nonna))
            await actuator.scale_to(None, 3)  # more than there are slots: every free one is woken
            assert actuator.counts(None) == {"waking": 1, "serving": 0, "retiring": 0, "free": 0, "slots": 1}
            for _ in range(100):
                if actuator.may_serve("pod-1"):
                    break
                await asyncio.sleep(0.05)
            assert actuator.may_serve("pod-1")
            assert (await state_of(sim))["state"] == "warm"
            table = await asyncio.to_thread(get_json, katyusha.admin + "/pods")
            # Joined with its container concurrency, so katyusha caps what it sends from the first request.
            assert [(r["name"], r["concurrency"]) for r in table["pods"]] == [("pod-1", 0)]
            assert table["ready_pods"] == 1
            assert actuator.cold.total == 1 and 0.4 * 0.5 <= actuator.cold.last_s <= 10
            assert actuator.status()["last_wake"]["woken"] == [{"pod": "pod-1", "node": "node-1", "from": "null"}]
            await actuator.close()
    finally:
        for proc in (katyusha, nonna, sim):
            proc.terminate()
            proc.kill()


async def test_sync_fills_a_replica_that_lost_its_set_and_drains_pods_no_longer_wanted(pod_and_katyusha):
    sim, nonna, first = pod_and_katyusha
    second = Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0"])  # starts empty
    try:
        async with AdminClient() as client:
            refs = [BalancerRef("katyusha-0", first.admin), BalancerRef("katyusha-1", second.admin)]
            writer = MembershipWriter(client, lambda: refs)
            pod = address(sim, nonna, concurrency=4)
            await writer.sync([pod], {"pod-1"}, writer.changes())
            for proc in (first, second):
                rows = (await asyncio.to_thread(get_json, proc.admin + "/pods"))["pods"]
                assert [(r["name"], r["url"]) for r in rows] == [("pod-1", nonna.url)]
            assert writer.count_in_sets("pod-1") == 2
            # Not wanted any more: drained out of both (in the background), never touched while held.
            async with writer.hold("pod-1"):
                await writer.sync([pod], set(), writer.changes())
                await asyncio.sleep(0.2)
                assert (await asyncio.to_thread(get_json, second.admin + "/demand"))["ready_pods"] == 1
            await writer.sync([pod], set(), writer.changes())
            for _ in range(50):
                if writer.count_in_sets("pod-1") == 0:
                    break
                await asyncio.sleep(0.05)
            for proc in (first, second):
                assert (await asyncio.to_thread(get_json, proc.admin + "/demand"))["ready_pods"] == 0
            await writer.close()
    finally:
        second.terminate()
        second.kill()


def test_autoscaler_section_reads_knative_keys_and_names_bad_ones():
    settings = parse_section({"enabled": "true", "retire-to": "null", "stable-window": "6s", "tick-interval": "500ms"})
    assert settings.enabled and settings.retire_to.value == "null"
    assert settings.kpa.stable_window == 6 and settings.kpa.tick_interval == 0.5
    assert parse_section(None, enabled=True).retire_to.value == "warmdisk"
    with pytest.raises(ConfigError, match=r"autoscaler\.retire-to"):
        parse_section({"retire-to": "warm"})
    with pytest.raises(ConfigError, match=r"autoscaler\.stable-windw.*unknown"):
        parse_section({"stable-windw": "6s"})
    with pytest.raises(ConfigError, match=r"autoscaler\.stable-window"):
        parse_section({"stable-window": "2s"})
    with pytest.raises(ConfigError, match=r"autoscaler\.admin-port"):
        parse_section({"admin-port": 70000})
