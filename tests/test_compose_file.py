"""docker-compose.yml is the default fleet, generated, and runnable as written.

The committed compose file, its Prometheus scrape config and the control
plane's fleet and processes files must be what ``katyusha fleet compose``
writes for the shipped fleet file, and each process must get the flags the
local runner (`make fleet`) gives it. The compose fleet in real containers
is tests/test_compose_e2e.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from katyusha.control.processes import StaticProcesses
from katyusha.fleet import compose
from katyusha.fleet.runner import Fleet
from katyusha.fleet.spec import build_spec, load_spec
from katyusha.proxy.config import ProxyConfig
from katyusha.serving import ReadyLine
from tests.procs import script

ROOT = Path(__file__).resolve().parent.parent


def committed(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def _normal(argv: list[str]) -> list[str]:
    """A command line with its program's path cut to the name and ``--host`` blanked (loopback vs 0.0.0.0)."""
    out = [Path(argv[0]).name, *argv[1:]]
    host = out.index("--host")
    out[host + 1] = "HOST"
    return out


def test_committed_files_are_what_the_generator_writes():
    texts = compose.render()
    assert set(texts) == {compose.COMPOSE_FILE, compose.PROMETHEUS_FILE, compose.RULES_FILE, compose.FLEET_FILE,
                          compose.PROCESSES_FILE}
    for name, text in texts.items():
        assert (ROOT / name).read_text() == text, f"{name} is stale: run `katyusha fleet compose`"


def test_check_flag_finds_a_stale_file(tmp_path):
    cli = [script("katyusha"), "fleet", "compose", "--dir", str(tmp_path)]
    run = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "wrote docker-compose.yml" in run.stdout and f"wrote {compose.PROCESSES_FILE}" in run.stdout
    assert subprocess.run([*cli, "--check"], capture_output=True, timeout=60).returncode == 0
    for name in (compose.PROMETHEUS_FILE, compose.PROCESSES_FILE):
        path = tmp_path / name
        path.write_text(path.read_text().replace("pod-4", "pod-9"))
    check = subprocess.run([*cli, "--check"], capture_output=True, text=True, timeout=60)
    assert check.returncode == 1
    assert compose.PROMETHEUS_FILE in check.stderr and "katyusha fleet compose" in check.stderr
    assert compose.PROCESSES_FILE in check.stderr and compose.COMPOSE_FILE not in check.stderr


SECRET = f"/run/secrets/{compose.TOKEN_SECRET}"


def test_every_process_gets_the_flags_the_local_runner_gives_it():
    spec = load_spec()
    services = committed(compose.COMPOSE_FILE)["services"]
    # The runner given the secret's path passes the same token flag the compose file does.
    fleet = Fleet(spec, token_file=SECRET)
    sim, nonna, k = compose.PORTS["sim-backend"], compose.PORTS["nonna"], compose.PORTS["katyusha"]
    pod_flags = []
    for run in fleet.pods:
        sim_service, nonna_service = f"{run.spec.name}-sim", f"{run.spec.name}-nonna"
        run.sim.ready = ReadyLine("sim-backend", f"http://{sim_service}:{sim.data}", f"http://{sim_service}:{sim.admin}", 1)
        run.nonna.ready = ReadyLine("nonna", f"http://{nonna_service}:{nonna.data}", f"http://{nonna_service}:{nonna.admin}", 1)
        assert _normal(services[sim_service]["command"]) == _normal(fleet._sim_argv(run, sim.data, sim.admin))
        assert _normal(services[nonna_service]["command"]) == _normal(fleet._nonna_argv(run, nonna.data, nonna.admin))
        # What the runner registers in katyusha's set: nonna's URLs, the pod's node and concurrency.
        pod_flags += ["--pod", f"{run.nonna.ready.data_url},name={run.spec.name},node={run.spec.node},"
                               f"admin={run.nonna.ready.admin_url},concurrency={run.spec.params.concurrency}"]  # fmt: skip
    # katyusha: the runner's flags, plus the pods it would add (all warm) given up front.
    command = services["katyusha"]["command"]
    is_pod = [arg == "--pod" or (i > 0 and command[i - 1] == "--pod") for i, arg in enumerate(command)]
    assert [arg for arg, pod in zip(command, is_pod, strict=True) if pod] == pod_flags
    rest = [arg for arg, pod in zip(command, is_pod, strict=True) if not pod]
    assert _normal(rest) == _normal(fleet._katyusha_argv(k.data, k.admin))
    assert len(services) == 2 * len(spec.pods) + spec.katyusha.replicas + 2  # + control, prometheus


def test_an_autoscaled_fleets_katyusha_gets_the_runners_flags_with_the_control_services_demand_url():
    spec = build_spec({"autoscale": True}, {})
    command = compose.compose_document(spec)["services"]["katyusha"]["command"]
    # Every slot starts null: none is in katyusha's set; the control plane adds what it wakes.
    assert "--pod" not in command
    runner = Fleet(spec, token_file=SECRET)._katyusha_argv(8080, 9080)
    at = runner.index("--demand-url") + 1
    runner[at] = "http://control:9070/demand"
    assert _normal(command) == _normal(runner)


def test_the_control_plane_reads_the_generated_files_and_finds_every_process_by_service_name():
    services = committed(compose.COMPOSE_FILE)["services"]
    control = services["control"]
    # The two files are mounted where its command reads them.
    mounts = dict(volume.removeprefix("./").removesuffix(":ro").split(":") for volume in control["volumes"])
    assert mounts == {compose.FLEET_FILE: "/etc/katyusha/fleet.yaml", compose.PROCESSES_FILE: "/etc/katyusha/processes.yaml"}
    command = control["command"]
    assert command[:2] == ["katyusha", "control"]
    assert command[command.index("--fleet") + 1] == mounts[compose.FLEET_FILE]
    assert command[command.index("--processes") + 1] == mounts[compose.PROCESSES_FILE]
    # The mounted fleet file is the shipped one; the processes file is valid for it, as
    # `katyusha control` reads it, and names the services and ports of the compose file.
    assert load_spec(ROOT / compose.FLEET_FILE) == load_spec()
    processes = StaticProcesses(committed(compose.PROCESSES_FILE), load_spec().pods)
    katyusha = services["katyusha"]["command"]
    for pod in processes.pods():
        sim, nonna = services[f"{pod.name}-sim"]["command"], services[f"{pod.name}-nonna"]["command"]
        assert pod.sim_admin == f"http://{pod.name}-sim:{_flag(sim, '--admin-port')}"
        assert pod.nonna_url == f"http://{pod.name}-nonna:{_flag(nonna, '--port')}"
        assert pod.nonna_admin == f"http://{pod.name}-nonna:{_flag(nonna, '--admin-port')}"
        # The URL katyusha starts with is the one the control plane writes: no pod is registered twice.
        assert any(flag.startswith(f"{pod.nonna_url},name={pod.name},") for flag in katyusha)
    [balancer] = processes.balancers()
    assert (balancer.name, balancer.admin) == ("katyusha", f"http://katyusha:{_flag(katyusha, '--admin-port')}")
    assert control["depends_on"] == {"katyusha": {"condition": "service_healthy"}}


def _flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


def test_every_fleet_process_reads_the_admin_token_from_the_secret():
    # In a container the admin ports listen on 0.0.0.0, which no process starts on without a token.
    document = committed(compose.COMPOSE_FILE)
    assert document["secrets"] == {compose.TOKEN_SECRET: {"file": f"./{compose.TOKEN_FILE}"}}
    for name, service in document["services"].items():
        if name == "prometheus":
            assert "secrets" not in service
            continue
        assert service["secrets"] == [compose.TOKEN_SECRET], name
        assert service["command"][-2:] == ["--admin-token-file", SECRET], name
    assert (ROOT / compose.TOKEN_FILE).read_text().strip()


def test_a_new_folder_gets_a_token_of_its_own(tmp_path):
    made = subprocess.run([script("katyusha"), "fleet", "compose", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    token = (tmp_path / compose.TOKEN_FILE).read_text().strip()
    assert len(token) >= 24 and token != (ROOT / compose.TOKEN_FILE).read_text().strip()
    assert (tmp_path / compose.TOKEN_FILE).stat().st_mode & 0o004  # the containers' user reads it


def test_one_service_builds_the_image_the_others_use():
    services = committed(compose.COMPOSE_FILE)["services"]
    fleet = {name: s for name, s in services.items() if name != "prometheus"}
    builders = [name for name, s in services.items() if "build" in s]
    assert len(builders) == 1
    build = services[builders[0]]["build"]
    assert build["args"] == {"BASE_IMAGE": "${BASE_IMAGE:-python:3.11-slim}"}
    assert (ROOT / build["context"] / build["dockerfile"]).is_file()
    assert {s["image"] for s in fleet.values()} == {services[builders[0]]["image"]}
    # The others never look for it in a registry (Docker Compose would, before the build).
    assert all(s.get("pull_policy") == "never" for name, s in fleet.items() if name not in builders)


def test_every_service_has_a_healthcheck_on_its_admin_port():
    services = committed(compose.COMPOSE_FILE)["services"]
    for name, service in services.items():
        test = service["healthcheck"]["test"]
        assert test[0] == "CMD", name
        if name == "prometheus":
            assert "http://127.0.0.1:9090" in test
            continue
        role = service["labels"]["io.katyusha.role"]
        assert test[-1].startswith(f"http://127.0.0.1:{compose.PORTS[role].admin}/"), name
    assert services["katyusha"]["healthcheck"]["test"][-1] == "http://127.0.0.1:9080/healthz"


def test_only_katyusha_control_and_prometheus_publish_ports_admin_ports_on_loopback_only():
    services = committed(compose.COMPOSE_FILE)["services"]
    published = {name: s["ports"] for name, s in services.items() if "ports" in s}
    assert set(published) == {"katyusha", "control", "prometheus"}
    assert published["katyusha"] == [
        "${BIND_ADDRESS:-127.0.0.1}:${KATYUSHA_PORT:-8080}:8080",
        "127.0.0.1:${KATYUSHA_ADMIN_PORT:-9080}:9080",
    ]
    # Admin APIs move pods and take no token yet: loopback, whatever BIND_ADDRESS says.
    assert published["control"] == ["127.0.0.1:${CONTROL_PORT:-9070}:9070"]
    assert published["prometheus"] == ["${BIND_ADDRESS:-127.0.0.1}:${PROMETHEUS_PORT:-9090}:9090"]
    assert services["prometheus"]["profiles"] == ["monitoring"]
    assert all("profiles" not in s for name, s in services.items() if name != "prometheus")


def test_katyusha_gets_longer_to_stop_than_its_drain():
    services = committed(compose.COMPOSE_FILE)["services"]
    grace = services["katyusha"]["stop_grace_period"]
    assert grace.endswith("s") and float(grace[:-1]) > ProxyConfig().shutdown_timeout
    # A longer drain in the fleet file's katyusha args gives a longer grace period.
    spec = build_spec({"katyusha": {"args": ["--shutdown-timeout", "90"]}}, {})
    assert compose.compose_document(spec)["services"]["katyusha"]["stop_grace_period"] == "100s"


def test_pods_that_start_out_of_service_are_left_out_of_katyushas_set():
    spec = build_spec({"pods": 3, "overrides": {"pod-3": {"state": "warmdisk"}}}, {})
    katyusha = compose.compose_document(spec)["services"]["katyusha"]
    assert sum(1 for arg in katyusha["command"] if arg == "--pod") == 2
    assert not any("pod-3" in arg for arg in katyusha["command"])
    assert katyusha["depends_on"]["pod-3-nonna"] == {"condition": "service_started"}
    assert katyusha["depends_on"]["pod-1-nonna"] == {"condition": "service_healthy"}


def test_fleets_compose_cannot_run_are_refused():
    with pytest.raises(compose.ComposeError, match="katyusha.args"):
        compose.compose_document(build_spec({"katyusha": {"args": ["--request-timeout", "soon"]}}, {}))


def test_the_command_names_a_bad_fleet_file(tmp_path):
    bad = tmp_path / "fleet.yaml"
    bad.write_text("katyusha: {args: [--request-timeout, soon]}\n")
    cli = [script("katyusha"), "fleet", "compose", "--fleet", str(bad), "--dir", str(tmp_path)]
    run = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert str(bad) in run.stderr and "katyusha.args" in run.stderr
    assert not (tmp_path / compose.COMPOSE_FILE).exists()


def test_prometheus_scrapes_every_process_of_the_compose_fleet():
    services = committed(compose.COMPOSE_FILE)["services"]
    config = committed(compose.PROMETHEUS_FILE)
    targets = {
        target
        for job in config["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    expected = {
        f"{name}:{compose.PORTS[s['labels']['io.katyusha.role']].admin}"
        for name, s in services.items()
        if name != "prometheus"
    }
    assert targets == expected
    mount = services["prometheus"]["volumes"][0].split(":")
    assert mount[0] == f"./{compose.PROMETHEUS_FILE}" and mount[2] == "ro"
    assert f"--config.file={mount[1]}" in services["prometheus"]["command"]


def _promtool() -> str | None:
    local = ROOT / "build/prometheus/usr/bin/promtool"
    return str(local) if local.exists() else shutil.which("promtool")


@pytest.mark.skipif(_promtool() is None and not os.environ.get("KATYUSHA_COMPOSE_TEST"),
                    reason="needs promtool: `make compose-test` unpacks Debian's prometheus package")  # fmt: skip
def test_promtool_accepts_the_scrape_config():
    promtool = _promtool()
    assert promtool, "promtool is missing: deploy/containers/prometheus-image.sh --unpack-only fetches it"
    run = subprocess.run([promtool, "check", "config", str(ROOT / compose.PROMETHEUS_FILE)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


def test_every_replica_is_a_service_with_its_own_host_ports_and_scrape_target():
    spec = build_spec({"katyusha": {"replicas": 2, "port": 7000}}, {})
    services = compose.compose_document(spec)["services"]
    assert services["katyusha"]["ports"] == [
        "${BIND_ADDRESS:-127.0.0.1}:${KATYUSHA_PORT:-7000}:8080",
        "127.0.0.1:${KATYUSHA_ADMIN_PORT:-8000}:9080",
    ]
    assert services["katyusha-1"]["ports"] == [
        "${BIND_ADDRESS:-127.0.0.1}:${KATYUSHA_PORT_1:-7001}:8080",
        "127.0.0.1:${KATYUSHA_ADMIN_PORT_1:-8001}:9080",
    ]
    assert services["katyusha-1"]["command"] == services["katyusha"]["command"]
    jobs = {job["job_name"]: job for job in compose.prometheus_document(spec)["scrape_configs"]}
    assert jobs["katyusha"]["static_configs"] == [{"targets": ["katyusha:9080", "katyusha-1:9080"]}]
    # The control plane writes both replicas' sets and waits for both.
    replicas = compose.processes_document(spec)["katyusha"]
    assert [(r["name"], r["admin"]) for r in replicas] == [("katyusha", "http://katyusha:9080"),
                                                           ("katyusha-1", "http://katyusha-1:9080")]  # fmt: skip
    assert set(services["control"]["depends_on"]) == {"katyusha", "katyusha-1"}


def test_a_pods_app_reaches_its_container():
    # examples/sentiment-fleet.yaml runs the sentiment app: its containers must run it too.
    spec = load_spec(str(ROOT / "examples" / "sentiment-fleet.yaml"))
    commands = [s["command"] for name, s in compose.compose_document(spec)["services"].items() if name.endswith("-sim")]
    assert commands and all(c[c.index("--app") + 1] == "sentiment" for c in commands)
