"""`katyusha control` on its own, attached to processes it did not start: the shape of a compose fleet.

Real processes on loopback, started here as a compose file would start its
containers (sim-backends, nonnas, katyusha with no pods), then
`katyusha control --fleet F --processes P` given their addresses. It fills
katyusha's set, moves a pod cold and back warm with not one request failing
(`katyusha fleet pod --control URL`), shows the fleet (`katyusha fleet
status --control URL`), and, with the autoscaler, scales from zero.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import urllib.error
import urllib.request

import aiohttp
import pytest

from tests.procs import Proc, get_json, script, wait_for

FLEET_YAML = """
nodes: 2
pods: 3
runner:
  poll_interval_s: 0.2
defaults:
  service_time: const:5ms
  concurrency: 4
  image_size_mb: 10
  pull_mbps: 40       # 0.25 s pull
  start_s: 0.25       # + 0.25 s start: a 0.5 s cold start from null
"""

AUTOSCALED_YAML = FLEET_YAML + """
services:
  - name: app
    annotations:
      autoscaling.knative.dev/target: "5"     # this service's own concurrency target
autoscaler:
  enabled: true
  stable-window: 6s
  scale-to-zero-grace-period: 2s
  tick-interval: 0.5s
  initial-scale: 0
  allow-zero-initial-scale: true
"""


class Attached:
    """Three pods (sim-backend + nonna), one katyusha with an empty set, and `katyusha control` on them."""

    def __init__(self, tmp, fleet_yaml: str, state: str):
        self.procs: list[Proc] = []
        self.sims = self._start_all([[script("sim-backend"), "--port", "0", "--admin-port", "0", "--pod", f"pod-{i}",
                                      "--node", f"node-{2 - i % 2}", "--state", state, "--service-time", "const:5ms",
                                      "--image-size-mb", "10", "--pull-mbps", "40", "--start-s", "0.25"]
                                     for i in (1, 2, 3)])  # fmt: skip
        self.nonnas = self._start_all([[script("nonna"), "--port", "0", "--admin-port", "0", "--upstream", sim.url,
                                        "--upstream-health", sim.admin + "/healthz", "--concurrency", "4",
                                        "--pod", f"pod-{i}", "--node", f"node-{2 - i % 2}"]
                                       for i, sim in zip((1, 2, 3), self.sims, strict=True)])  # fmt: skip
        [self.katyusha] = self._start_all([[script("katyusha"), "serve", "--port", "0", "--admin-port", "0"]])
        fleet_file = tmp / "fleet.yaml"
        fleet_file.write_text(fleet_yaml)
        processes = {
            "katyusha": [{"name": "katyusha-0", "admin": self.katyusha.admin, "data": self.katyusha.url}],
            "pods": [{"name": f"pod-{i}", "sim": {"admin": sim.admin},
                      "nonna": {"data": nonna.url, "admin": nonna.admin}}
                     for i, sim, nonna in zip((1, 2, 3), self.sims, self.nonnas, strict=True)],
        }  # fmt: skip
        self.processes_file = tmp / "processes.yaml"
        self.processes_file.write_text(json.dumps(processes))
        [self.control] = self._start_all([[script("katyusha"), "control", "--fleet", str(fleet_file),
                                           "--processes", str(self.processes_file), "--admin-port", "0"]])

    def _start_all(self, argvs: list[list[str]]) -> list[Proc]:
        """Start every process at once, then wait for each one's ready line."""
        started = [Proc(argv, ready_timeout=0) for argv in argvs]
        self.procs.extend(started)
        for proc in started:
            proc.wait_ready(30)
        return started

    def in_set(self) -> list[str]:
        return sorted(row["name"] for row in get_json(self.katyusha.admin + "/pods")["pods"])

    def stop(self) -> None:
        for proc in reversed(self.procs):
            try:
                proc.terminate()
            finally:
                proc.kill()


def fleet_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([script("katyusha"), "fleet", *args], capture_output=True, text=True, timeout=120)


async def send_until(url: str, stop: asyncio.Event) -> list[int | str]:
    """GETs over two connections until ``stop``; every status (or the error)."""
    statuses: list[int | str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:

        async def worker(w: int) -> None:
            i = 0
            while not stop.is_set():
                try:
                    async with session.get(f"{url}/req/{w}-{i}") as response:
                        await response.read()
                        statuses.append(response.status)
                except aiohttp.ClientError as exc:
                    statuses.append(repr(exc))
                i += 1

        await asyncio.gather(worker(0), worker(1))
    return statuses


@pytest.fixture
def attached(tmp_path):
    fleet = Attached(tmp_path, FLEET_YAML, "warm")
    try:
        yield fleet
    finally:
        fleet.stop()


def test_attached_control_plane_fills_the_set_and_moves_a_pod_with_no_failed_request(attached):
    # katyusha started with no pod: the control plane found the three warm pods and added them.
    wait_for(lambda: attached.in_set() == ["pod-1", "pod-2", "pod-3"], 10, "the control plane to fill katyusha's set")
    control = attached.control.admin
    with urllib.request.urlopen(control + "/healthz", timeout=5) as response:
        assert response.read() == b"ok\n"
    assert f"dashboard: {control}/dashboard\n" in attached.control.output
    with urllib.request.urlopen(control + "/dashboard", timeout=5) as response:
        assert response.headers["content-type"].startswith("text/html")
    rows = {r["name"]: r for r in get_json(attached.katyusha.admin + "/pods")["pods"]}
    assert rows["pod-2"]["concurrency"] == 4 and rows["pod-2"]["url"] == attached.nonnas[1].url

    async def moves():
        stop = asyncio.Event()
        traffic = asyncio.create_task(send_until(attached.katyusha.url, stop))
        await asyncio.sleep(0.3)
        cold = await asyncio.to_thread(fleet_cli, "pod", "pod-2", "state", "cold", "--control", control)
        in_between = await asyncio.to_thread(attached.in_set)
        await asyncio.sleep(0.3)
        warm = await asyncio.to_thread(fleet_cli, "pod", "pod-2", "state", "warm", "--control", control)
        await asyncio.sleep(0.3)
        stop.set()
        return await traffic, cold, warm, in_between

    statuses, cold, warm, in_between = asyncio.run(moves())
    assert cold.returncode == 0, cold.stdout + cold.stderr
    assert "pod-2: drained and removed from katyusha-0" in cold.stdout and "pod-2: now cold" in cold.stdout
    assert cold.stdout.index("drained") < cold.stdout.index("now cold")
    assert in_between == ["pod-1", "pod-3"]
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert "pod-2: now warm" in warm.stdout and "pod-2: added to katyusha-0" in warm.stdout
    assert len(statuses) > 50 and all(s == 200 for s in statuses), {s for s in statuses if s != 200}
    assert attached.in_set() == ["pod-1", "pod-2", "pod-3"]
    sim2 = get_json(attached.sims[1].admin + "/state")
    # cold -> warm pulled the image again: the walk really went down and up.
    assert sim2["state"] in ("warm", "active") and sim2["counters"]["image_pulls"] == 1

    # The fleet as the control plane sees it, through the same CLI a compose user runs.
    status = fleet_cli("status", "--control", control, "--json")
    assert status.returncode == 0, status.stderr
    live = json.loads(status.stdout)
    assert {p["name"]: p["state"] in ("warm", "active") for p in live["pods"]} == {f"pod-{i}": True for i in (1, 2, 3)}
    assert [r["name"] for r in live["replicas"]] == ["katyusha-0"] and len(live["replicas"][0]["pods"]) == 3
    assert "control plane: " + control in fleet_cli("status", "--control", control).stdout

    # Bad requests get clear answers and change nothing.
    unknown = fleet_cli("pod", "pod-9", "state", "cold", "--control", control)
    assert unknown.returncode == 2 and "no pod 'pod-9'" in unknown.stderr
    active = fleet_cli("pod", "pod-1", "state", "active", "--control", control)
    assert active.returncode == 2 and "active" in active.stderr
    for body, status, named in [({"state": "active"}, 400, '"state"'), ({"state": "cold", "timeout": -1}, 400, '"timeout"'),
                                ({"state": "cold", "wait": True}, 400, "wait"), ({"state": "cold"}, 404, "pod-9")]:  # fmt: skip
        pod = "pod-9" if status == 404 else "pod-1"
        request = urllib.request.Request(f"{control}/pods/{pod}/state", data=json.dumps(body).encode(), method="PUT")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == status and named in json.loads(refused.value.read())["error"]
    assert attached.in_set() == ["pod-1", "pod-2", "pod-3"]
    assert get_json(attached.sims[0].admin + "/state")["state"] in ("warm", "active")


def test_attached_control_plane_scales_from_zero(tmp_path):
    fleet = Attached(tmp_path, AUTOSCALED_YAML, "null")
    try:
        control = fleet.control.admin
        view = get_json(control + "/autoscaler")
        assert view["pods"]["serving"] == 0 and fleet.in_set() == []
        # The service's annotation set its target: 5 x 70%.
        assert view["decision"] is None or view["decision"]["target"] == pytest.approx(3.5)

        async def burst(count: int) -> list[int]:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

                async def one(i: int) -> int:
                    async with session.get(f"{fleet.katyusha.url}/work/{i}") as response:
                        await response.read()
                        return response.status

                return await asyncio.gather(*(one(i) for i in range(count)))

        started = time.monotonic()
        # katyusha has no demand-url here: the control plane sees the waiting requests by reading GET /demand.
        assert asyncio.run(burst(20)) == [200] * 20
        took = time.monotonic() - started
        assert took >= 0.5 * 0.6, took  # they waited for a real cold start
        view = get_json(control + "/autoscaler")
        assert view["cold_starts"]["total"] >= 1 and view["decision"]["target"] == pytest.approx(3.5)
        # 20 waiting at 3.5 per pod want more pods than there are slots: every slot was woken.
        assert view["desired"] >= 3 and view["pods"]["serving"] + view["pods"]["waking"] == 3, view
        wait_for(lambda: len(fleet.in_set()) == 3, 10, "every woken pod in katyusha's set")
        placement = get_json(control + "/placement")
        assert {w["pod"] for w in placement["last_wake"]["woken"]} <= {"pod-1", "pod-2", "pod-3"}
    finally:
        fleet.stop()


def processes_doc(pods: int = 2) -> dict:
    return {
        "katyusha": [{"admin": "http://katyusha:9080"}],
        "pods": [{"name": f"pod-{i}", "sim": {"admin": f"http://pod-{i}-sim:9201"},
                  "nonna": {"data": f"http://pod-{i}:9101", "admin": f"http://pod-{i}:9102"}}
                 for i in range(1, pods + 1)],
    }  # fmt: skip


def test_processes_file_gives_addresses_by_name_and_errors_name_the_field_path():
    from katyusha.control.processes import StaticProcesses
    from katyusha.core.errors import ConfigError
    from katyusha.fleet.spec import build_spec

    spec = build_spec({"pods": 2, "defaults": {"concurrency": 3}}, {})
    processes = StaticProcesses(processes_doc(), spec.pods)
    assert [(b.name, b.admin) for b in processes.balancers()] == [("katyusha-0", "http://katyusha:9080")]
    pod = processes.pods()[1]
    assert (pod.name, pod.node, pod.nonna_url, pod.concurrency) == ("pod-2", "node-2", "http://pod-2:9101", 3)
    assert pod.entry() == {"name": "pod-2", "url": "http://pod-2:9101", "node": "node-2",
                           "admin": "http://pod-2:9102", "concurrency": 3}  # fmt: skip

    def refused(doc) -> str:
        with pytest.raises(ConfigError) as error:
            StaticProcesses(doc, spec.pods)
        return error.value.key

    doc = processes_doc()
    del doc["pods"][1]["nonna"]["data"]
    assert refused(doc) == "pods[1].nonna.data"
    doc = processes_doc()
    doc["pods"][0]["sim"]["port"] = 9201
    assert refused(doc) == "pods[0].sim.port"
    doc = processes_doc()
    doc["katyusha"][0]["admin"] = "ftp://katyusha"
    assert refused(doc) == "katyusha[0].admin"
    assert refused(processes_doc(pods=1)) == "pods"  # pod-2 of the fleet file has no addresses
    assert refused(processes_doc(pods=3)) == "pods[2].name"  # pod-3 is not in the fleet file
    assert refused({**processes_doc(), "katyusha": []}) == "katyusha"


def test_control_command_refuses_a_bad_processes_file_before_starting(tmp_path):
    doc = processes_doc(pods=4)
    doc["pods"][3]["nonna"]["data"] = "not a url"
    bad = tmp_path / "processes.yaml"
    bad.write_text(json.dumps(doc))
    done = subprocess.run([script("katyusha"), "control", "--processes", str(bad), "--admin-port", "0"],
                          capture_output=True, text=True, timeout=30)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "pods[3].nonna.data" in done.stderr and "not a url" in done.stderr
    assert "ready" not in done.stderr
