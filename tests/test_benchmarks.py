"""The benchmarks run from any folder and leave no process behind when stopped."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from katyusha.core.policies import DEFAULT_POLICY, POLICY_NAMES

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# Every benchmark with a command line.
RUNNABLE = ("overhead", "lb_quality", "tail_model", "policy_micro", "coldstart", "placement",
            "forward_micro", "loadgen", "dropin", "chaos", "batch", "calls_per_request",
            "bytecodes_per_request", "live_cost")
# Benchmarks that start processes with helpers from the checkout's tests/ (not installed).
USING_TESTS = ("dropin", "chaos", "batch")


@pytest.mark.parametrize("name", RUNNABLE)
def test_every_benchmark_starts_from_another_folder(name, tmp_path):
    for argv in ([sys.executable, "-m", f"benchmarks.{name}", "--help"],
                 [sys.executable, str(BENCHMARKS / f"{name}.py"), "--help"]):
        done = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"{' '.join(argv[1:])} in {tmp_path}:\n{done.stderr}"
        assert "usage:" in done.stdout


@pytest.mark.parametrize("name", USING_TESTS)
def test_benchmarks_using_test_helpers_find_them_from_another_folder(name, tmp_path):
    # Their process helpers are imported when a run starts, not at --help: import them as a run does.
    code = f"import benchmarks.{name}, tests.procs, tests.plain_app, tests.batch_stack"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_policy_micro_writes_every_policy_at_every_size(tmp_path):
    out = tmp_path / "micro.json"
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "policy_micro.py"), "--runs", "1", "--picks", "100",
         "--pods", "10", "--pods", "10000", "--json", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    assert set(result["pick_us"]) == set(POLICY_NAMES)
    for by_size in result["pick_us"].values():
        assert set(by_size) == {"10", "10000"} and all(us > 0 for us in by_size.values())
    assert result["ratio_vs_round_robin"]["round-robin"] == {"10": 1.0, "10000": 1.0}
    assert result["default_pick_us_at_10k"] == result["pick_us"][DEFAULT_POLICY]["10000"]
    assert "µs per pick" in done.stdout and DEFAULT_POLICY in done.stdout


def _children(pid: int) -> set[int]:
    """Every live descendant of ``pid``, from /proc."""
    parents: dict[int, int] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.skipif(not all(shutil.which(t) or os.path.exists(f"/usr/sbin/{t}")
                            for t in ("nginx", "haproxy", "wrk")),
                    reason="needs nginx, haproxy and wrk (make bench-deps)")
def test_overhead_stops_nginx_when_terminated(tmp_path):
    bench = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.overhead", "--quick", "--duration", "1"],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    children: set[int] = set()
    try:
        assert bench.stdout is not None
        lines = []
        for line in bench.stdout:
            lines.append(line)
            if line.startswith("backend: nginx at"):
                break
        assert lines and lines[-1].startswith("backend: nginx at"), "".join(lines)
        time.sleep(0.5)
        children = _children(bench.pid)
        assert children, "the benchmark runs nginx as its child"
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in children if _alive(pid)], "left running after SIGTERM"
    finally:
        if bench.poll() is None:
            os.killpg(bench.pid, signal.SIGKILL)
            bench.wait(10)
        for pid in children:
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def test_overhead_body_runs_watch_memory_for_the_whole_transfer():
    # The bodies' "flat memory" figure: the watcher must see a process grow
    # after the accept-queue sampler's first seconds as well.
    from benchmarks.overhead import _RssWatch

    grower = subprocess.Popen([sys.executable, "-c",
                               "import time; time.sleep(2.5); b = bytearray(80 << 20); b[::4096] = b'x' * len(b[::4096]); time.sleep(30)"])
    try:
        with _RssWatch(grower.pid) as watch:
            time.sleep(4.0)
        assert watch.growth_mb >= 60
    finally:
        grower.kill()
        grower.wait()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--pin needs 2 cores")
def test_overhead_pin_starts_the_proxy_on_one_core_and_the_load_on_the_others():
    from benchmarks.overhead import Pinning

    cores = sorted(os.sched_getaffinity(0))
    show = [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]

    def started() -> list[int]:
        return json.loads(subprocess.run(show, capture_output=True, text=True, check=True).stdout)

    pinning = Pinning(True)
    with pinning.load():
        assert started() == cores[1:]
        with pinning.proxy():
            assert started() == cores[:1]
        assert started() == cores[1:]
    assert sorted(os.sched_getaffinity(0)) == cores
    with Pinning(False).proxy():
        assert started() == cores


def test_live_cost_reads_a_process_cpu_switches_and_the_machine_segments():
    from benchmarks.live_cost import context_switches, tcp_out_segments
    from benchmarks.peers import cpu_seconds

    user, kernel = cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    assert cpu_seconds(os.getpid())[0] > user and kernel >= 0
    waits, _ = context_switches(os.getpid())
    time.sleep(0.01)
    assert context_switches(os.getpid())[0] > waits
    assert tcp_out_segments() >= 0


def test_bytecodes_per_request_counts_the_whole_fast_path():
    from benchmarks.bytecodes_per_request import count

    figures = count(None, 50, 3)
    # Parse, route, admit, pick, the pod's head, the answer and the end: thousands of
    # bytecodes in tens of frames, every request answered on the fast path (count checks).
    assert 1000 < figures["bytecodes"] < 20000 and 20 < figures["frames"] < 400
    assert len(figures["top"]) == 3 and figures["us_min"] > 0


async def test_bytecodes_per_request_path_reads_a_clock_that_moves_between_request_and_answer():
    # The in-process path reads the benchmark's own clock (the event loop's counts whole
    # milliseconds, where a request takes some 15 µs in process): the time it moves between a
    # request and its answer is the answer's latency in the core's table and in the metrics,
    # as it is live.
    import asyncio

    from benchmarks.bytecodes_per_request import _ANSWER, _REQUEST, _Clock, fast_path

    clock = _Clock(asyncio.get_running_loop())
    server, upstream, to_client, _ = fast_path(clock)
    live = server._config.loaded_app.router.only
    for latency in (0.002, 0.001):
        server.data_received(_REQUEST)
        clock.now += latency
        upstream.data_received(_ANSWER)
    assert to_client.writes == 2
    (entry,) = live.core.table.pods()
    assert abs(entry.latency_ewma_ms - (2.0 + live.core.table.ewma_alpha * (1.0 - 2.0))) < 1e-9
    assert [answer[2] for answer in live.stats._answers] == pytest.approx([0.002, 0.001])


def test_tail_models_clairvoyant_reference_is_first_come_first_served_on_one_pod():
    """On one pod the clairvoyant dispatcher is an M/M/1 queue: its sojourn time is exponential
    with rate mu - lambda, so p99 = ln(100) / (mu - lambda), plus the wire both ways."""
    import math

    from benchmarks import tail_model
    from benchmarks.lb_quality import PodSpec, Scenario

    one = Scenario("one", [PodSpec("pod-0")])  # exp 20 ms: mu 50/s; at half load lambda 25/s
    got = tail_model.clairvoyant(one, load=0.5, seconds=2000.0, seed=3)
    expected = math.log(100) / 25.0 * 1000 + 2 * tail_model.WIRE_S * 1000
    assert abs(got["p99_ms"] - expected) / expected < 0.08, (got, expected)


def test_tail_model_replicas_each_hold_a_pod_to_its_own_cap():
    """Three replicas of a balancer holding each pod to one request do not see each other's
    requests (as three HAProxy processes with maxconn 1): a pod runs up to three at once, so the
    replicas' p99 is above one balancer's on the same pods and arrivals."""
    from benchmarks import tail_model
    from benchmarks.lb_quality import scenarios

    by_name = {s.name: s for s in scenarios()}
    peer = next(s for s in tail_model.SETTINGS if s.name == "peer leastconn maxconn")
    one = tail_model.simulate(by_name["heterogeneous"], peer, seconds=30.0, seed=1)
    three = tail_model.simulate(by_name["replicas"], peer, seconds=30.0, seed=1)
    assert one["requests"] == three["requests"]
    assert three["p99_ms"] > 1.3 * one["p99_ms"], (one, three)


def test_tail_model_one_balancer_reference_pools_the_replicas_view():
    """The reference for several replicas runs their fleet and arrivals behind one balancer:
    one exact view of every pod, under the best of katyusha's settings. On `replicas` it is well
    below the three replicas' defaults (each knowing only its own requests) and names a setting
    that is katyusha's, not a peer model."""
    from benchmarks import tail_model
    from benchmarks.lb_quality import scenarios

    replicas = next(s for s in scenarios() if s.name == "replicas")
    name, p99 = tail_model.one_balancer(replicas, 0.9, 20.0, 1)
    three = tail_model.simulate(replicas, tail_model.SETTINGS[0], seconds=20.0, seed=1)
    assert name in {s.name for s in tail_model.SETTINGS} - {s.name for s in tail_model.PEERS}
    assert p99 < 0.85 * three["p99_ms"], (name, p99, three)


def test_bytecodes_per_request_times_this_tree_against_a_ref_alternately(tmp_path):
    import json

    from benchmarks.bytecodes_per_request import time_against

    path = tmp_path / "against.json"
    assert time_against("HEAD", 1, 50, str(path)) == 0
    figures = json.loads(path.read_text())
    assert figures["against"] == "HEAD" and set(figures["us_min"]) == {"this tree", "HEAD"}
    assert all(len(values) == 1 and values[0] > 0 for values in figures["us_min"].values())
    assert figures["ratio_best"] > 0 and figures["faster_pairs"] in (0, 1)


def test_tail_model_replicas_sharing_pods_cut_the_tail_at_concurrency_above_one():
    """Three replicas in front of pods of concurrency 4 (room 5 each): counting the others'
    requests from the pods' reports (share-pods, the default: a room cut by up to half) keeps
    requests in each replica's L1 rather than queued in nonna behind the others', and p99 falls
    against each replica holding a pod to its own room; one balancer alone is not changed by it."""
    from benchmarks import tail_model
    from benchmarks.lb_quality import scenarios

    by_name = {s.name: s for s in scenarios()}
    shared, alone = tail_model.SETTINGS[0], tail_model.Setting("no sharing", share_pods=False)
    assert shared.share_pods
    replicas = by_name["replicas-concurrency"]
    with_sharing = tail_model.simulate(replicas, shared, seconds=30.0, seed=1)
    without = tail_model.simulate(replicas, alone, seconds=30.0, seed=1)
    assert with_sharing["requests"] == without["requests"]
    assert with_sharing["p99_ms"] < 0.92 * without["p99_ms"], (with_sharing, without)
    one = by_name["concurrency"]
    assert (tail_model.simulate(one, shared, seconds=5.0, seed=1)
            == tail_model.simulate(one, alone, seconds=5.0, seed=1))


def test_sim_scale_reports_the_runs_cpu_time_beside_its_wall_time():
    """A run's CPU time is the simulation's own work (one thread: at most its wall time), so a
    slow wall time on a busy machine can be told from a slower simulator."""
    from benchmarks import sim_scale

    row = sim_scale.run(20, 4, 5, 4000)
    assert row["requests"] > 3000 and row["completed"] == row["requests"] - row["drops"]
    assert 0 < row["cpu_s"] <= row["wall_s"] * 1.02 + 0.01, row


def test_sim_scale_counts_bytecodes_and_frames_a_request_exactly():
    # The measure of a cut that the machine's drift hides: the same count at every run of a tree
    # (each in a fresh process, as the command runs it: a second run in one process finds caches warm).
    code = "import json; from benchmarks import sim_scale; print(json.dumps(sim_scale.bytecodes(20, 4, 5, 400, top=5)))"
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    first, second = (json.loads(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                               capture_output=True, text=True).stdout) for _ in range(2))
    assert first == second
    assert first["requests"] > 300 and first["events"] > 3 * first["requests"]
    assert 500 < first["bytecodes_per_request"] < 50_000 and 10 < first["frames_per_request"] < 1_000
    assert len(first["top"]) == 5
    assert sum(row["bytecodes_per_request"] for row in first["top"]) < first["bytecodes_per_request"]
    assert {"Environment.run", "Environment.at"} & {row["function"] for row in first["top"]}


def test_sim_scale_reports_simfaas_measured_in_the_same_run_and_the_ratio(tmp_path, capsys, monkeypatch):
    """The peer is SimFaaS run here, after each of katyusha's runs: its measured wall time and rate, the
    ratio of katyusha's rate to it in each pair, and katyusha's wall time scaled to the published machine.
    simfaas is in the bench extra, which `make test` installs: CI fails without it."""
    from benchmarks import sim_scale

    if not sim_scale.simfaas_installed():
        if os.environ.get("CI") == "true":
            pytest.fail(f"simfaas is not installed: {sim_scale.SIMFAAS_INSTALL}")
        pytest.skip(f"simfaas is not installed: {sim_scale.SIMFAAS_INSTALL}")
    report = sim_scale.measure(20, 4, 5, 4000, repeats=2, peer_max_time=2000)
    peer = report["simfaas"]
    assert 1500 < peer["requests"] < 2100 and peer["max_time"] == 2000, peer  # 0.9 arrivals a second
    assert peer["requests_per_s"] == pytest.approx(peer["requests"] / peer["wall_s"], rel=0.05)
    assert len(peer["runs_wall_s"]) == len(report["pairs"]) == len(report["runs_wall_s"]) == 2
    assert peer["requests"] == sim_scale.simfaas(2000)["requests"]  # seeded: the same trace each run
    for one, wall in zip(report["pairs"], report["runs_wall_s"], strict=True):
        assert one["katyusha_wall_s"] == wall and one["simfaas_wall_s"] in peer["runs_wall_s"]
        assert one["ratio"] > 0
        speedup = peer["requests"] / one["simfaas_wall_s"] / sim_scale.SIMFAAS_REQUESTS_PER_S
        assert one["derived_wall_s_on_published_machine"] == pytest.approx(wall * speedup, abs=0.06)
    ratios = sorted(p["ratio"] for p in report["pairs"])
    assert report["ratio_to_simfaas_here"] == pytest.approx(sum(ratios) / 2, abs=1e-3)
    assert report["simfaas_requests_per_s"] == 21_429 and "ratio" in report  # the published figure stays
    # The command line prints them and writes them to its JSON (at this small size, not --quick's).
    measure = sim_scale.measure
    monkeypatch.setattr(sim_scale, "measure", lambda *a, repeats, peer_max_time: measure(
        20, 4, 5, 4000, repeats=repeats, peer_max_time=peer_max_time and peer_max_time / 50))
    assert sim_scale.main(["--quick", "--repeats", "2", "--json", str(tmp_path / "scale.json")]) == 0
    printed = capsys.readouterr().out
    assert "SimFaaS 0.2.2 here, its README example (max_time 2000)" in printed, printed
    assert "derived: katyusha's wall time on the machine of SimFaaS's published 42 s" in printed
    written = json.loads((tmp_path / "scale.json").read_text())
    assert written["simfaas"]["max_time"] == 2000 and len(written["pairs"]) == 2
    assert {"ratio_to_simfaas_here", "derived_wall_s_on_published_machine", "ratio"} <= written.keys()


def test_sim_scale_runs_without_the_peer():
    from benchmarks import sim_scale

    report = sim_scale.measure(20, 4, 5, 2000, peer_max_time=None)
    assert report["simfaas"] is None and report["pairs"] == [] and "ratio_to_simfaas_here" not in report
    assert report["requests"] > 1500 and report["simfaas_requests_per_s"] == 21_429
