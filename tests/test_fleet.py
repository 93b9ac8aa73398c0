"""`katyusha fleet`: a real local fleet started through the CLI, on kernel-chosen ports.

One fleet (3 warm pods and a spare one started in warmdisk, fast service
times) serves the tests of this module in order: traffic reaches every warm
pod and not the spare, the spare joins once it is warm, a pod moved out of
service gets nothing and comes back, crashed children are restarted, and
SIGTERM stops every process. Pod counts come from katyusha's admin GET /pods (its load table).
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.procs import NO_DRAIN_GRACE, script, wait_for

FLEET_YAML = """
nodes: 2
pods: 4
katyusha:
  port: 0
  admin_port: 0
runner:
  poll_interval_s: 0.2
  stop_timeout_s: 15
defaults:
  service_time: const:2ms
  concurrency: 4
  queue_depth: 50
  image_size_mb: 10
  pull_mbps: 1000
  start_s: 0.1
groups:
  - name: pod
  - name: spare
    count: 1
    state: warmdisk
"""


class Fleet:
    """`katyusha fleet up` as a child process, its stdout and stderr collected by threads."""

    def __init__(self, argv: list[str], state_file: Path):
        self.state_file = state_file
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**NO_DRAIN_GRACE, **os.environ, "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._out_lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(self.popen.stdout, self.out, self._out_lines), daemon=True).start()
        threading.Thread(target=self._pump, args=(self.popen.stderr, self.err, None), daemon=True).start()
        self.seen_pids: set[int] = set()

    @staticmethod
    def _pump(stream, sink: list[str], lines: queue.Queue | None) -> None:
        for line in stream:
            sink.append(line)
            if lines is not None:
                lines.put(line)
        if lines is not None:
            lines.put(None)

    def wait_url(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._out_lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            match = re.match(r"send traffic to: (http://\S+)", line)
            if match:
                return match[1]
        raise AssertionError(f"fleet not ready in {timeout}s\nstdout:\n{''.join(self.out)}\nstderr:\n{''.join(self.err)}")

    def document(self) -> dict:
        doc = json.loads(self.state_file.read_text())
        for proc in self.processes(doc):
            self.seen_pids.add(proc["pid"])
        return doc

    @staticmethod
    def processes(doc: dict) -> list[dict]:
        return [*doc["katyusha"], *(p["sim"] for p in doc["pods"]), *(p["nonna"] for p in doc["pods"])]

    def stderr_text(self) -> str:
        return "".join(self.err)

    def kill_all(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)
        for pid in self.seen_pids:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def fleet_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([script("katyusha"), "fleet", *args], capture_output=True, text=True, timeout=timeout)


def get_json(url: str) -> dict:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path)
        resp = conn.getresponse()
        assert resp.status == 200, (url, resp.status)
        return json.loads(resp.read())
    finally:
        conn.close()


def put_json(url: str, body: dict) -> dict:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("PUT", parts.path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        payload = resp.read()
        assert resp.status in (200, 202), (url, resp.status, payload)
        return json.loads(payload)
    finally:
        conn.close()


def send(url: str, count: int, parallel: int = 8) -> list[int | str]:
    """Send ``count`` GETs over ``parallel`` kept-alive connections; return every status (or error)."""
    parts = urlsplit(url)
    per_worker = [count // parallel + (1 if i < count % parallel else 0) for i in range(parallel)]

    def worker(n: int) -> list[int]:
        statuses = []
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        for i in range(n):
            try:
                conn.request("GET", f"/req/{i}")
                resp = conn.getresponse()
                resp.read()
                statuses.append(resp.status)
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
                statuses.append(repr(sys.exc_info()[1]))
        conn.close()
        return statuses

    with ThreadPoolExecutor(parallel) as pool:
        return [s for chunk in pool.map(worker, per_worker) for s in chunk]


def load_table(doc: dict) -> dict[str, dict]:
    """Pod name -> row of replica 0's load table."""
    return {row["name"]: row for row in get_json(doc["katyusha"][0]["admin"] + "/pods")["pods"]}




class Traffic:
    """Requests sent in the background, one connection at a time, until stopped."""

    def __init__(self, url: str):
        self.url = url
        self.statuses: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.statuses.extend(send(self.url, 10, parallel=2))

    def stop(self) -> list[int | str]:
        self._stop.set()
        self._thread.join(30)
        return self.statuses


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fleet")
    fleet_file = tmp / "fleet.yaml"
    fleet_file.write_text(FLEET_YAML)
    state_file = tmp / "state.json"
    proc = Fleet(
        [script("katyusha"), "fleet", "up", "--fleet", str(fleet_file), "--state-file", str(state_file)],
        state_file,
    )
    try:
        proc.url = proc.wait_url(90)
        proc.document()
        yield proc
    finally:
        proc.kill_all()


def test_every_pod_serves_and_status_shows_them(fleet):
    doc = fleet.document()
    assert fleet.url == doc["url"]
    assert len(doc["pods"]) == 4 and len(doc["katyusha"]) == 1
    statuses = send(fleet.url, 500)
    assert statuses.count(200) == 500, (set(statuses), fleet.stderr_text()[-3000:])
    table = load_table(doc)
    assert set(table) == {"pod-1", "pod-2", "pod-3"}
    assert all(row["requests"] > 0 for row in table.values()), table
    assert sum(row["requests"] for row in table.values()) >= 500

    status = fleet_cli("status", "--state-file", str(fleet.state_file), "--json")
    assert status.returncode == 0, status.stderr
    live = json.loads(status.stdout)
    states = {p["name"]: p["state"] for p in live["pods"]}
    assert states["spare-1"] == "warmdisk"
    assert all(states[f"pod-{i}"] in ("warm", "active") for i in (1, 2, 3)), states
    assert all(p["nonna_up"] for p in live["pods"]), live["pods"]
    text = fleet_cli("status", "--state-file", str(fleet.state_file))
    assert "pod-2/nonna" in text.stdout and "load table" in text.stdout


def test_the_state_file_is_a_processes_file_for_katyusha_control(fleet):
    import yaml

    from katyusha.control.processes import StaticProcesses
    from katyusha.fleet.spec import build_spec

    doc = fleet.document()
    processes = StaticProcesses(json.loads(fleet.state_file.read_text()), build_spec(yaml.safe_load(FLEET_YAML), {}).pods)
    assert [b.admin for b in processes.balancers()] == [doc["katyusha"][0]["admin"]]
    assert [(p.name, p.nonna_url, p.sim_admin) for p in processes.pods()] == [
        (p["name"], p["nonna"]["data"], p["sim"]["admin"]) for p in doc["pods"]]
    assert doc["control"]["admin"].startswith("http://127.0.0.1:")


def test_runner_follows_pod_states(fleet):
    doc = fleet.document()
    spare = next(p for p in doc["pods"] if p["name"] == "spare-1")
    put_json(spare["sim"]["admin"] + "/state", {"state": "warm", "path": "auto"})
    wait_for(lambda: "spare-1" in load_table(doc), 15, "the runner to add spare-1 once warm")
    assert send(fleet.url, 300).count(200) == 300
    assert load_table(doc)["spare-1"]["requests"] > 0

    put_json(spare["sim"]["admin"] + "/state", {"state": "warmdisk", "path": "auto"})
    wait_for(lambda: "spare-1" not in load_table(doc), 15, "the runner to remove spare-1 once it left warm")
    assert send(fleet.url, 100).count(200) == 100


def test_pod_out_of_service_gets_no_requests_then_comes_back(fleet):
    doc = fleet.document()
    traffic = Traffic(fleet.url)
    try:
        moved = fleet_cli("pod", "pod-2", "state", "warmdisk", "--state-file", str(fleet.state_file))
        assert moved.returncode == 0, moved.stderr
        assert "now warmdisk" in moved.stdout
    finally:
        during_move = traffic.stop()
    assert during_move and all(s == 200 for s in during_move), set(during_move)

    assert "pod-2" not in load_table(doc)
    before = sum(row["requests"] for row in load_table(doc).values())
    statuses = send(fleet.url, 200)
    assert statuses.count(200) == 200
    after = load_table(doc)
    assert "pod-2" not in after
    # Every request went to the two pods left.
    assert sum(row["requests"] for row in after.values()) - before >= 200

    back = fleet_cli("pod", "pod-2", "state", "warm", "--state-file", str(fleet.state_file))
    assert back.returncode == 0, back.stderr
    assert "now warm" in back.stdout
    assert send(fleet.url, 200).count(200) == 200
    assert load_table(doc)["pod-2"]["requests"] > 0


@pytest.mark.parametrize("role", ["sim", "nonna"])
def test_killed_child_is_reported_and_restarted(fleet, role):
    doc = fleet.document()
    pod = doc["pods"][0]
    victim = pod[role]
    traffic = Traffic(fleet.url)
    try:
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(lambda: f"{victim['name']} is back" in fleet.stderr_text(), 30, f"{victim['name']} restart")
        assert f"{victim['name']} (pid {victim['pid']}) exited with signal SIGKILL" in fleet.stderr_text()

        def restarted():
            current = fleet.document()["pods"][0]
            return current if current[role]["pid"] != victim["pid"] else None

        current = wait_for(restarted, 10, "the state file to show the new pid")
        wait_for(lambda: pod["name"] in load_table(doc) and load_table(doc)[pod["name"]]["url"] == current["nonna"]["data"],
                 15, "the pod back in katyusha's set")  # fmt: skip
    finally:
        during = traffic.stop()
    assert during
    # Not one GET fails: a request whose nonna vanished before answering, or whose app died under
    # nonna (nonna answers 502 with Nonna-Error: upstream-unreachable), is retried on another pod.
    failed = [s for s in during if s != 200]
    assert not failed, failed
    statuses = send(fleet.url, 200)
    assert statuses.count(200) == 200
    assert load_table(doc)[pod["name"]]["requests"] > 0


def test_a_restarted_sim_backend_comes_back_in_the_state_it_was_last_seen_in(fleet):
    doc = fleet.document()
    moved = fleet_cli("pod", "pod-3", "state", "warmdisk", "--state-file", str(fleet.state_file))
    assert moved.returncode == 0, moved.stderr
    victim = next(p for p in doc["pods"] if p["name"] == "pod-3")["sim"]
    os.kill(victim["pid"], signal.SIGKILL)
    wait_for(lambda: f"{victim['name']} (pid {victim['pid']}) exited" in fleet.stderr_text(), 15, "the crash report")

    def restarted():
        current = next(p for p in fleet.document()["pods"] if p["name"] == "pod-3")["sim"]
        return current if current["pid"] != victim["pid"] and f"{victim['name']} is back" in fleet.stderr_text() else None

    current = wait_for(restarted, 30, "pod-3/sim to restart")
    # Warmdisk, as it was when it died, not warm as the fleet file started it; so still out of the set.
    assert get_json(current["admin"] + "/state")["state"] == "warmdisk"
    assert "pod-3" not in load_table(doc)
    back = fleet_cli("pod", "pod-3", "state", "warm", "--state-file", str(fleet.state_file))
    assert back.returncode == 0, back.stderr
    assert "pod-3" in load_table(doc)


def test_sigterm_stops_every_process(fleet):
    doc = fleet.document()
    pids = fleet.seen_pids | {p["pid"] for p in Fleet.processes(doc)}
    fleet.popen.send_signal(signal.SIGTERM)
    assert fleet.popen.wait(60) == 0, fleet.stderr_text()

    def all_gone():
        for pid in pids:
            try:
                os.killpg(pid, 0)
                return False
            except ProcessLookupError:
                pass
        return True

    wait_for(all_gone, 5, "every child process group to be gone")
    assert not fleet.state_file.exists()


def test_bad_fleet_file_fails_before_starting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("pods: 2\ngroups:\n  - name: a\n    count: 1\n  - name: b\n    service_time: exp:fast\n")
    started = time.monotonic()
    result = fleet_cli("up", "--fleet", str(bad), "--port", "0", timeout=30)
    assert result.returncode == 2
    assert "groups[1].service_time" in result.stderr
    assert "exp:fast" in result.stderr
    assert time.monotonic() - started < 20
    assert "ready" not in result.stdout + result.stderr

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("defaults:\n  sped: 2\n")
    result = fleet_cli("up", "--fleet", str(unknown), "--port", "0", timeout=30)
    assert result.returncode == 2 and "defaults.sped: unknown field" in result.stderr
