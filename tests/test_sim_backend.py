"""sim-backend as a real process: lifecycle over the admin API, serving, speed, monitoring, config."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit

import pytest

from katyusha.core.errors import ConfigError
from sim_backend.config import load_settings
from sim_backend.slowdown import parse_slow_schedule
from tests.procs import Proc, script


def request(method: str, url: str, body=None, *, raw: bytes | None = None, timeout: float = 10.0):
    """One HTTP call; returns (status, decoded JSON or text, seconds it took)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    started = time.monotonic()
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=data)
        resp = conn.getresponse()
        payload = resp.read().decode()
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    try:
        return resp.status, json.loads(payload), elapsed
    except ValueError:
        return resp.status, payload, elapsed


def sim(*args: str, env: dict | None = None) -> Proc:
    return Proc([script("sim-backend"), "--port", "0", "--admin-port", "0", *args], env=env)


@pytest.fixture(scope="module")
def warm_pod():
    with sim("--pod", "pod-w", "--node", "node-7", "--service-time", "const:100ms", "--speed", "0.5",
             "--monitor-period", "0.1", "--requests-buffer", "5", "--seed", "1") as proc:
        yield proc


def test_timed_cold_start_walks_the_auto_path_with_real_delays():
    # 30 MB at 100 MB/s = 0.3 s pull, then 0.3 s container start.
    with sim("--state", "null", "--image-size-mb", "30", "--pull-mbps", "100", "--start-s", "0.3") as pod:
        status, body, _ = request("GET", pod.url + "/")
        assert status == 503 and "null" in body["error"] and body["state"] == "null"
        assert request("GET", pod.admin + "/healthz")[0] == 503

        started = time.monotonic()
        status, plan, _ = request("PUT", pod.admin + "/state", {"state": "warm", "path": "auto"})
        assert status == 202, plan
        assert [(s["from"], s["to"]) for s in plan["steps"]] == [
            ("null", "cold"), ("cold", "warmdisk"), ("warmdisk", "warm")]
        assert [s["cost_s"] for s in plan["steps"]] == pytest.approx([0.0, 0.3, 0.3])
        assert plan["total_s"] == pytest.approx(0.6)

        seen = set()
        while time.monotonic() - started < 10:
            doc = request("GET", pod.admin + "/state")[1]
            if doc["transition"]:
                t = doc["transition"]
                assert 0 <= t["remaining_s"] <= 0.3 + 1e-6
                assert t["ends_at"] > t["started_at"]
                seen.add((t["from"], t["to"]))
            if doc["state"] == "warm":
                break
            time.sleep(0.02)
        took = time.monotonic() - started
        assert doc["state"] == "warm"
        assert 0.55 <= took <= 1.6, took
        assert seen, "no transition was visible in GET /state while it ran"
        assert doc["counters"]["cold_starts"] == 1 and doc["counters"]["image_pulls"] == 1

        status, body, _ = request("GET", pod.url + "/hello")
        assert status == 200 and body["pod"] == "pod-1"
        assert request("GET", pod.admin + "/healthz")[0] == 200


def test_cold_pod_rejects_requests_naming_its_state():
    with sim("--state", "cold", "--pod", "pod-c", "--image-size-mb", "60", "--start-s", "0.2") as pod:
        status, body, _ = request("POST", pod.url + "/work", raw=b"x" * 100)
        assert status == 503
        assert body["error"] == "pod pod-c is cold, not serving"
        counters = request("GET", pod.admin + "/state")[1]["counters"]
        assert counters["rejected"] == 1 and counters["served"] == 0
        # A single step that takes time answers 202 and another ask meanwhile is refused.
        status, _, _ = request("PUT", pod.admin + "/state", {"state": "warmdisk"})
        assert status == 202
        status, body, _ = request("PUT", pod.admin + "/state", {"state": "null"})
        assert status == 409 and "in progress" in body["error"]
        status, body, _ = request("PUT", pod.admin + "/state", {"state": "warm", "path": "auto"})
        assert status == 409 and "cold -> warmdisk" in body["error"]
        assert request("GET", pod.url + "/")[0] == 503
        deadline = time.monotonic() + 10
        while request("GET", pod.admin + "/state")[1]["state"] != "warmdisk" and time.monotonic() < deadline:
            time.sleep(0.05)
        # "wait": true answers once the move is over.
        status, body, took = request("PUT", pod.admin + "/state", {"state": "warm", "path": "auto", "wait": True})
        assert status == 200 and body["pod"]["state"] == "warm", body
        assert 0.2 <= took <= 2.0
        assert request("GET", pod.url + "/")[0] == 200
        assert pod.terminate() == 0


@pytest.mark.parametrize(
    "raw,needle",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "JSON object"),
        (b"{}", '"state"'),
        (b'{"state": "hot"}', "'hot'"),
        (b'{"state": "warmdisk", "path": "fastest"}', "'fastest'"),
        (b'{"state": "warmdisk", "force": true}', "force"),
    ],
)
def test_malformed_state_change_is_400_naming_the_problem(warm_pod, raw, needle):
    status, body, _ = request("PUT", warm_pod.admin + "/state", raw=raw)
    assert status == 400, body
    assert needle in body["error"]
    assert request("GET", warm_pod.admin + "/state")[1]["state"] == "warm"


def test_illegal_state_change_is_409_naming_states(warm_pod):
    status, body, _ = request("PUT", warm_pod.admin + "/state", {"state": "cold"})
    assert status == 409
    assert "warm -> cold" in body["error"] and "active, warmdisk" in body["error"]
    status, body, _ = request("PUT", warm_pod.admin + "/state", {"state": "active", "path": "auto"})
    assert status == 409 and "active" in body["error"]
    assert request("GET", warm_pod.admin + "/state")[1]["state"] == "warm"


def test_speed_divides_service_time_and_is_scriptable(warm_pod):
    # const:100ms at speed 0.5 takes 200 ms.
    status, body, took = request("POST", warm_pod.url + "/any/path", raw=b"abcdef")
    assert status == 200
    assert body == {"pod": "pod-w", "node": "node-7", "service_ms": body["service_ms"], "target_ms": 200.0,
                    "bytes_in": 6}
    assert 190 <= body["service_ms"] <= 600
    assert 0.19 <= took <= 1.0
    try:
        assert request("PUT", warm_pod.admin + "/speed", {"speed": 2})[1]["effective_speed"] == 2
        body = request("GET", warm_pod.url + "/")[1]
        assert 45 <= body["service_ms"] <= 200
        for bad in ({"speed": 0}, {"speed": "fast"}, {}, {"speed": 1, "x": 1}):
            assert request("PUT", warm_pod.admin + "/speed", bad)[0] == 400
    finally:
        request("PUT", warm_pod.admin + "/speed", {"speed": 0.5})


def test_requests_log_has_ordered_timestamps_and_is_bounded(warm_pod):
    for _ in range(6):
        request("GET", warm_pod.url + "/r")
    body = request("GET", warm_pod.admin + "/requests")[1]
    assert body["capacity"] == 5 and len(body["requests"]) == 5
    for rec in body["requests"]:
        assert rec["arrival"] <= rec["service_start"] < rec["service_end"]
        assert rec["service_end"] - rec["service_start"] >= 0.15
    assert len(request("GET", warm_pod.admin + "/requests?limit=2")[1]["requests"]) == 2
    assert request("GET", warm_pod.admin + "/requests?limit=x")[0] == 400


def test_active_while_requests_execute(warm_pod):
    result = {}
    caller = threading.Thread(target=lambda: result.update(r=request("GET", warm_pod.url + "/")))
    caller.start()
    states = []
    refusal = None
    while caller.is_alive() and len(states) < 200:
        doc = request("GET", warm_pod.admin + "/state")[1]
        states.append((doc["state"], doc["in_flight"]))
        if doc["state"] == "active" and refusal is None:
            # Leaving while a request executes is refused and does not break the request.
            refusal = request("PUT", warm_pod.admin + "/state", {"state": "warmdisk"})
        time.sleep(0.01)
    caller.join()
    assert ("active", 1) in states
    assert refusal[0] == 409 and "executing" in refusal[1]["error"]
    assert result["r"][0] == 200
    assert request("GET", warm_pod.admin + "/state")[1]["state"] == "warm"


def test_monitor_and_metrics_sample_the_pod(warm_pod):
    time.sleep(0.35)
    doc = request("GET", warm_pod.admin + "/monitor")[1]
    assert doc["period_s"] == 0.1 and len(doc["samples"]) >= 3
    sample = doc["samples"][-1]
    assert sample["state"] == "warm"
    assert sample["cpu_cores"] > 0 and sample["ram_mb"] > 0 and sample["disk_mb"] == 200
    times = [s["t"] for s in doc["samples"]]
    assert times == sorted(times)
    assert 0.05 <= times[-1] - times[-2] <= 1.0

    status, text, _ = request("GET", warm_pod.admin + "/metrics")
    assert status == 200
    assert 'sim_backend_state{node="node-7",pod="pod-w",state="warm"} 1.0' in text
    for name in ("sim_backend_cpu_cores", "sim_backend_ram_bytes", "sim_backend_disk_bytes",
                 "sim_backend_in_flight", "sim_backend_requests_total"):
        assert name in text


def test_slow_schedule_slows_the_pod_by_itself():
    # Slow from the start (offset 0) for 99 s of every 100 s: four times slower now.
    with sim("--service-time", "const:40ms", "--slow-schedule",
             "period=100s,duration=99s,factor=0.25,offset=0s") as pod:
        body = request("GET", pod.url + "/")[1]
        assert 150 <= body["service_ms"] <= 500
        speed = request("GET", pod.admin + "/speed")[1]
        assert speed["effective_speed"] == 0.25 and speed["slow_schedule"]["factor"] == 0.25


def test_slow_schedule_phases():
    schedule = parse_slow_schedule("period=10s,duration=3s,factor=0.25")
    assert [schedule.factor_at(t) for t in (0, 6.9, 7.0, 9.9, 10.0, 17.5)] == [
        1.0, 1.0, 0.25, 0.25, 1.0, 0.25]
    with pytest.raises(ConfigError, match="duration"):
        parse_slow_schedule("period=1s,duration=2s,factor=0.5")
    with pytest.raises(ConfigError, match="speed"):
        parse_slow_schedule("period=1s,duration=0.5s,speed=0.5")


def _proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_cpu_burn_uses_real_cpu_without_blocking_the_admin_port():
    with sim("--service-time", "const:1s", "--cpu-burn") as pod:
        before = _proc_cpu_s(pod.ready.pid)
        result = {}
        caller = threading.Thread(target=lambda: result.update(r=request("GET", pod.url + "/")))
        caller.start()
        time.sleep(0.05)
        status, _, took = request("GET", pod.admin + "/state")
        caller.join()
        assert status == 200 and took < 0.6
        assert result["r"][0] == 200 and result["r"][1]["service_ms"] >= 990
        assert _proc_cpu_s(pod.ready.pid) - before >= 0.9


def test_settings_precedence_yaml_env_flags(tmp_path):
    config = tmp_path / "pod.yaml"
    config.write_text("pod: from-yaml\nnode: yaml-node\nspeed: 0.5\nservice_time: exp:20ms\n")
    settings = load_settings(
        ["--config", str(config), "--speed", "2"],
        {"SIM_BACKEND_NODE": "env-node", "SIM_BACKEND_SPEED": "3"},
    )
    assert (settings.pod, settings.node, settings.speed) == ("from-yaml", "env-node", 2.0)
    assert settings.service_time.mean == pytest.approx(0.02)

    config.write_text("pod: a\nspeedy: 2\n")
    with pytest.raises(ConfigError, match="speedy"):
        load_settings(["--config", str(config)], {})
    with pytest.raises(ConfigError, match="SIM_BACKEND_SPEED"):
        load_settings([], {"SIM_BACKEND_SPEED": "-1"})
    with pytest.raises(ConfigError, match="SIM_BACKEND_SERVCE_TIME"):
        load_settings([], {"SIM_BACKEND_SERVCE_TIME": "const:1ms"})


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--service-time", "normal:5ms"], "--service-time"),
        (["--state", "active"], "--state"),
        (["--speed", "zero"], "--speed"),
        (["--pull-mbps", "0"], "--pull-mbps"),
    ],
)
def test_bad_flag_exits_nonzero_naming_it(args, needle):
    proc = subprocess.run([script("sim-backend"), "--port", "0", "--admin-port", "0", *args],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert needle in proc.stderr
