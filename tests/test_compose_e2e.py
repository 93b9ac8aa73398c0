"""The compose fleet in real containers: podman, podman-compose and the committed docker-compose.yml.

Run by ``make compose-test`` (a step of .ci/run), which installs podman,
runc and debootstrap, makes the local base and Prometheus images once and
builds the wheelhouse, then sets KATYUSHA_COMPOSE_TEST=1; plain ``make test``
skips this file. The image is built once; the committed compose
file runs as one compose project (a name and host ports of its own, the
``monitoring`` profile), is checked, also through its control plane, and
taken down; then an autoscaled fleet file, written out by ``katyusha fleet
compose`` into a temporary folder, runs as a second project from the same
image and scales from zero. The test's traffic goes to 127.0.0.1 only; the
containers talk among themselves on the network podman-compose makes for
each project.

podman 4.3 runs healthchecks only from systemd timers, and podman-compose
skips ``condition: service_healthy`` on it: the test runs each container's
healthcheck itself (``podman healthcheck run``).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from katyusha.fleet import compose
from katyusha.fleet.spec import load_spec
from tests.procs import script

pytestmark = pytest.mark.skipif(
    os.environ.get("KATYUSHA_COMPOSE_TEST") != "1",
    reason="runs the fleet in containers: make compose-test",
)

ROOT = Path(__file__).resolve().parent.parent
PODMAN_COMPOSE = str(Path(sys.executable).parent / "podman-compose")
IMAGE = "localhost/katyusha:compose-test"
PHASES: list[tuple[str, float]] = []

# A fleet at zero: two slots the autoscaler wakes on demand, with a short cold start
# (0.25 s pull + 0.25 s start from null) so the test stays quick.
AUTOSCALED_FLEET = """
nodes: 1
pods: 2
runner: {poll_interval_s: 0.2}
defaults: {service_time: "const:5ms", concurrency: 4, image_size_mb: 10, pull_mbps: 40, start_s: 0.25}
autoscale: true
autoscaler:
  stable-window: 6s
  scale-to-zero-grace-period: 2s
  tick-interval: 0.5s
  initial-scale: 0
  allow-zero-initial-scale: true
"""
COLD_START_S = 0.5


def admin_call(method: str, url: str, body: dict | None = None, timeout: float = 30) -> dict:
    """One JSON call to an admin port; raises AssertionError unless it answers 200."""
    host, _, rest = url.removeprefix("http://").partition("/")
    conn = http.client.HTTPConnection(host, timeout=timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, "/" + rest, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        text = resp.read().decode()
    finally:
        conn.close()
    assert resp.status == 200, f"{method} {url}: HTTP {resp.status}: {text[:300]}"
    return json.loads(text)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def phase(name: str):
    start = time.monotonic()
    yield
    took = time.monotonic() - start
    PHASES.append((name, took))
    print(f"\ncompose-test phase {name}: {took:.1f} s", flush=True)


class ComposeFleet:
    """One compose project of a generated compose file, driven with podman-compose."""

    def __init__(self, compose_file: Path, profile: tuple[str, ...] = (), label: str = "fleet"):
        self.compose_file = compose_file
        self.label = label  # in the phases' names
        self.profile = profile
        self.project = f"katyusha-test-{os.getpid()}-{secrets.token_hex(3)}"
        self.port, self.admin_port = _free_port(), _free_port()
        self.control_port, self.prometheus_port = _free_port(), _free_port()
        self.env = dict(
            os.environ,
            KATYUSHA_PORT=str(self.port), KATYUSHA_ADMIN_PORT=str(self.admin_port),
            CONTROL_PORT=str(self.control_port), PROMETHEUS_PORT=str(self.prometheus_port), KATYUSHA_IMAGE=IMAGE,
            BASE_IMAGE=os.environ.get("BASE_IMAGE", "localhost/katyusha-base:bookworm"),
            PROMETHEUS_IMAGE=os.environ.get("PROMETHEUS_IMAGE", "localhost/katyusha-prometheus:local"),
        )  # fmt: skip
        self.services = yaml.safe_load(compose_file.read_text())["services"]
        self.down_done = False
        self.containers_at_start: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.control_port}"

    def run(self, argv: list[str], timeout: float, *, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv[:6])} ... exited {done.returncode}:\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")  # fmt: skip
        return done

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        argv = [PODMAN_COMPOSE, "-f", str(self.compose_file), "-p", self.project, *self.profile, *args]
        return self.run(argv, timeout, check=check)

    def podman(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["podman", *args], timeout, check=check)

    def containers(self) -> dict[str, str]:
        """Service name -> container name, for every container of the project (running or not)."""
        out = self.podman("ps", "-a", "--filter", f"label=io.podman.compose.project={self.project}",
                          "--format", "json").stdout  # fmt: skip
        return {c["Labels"]["com.docker.compose.service"]: c["Names"][0] for c in json.loads(out or "[]")}

    def up(self, *args: str) -> None:
        """``up -d``, then every container's healthcheck until each has passed."""
        with phase(f"up {self.label}"):
            self.compose("up", "-d", *args)
        with phase(f"healthy {self.label}"):
            self.containers_at_start = wait_healthy(self, timeout=120)

    def remove_leftovers(self) -> None:
        """After a failure: whatever of the project is still there goes."""
        if not self.down_done:
            self.compose("down", "-t", "5", timeout=120, check=False)
        for container in self.containers().values():
            self.podman("rm", "-f", container, check=False)
        self.podman("network", "rm", "-f", f"{self.project}_default", check=False)


def image_id() -> str | None:
    done = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", IMAGE],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return done.stdout.strip() if done.returncode == 0 else None


def wait_healthy(fleet: ComposeFleet, timeout: float) -> dict[str, str]:
    """Run every container's healthcheck until each has passed once; service -> container."""
    containers = fleet.containers()
    pending = set(containers)
    deadline = time.monotonic() + timeout
    while pending:
        for service in sorted(pending):
            if fleet.podman("healthcheck", "run", containers[service], check=False).returncode == 0:
                pending.discard(service)
        if pending and time.monotonic() > deadline:
            logs = {s: fleet.podman("logs", "--tail", "20", containers[s], check=False).stdout for s in pending}
            raise AssertionError(f"not healthy after {timeout:g} s: {sorted(pending)}\n{logs}")
        time.sleep(0.5 if pending else 0)
    return containers


@pytest.fixture(scope="module")
def image():
    """The fleet's image, built from the committed compose file (its one building service)."""
    old_image = image_id()
    try:
        with phase("build"):
            ComposeFleet(ROOT / compose.COMPOSE_FILE).compose("build")
        new_image = image_id()
        if old_image and old_image != new_image:
            # The last run's image, now untagged: ours to remove (it fails harmlessly if still used).
            subprocess.run(["podman", "rmi", old_image], capture_output=True, timeout=60)
        yield IMAGE
    finally:
        print("\ncompose-test phases: " + ", ".join(f"{n} {t:.1f} s" for n, t in PHASES), flush=True)


@pytest.fixture(scope="module")
def fleet(image):
    """The committed compose file, with the monitoring profile: the default fleet and its control plane."""
    fleet = ComposeFleet(ROOT / compose.COMPOSE_FILE, ("--profile", "monitoring"))
    try:
        fleet.up()
        yield fleet
    finally:
        fleet.remove_leftovers()


@pytest.fixture(scope="module")
def autoscaled(image, tmp_path_factory):
    """An autoscaled fleet file made into a compose project by `katyusha fleet compose`, from the same image."""
    folder = tmp_path_factory.mktemp("autoscaled")
    (folder / "fleet.yaml").write_text(AUTOSCALED_FLEET)
    made = subprocess.run([script("katyusha"), "fleet", "compose", "--fleet", str(folder / "fleet.yaml"),
                           "--dir", str(folder)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    fleet = ComposeFleet(folder / compose.COMPOSE_FILE, label="autoscaled")
    try:
        fleet.up("--no-build")  # the image is built; this folder holds no build context
        yield fleet
    finally:
        fleet.remove_leftovers()


class Load:
    """Closed-loop GETs through katyusha from a few threads; records every answer and failure."""

    def __init__(self, url: str, threads: int = 4):
        self.host, self.port = url.removeprefix("http://").split(":")
        self.stop = threading.Event()
        # (sent, answered, status, pod): one sent after a pod left and answered before it was
        # added back was dispatched while it was out, so it cannot have reached it.
        self.answers: list[tuple[float, float, int, str | None]] = []
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)

    def _loop(self) -> None:
        conn = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                conn.request("GET", "/compose-test")
                resp = conn.getresponse()
                body = resp.read()
                pod = json.loads(body).get("pod") if resp.status == 200 else None
                self.answers.append((sent, time.monotonic(), resp.status, pod))
                if resp.status != 200:
                    self.errors.append(f"HTTP {resp.status}: {body[:200]!r}")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection(self.host, int(self.port), timeout=30)
        conn.close()


def _get(url: str, count: int, threads: int = 8) -> list[tuple[int, str | None]]:
    """``count`` GETs over ``threads`` keep-alive connections; (status, pod that answered) each."""
    results: list[tuple[int, str | None]] = []
    lock = threading.Lock()
    host, port = url.removeprefix("http://").split(":")

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        for _ in range(n):
            conn.request("GET", "/hello")
            resp = conn.getresponse()
            body = resp.read()
            with lock:
                results.append((resp.status, json.loads(body).get("pod") if resp.status == 200 else None))
        conn.close()

    workers = [threading.Thread(target=worker, args=(count // threads + (i < count % threads),)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
    return results


def test_every_container_is_healthy(fleet):
    # Every service of the compose file (the monitoring profile's too) runs, and passed its healthcheck.
    assert set(fleet.containers_at_start) == set(fleet.services)
    for service, container in fleet.containers_at_start.items():
        state = json.loads(fleet.podman("inspect", container).stdout)[0]["State"]
        assert state["Status"] == "running", service
        assert state["Health"]["Status"] == "healthy", service


def test_requests_through_katyusha_reach_every_pod_with_fresh_reports(fleet):
    spec = load_spec()
    pods = {pod.name for pod in spec.pods}
    concurrency = {pod.name: pod.params.concurrency for pod in spec.pods}
    with phase("traffic"):
        results = _get(fleet.url, 200)
        table = admin_call("GET", f"{fleet.admin}/pods")
    assert len(results) == 200
    assert [status for status, _ in results if status != 200] == []
    assert {pod for _, pod in results} == pods
    rows = {row["name"]: row for row in table["pods"]}
    assert set(rows) == pods
    for name, row in rows.items():
        # Learned from the Nonna-* headers of its responses, not from a probe: fresh, with its concurrency.
        assert row["ready"] and row["report_fresh"], row
        assert row["reported_concurrency"] == concurrency[name] and row["report_age_s"] < 2.0, row
        assert row["requests"] > 0 and row["failures"] == 0, row


def test_prometheus_scrapes_every_process(fleet):
    expected = {f"{name}:{compose.PORTS[s['labels']['io.katyusha.role']].admin}"
                for name, s in fleet.services.items() if name != "prometheus"}  # fmt: skip
    url = f"http://127.0.0.1:{fleet.prometheus_port}/api/v1/targets"
    deadline = time.monotonic() + 30
    with phase("prometheus"):
        while True:
            targets = admin_call("GET", url)["data"]["activeTargets"]
            health = {t["scrapeUrl"].removeprefix("http://").removesuffix("/metrics"): t["health"] for t in targets}
            if set(health) == expected and set(health.values()) == {"up"} or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert set(health) == expected
    assert {t: h for t, h in health.items() if h != "up"} == {}


def fleet_cli(*args: str) -> subprocess.CompletedProcess:
    """``katyusha fleet ...`` on the host with the compose fleet's admin token, as a user steers it."""
    token = ["--admin-token-file", str(ROOT / compose.TOKEN_FILE)]
    return subprocess.run([script("katyusha"), "fleet", *args, *token], capture_output=True, text=True, timeout=180)


def in_set(fleet: ComposeFleet) -> set[str]:
    return {row["name"] for row in admin_call("GET", f"{fleet.admin}/pods")["pods"]}


def test_fleet_status_through_the_control_plane(fleet):
    # The control container found every process by service name, and the host's CLI reads it.
    status = fleet_cli("status", "--control", fleet.control, "--json")
    assert status.returncode == 0, status.stdout + status.stderr
    live = json.loads(status.stdout)
    pods = {pod.name for pod in load_spec().pods}
    assert {p["name"] for p in live["pods"] if p["state"] in ("warm", "active")} == pods
    [replica] = live["replicas"]
    assert replica["name"] == "katyusha" and {row["name"] for row in replica["pods"]} == pods


def test_a_pod_goes_cold_and_back_to_warm_through_the_control_plane_with_no_failed_request(fleet):
    with phase("cold-and-warm"), Load(fleet.url) as load:
        time.sleep(1.0)
        cold = fleet_cli("pod", "pod-2", "state", "cold", "--control", fleet.control)
        out = time.monotonic()
        between = in_set(fleet)
        time.sleep(1.0)
        back = time.monotonic()
        warm = fleet_cli("pod", "pod-2", "state", "warm", "--control", fleet.control)
        readded = time.monotonic()
        deadline = readded + 20
        while not any(pod == "pod-2" and sent > readded for sent, _, _, pod in load.answers):
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert cold.returncode == 0, cold.stdout + cold.stderr
    assert "pod-2: drained and removed from katyusha" in cold.stdout and "pod-2: now cold" in cold.stdout
    assert cold.stdout.index("drained") < cold.stdout.index("now cold")
    assert between == {"pod-1", "pod-3", "pod-4"}
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert "pod-2: now warm" in warm.stdout and "pod-2: added to katyusha" in warm.stdout
    assert load.errors == []
    served = [(sent, answered, pod) for sent, answered, status, pod in load.answers if status == 200]
    assert len(served) == len(load.answers) > 50
    while_out = [pod for sent, answered, pod in served if out < sent and answered < back]
    assert len(while_out) > 20
    assert set(while_out) == {"pod-1", "pod-3", "pod-4"}, "a pod served while it was out"
    assert any(pod == "pod-2" and sent > readded for sent, _, pod in served), "pod-2 never served again"
    assert in_set(fleet) == {"pod-1", "pod-2", "pod-3", "pod-4"}


def test_down_stops_every_container_with_status_0_and_removes_the_network(fleet):
    containers = fleet.containers()
    since = int(time.time()) - 1
    with phase("down"):
        fleet.compose("down")
        fleet.down_done = True
    # podman's event log says how each container ended.
    events = fleet.podman("events", "--stream=false", "--since", str(since), "--filter", "event=died",
                          "--filter", f"label=io.podman.compose.project={fleet.project}",
                          "--format", "{{.Name}} {{.ContainerExitCode}}").stdout  # fmt: skip
    died = dict(line.rsplit(" ", 1) for line in events.splitlines() if line.strip())
    assert died == {name: "0" for name in containers.values()}
    assert fleet.containers() == {}
    network = fleet.podman("network", "exists", f"{fleet.project}_default", check=False)
    assert network.returncode == 1


def test_a_request_to_a_fleet_at_zero_is_answered_once_a_pod_starts(autoscaled):
    view = admin_call("GET", f"{autoscaled.control}/autoscaler")
    assert view["pods"]["serving"] == 0 and in_set(autoscaled) == set()
    with phase("scale-from-zero"):
        started = time.monotonic()
        # katyusha holds them at zero and tells the control container (--demand-url), which wakes a pod.
        results = _get(autoscaled.url, 8, threads=8)
        took = time.monotonic() - started
    assert [status for status, _ in results] == [200] * 8
    assert {pod for _, pod in results} <= {"pod-1", "pod-2"}
    assert took >= COLD_START_S * 0.6, took  # they waited for a real cold start
    view = admin_call("GET", f"{autoscaled.control}/autoscaler")
    assert view["cold_starts"]["total"] >= 1 and view["pods"]["serving"] >= 1, view
    assert {pod for _, pod in results} <= in_set(autoscaled)


def test_the_image_runs_the_kubernetes_control_plane(image):
    # deploy/kubernetes runs `python -m katyusha.kubernetes control` from this image.
    def run(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(["podman", "run", "--rm", "--network", "none", *argv], capture_output=True,
                              text=True, timeout=120)  # fmt: skip

    with phase("kubernetes"):
        helped = run(IMAGE, "python", "-m", "katyusha.kubernetes", "--help")
        # As in a pod with no service account mounted: everything imports, and it says what is missing.
        started = run("--env", "KUBERNETES_SERVICE_HOST=10.0.0.1", "--env", "KUBERNETES_SERVICE_PORT=443", IMAGE,
                      "python", "-m", "katyusha.kubernetes", "control", "--namespace=t", "--identity=x",
                      "--katyusha=katyusha-admin:admin", "--scale=default=hello:hello")  # fmt: skip
    assert helped.returncode == 0 and "control" in helped.stdout, helped.stderr
    assert started.returncode == 1, started.stderr
    assert "cannot configure the Kubernetes client from the service account" in started.stderr
    assert "Traceback" not in started.stderr
