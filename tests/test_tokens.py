"""Admin tokens: every mutating admin endpoint of every process needs the bearer token when one is set.

A real local fleet started with ``katyusha fleet up --admin-token-file`` (katyusha,
nonna, sim-backend and the fleet's in-process control plane, whose client sends
the token to every process), and ``katyusha control`` on its own; each process
refuses to start with its admin port open beyond loopback and no token.
"""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request

import pytest

from katyusha.admintoken import authorized, check_exposure, is_loopback, resolve_token
from katyusha.core.errors import ConfigError
from katyusha.proxy.config import validate
from tests.procs import FleetUp, Proc, get_json, script, wait_for

TOKEN = "s3cret-token-42"

FLEET = """
pods: 2
nodes: 1
runner:
  poll_interval_s: 0.2
defaults:
  service_time: const:2ms
  concurrency: 2
"""


def call(method: str, url: str, body: object = None, token: str | None = None) -> tuple[int, object]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=20) as reply:
            raw = reply.read()
            status = reply.status
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        status = exc.code
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw.decode()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tokens")
    token_file = tmp / "admin-token"
    token_file.write_text(TOKEN + "\n")
    up = FleetUp(tmp, FLEET, "--admin-token-file", str(token_file))
    try:
        doc = up.wait_ready(60)
        # Pods reached katyusha's set: the control plane's client sent the token.
        wait_for(lambda: len(get_json(doc["katyusha"][0]["admin"] + "/pods")["pods"]) == 2, 20,
                 "both pods in katyusha's set")
        yield up
    finally:
        up.stop()


def endpoints(doc: dict) -> list[tuple[str, str, object, set[int]]]:
    """(method, url, body, statuses that show the request got past the token check)."""
    katyusha = doc["katyusha"][0]["admin"]
    pod = doc["pods"][0]
    sim, nonna, control = pod["sim"]["admin"], pod["nonna"]["admin"], doc["control"]["admin"]
    spec = {"name": pod["name"], "url": pod["nonna"]["data"], "admin": nonna}
    return [
        ("PUT", katyusha + "/pods", {"pods": [spec]}, {200}),
        ("POST", katyusha + "/pods", {"pods": [spec]}, {200}),
        ("DELETE", katyusha + "/pods/no-such-pod", None, {404}),
        ("PUT", sim + "/state", {"state": "warm"}, {200, 409}),
        ("PUT", sim + "/speed", {"speed": 1.0}, {200}),
        ("PUT", nonna + "/stats", {}, {405}),  # nonna's admin has no mutating route, but is guarded alike
        ("PUT", control + f"/pods/{pod['name']}/state", {"state": "warm", "timeout": 10}, {200}),
        ("POST", control + "/demand", {"service": "default", "waiting": 0}, {404}),
    ]


def test_every_mutating_admin_endpoint_needs_the_token(fleet):
    for method, url, body, passed in endpoints(fleet.doc):
        status, answer = call(method, url, body)
        assert status == 401, (method, url, status, answer)
        assert "Authorization: Bearer" in answer["error"], answer
        status, answer = call(method, url, body, token="wrong")
        assert status == 401 and "does not match" in answer["error"], (method, url, answer)
        status, answer = call(method, url, body, token=TOKEN)
        assert status in passed, (method, url, status, answer)


def test_reads_stay_open(fleet):
    doc = fleet.doc
    pod = doc["pods"][0]
    for url in (doc["katyusha"][0]["admin"] + "/pods", pod["sim"]["admin"] + "/state",
                pod["nonna"]["admin"] + "/stats", doc["control"]["admin"] + "/fleet"):
        status, _ = call("GET", url)
        assert status == 200, url


def test_fleet_pod_and_status_find_the_token_through_the_state_file(fleet):
    for target in ("warmdisk", "warm"):
        done = subprocess.run([script("katyusha"), "fleet", "pod", "pod-1", "state", target,
                               "--state-file", str(fleet.state_file), "--timeout", "30"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    status = subprocess.run([script("katyusha"), "fleet", "status", "--state-file", str(fleet.state_file),
                             "--json"], capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    assert "s3cret" not in fleet.state_file.read_text()  # the file's path is recorded, not the token


def test_a_katyusha_with_workers_passes_the_token_on_to_them(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with Proc([script("katyusha"), "serve", "--port", "0", "--admin-port", "0", "--katyusha-threads", "2",
               "--admin-token-file", str(token_file)]) as proxy:
        spec = {"pods": [{"name": "p", "url": "http://127.0.0.1:9"}]}
        assert call("PUT", proxy.admin + "/pods", spec)[0] == 401
        status, answer = call("PUT", proxy.admin + "/pods", spec, token=TOKEN)
        assert status == 200 and [w["pods"] for w in answer["workers"]] == [["p"], ["p"]]


@pytest.mark.parametrize("argv", [
    ["katyusha", "serve", "--host", "0.0.0.0", "--port", "0", "--admin-port", "0"],
    ["nonna", "--host", "0.0.0.0", "--port", "0", "--admin-port", "0"],
    ["sim-backend", "--host", "0.0.0.0", "--port", "0", "--admin-port", "0"],
    ["katyusha", "control", "--host", "0.0.0.0", "--processes", "/dev/null"],
    ["katyusha", "fleet", "up", "--host", "0.0.0.0", "--pods", "1"],
])
def test_an_admin_port_open_beyond_loopback_without_a_token_refuses_to_start(argv):
    done = subprocess.run([script(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "0.0.0.0" in done.stderr and "admin-allow-open" in done.stderr and "admin-token" in done.stderr


def test_token_settings_and_exposure_rules():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1") and not is_loopback("pod.local")
    check_exposure("0.0.0.0", "t", False)
    check_exposure("0.0.0.0", None, True)
    with pytest.raises(ConfigError):
        check_exposure("::", None, False)
    assert validate({"host": "0.0.0.0", "admin-allow-open": "true"}).admin_token is None
    with pytest.raises(ConfigError) as info:
        validate({"admin-token": "a", "admin-token-file": "/etc/hostname"})
    assert info.value.key == "admin-token"
    with pytest.raises(ConfigError) as info:
        resolve_token(None, "/no/such/file")
    assert info.value.key == "admin-token-file"
    assert validate({"admin-token": TOKEN}).to_json()["admin-token"] == "(set)"
    assert authorized([(b"authorization", b"Bearer " + TOKEN.encode())], TOKEN) is None
    assert authorized([(b"authorization", b"bearer " + TOKEN.encode())], TOKEN) is None
    assert "Bearer" in authorized([(b"authorization", b"Basic xyz")], TOKEN)
