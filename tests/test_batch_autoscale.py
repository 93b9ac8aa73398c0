"""A batch through sentiment pods the fleet autoscales on requests per second, from zero and back.

The fleet file's pod setting ``app`` (every sim-backend gets ``--app``) is
checked first without processes; then one real fleet (``katyusha fleet up``
with sentiment pods that start null and cold-start with real delays) takes a
batch of 9,000 rows at ``max-in-flight: 6``: every row is written once with
VADER's scores, the batch is served by more than one pod, and the fleet goes
back to zero pods afterwards.

Why the test's fleet file differs from examples/sentiment-fleet.yaml: with
the example's target (200 rps a pod, 140 with the 70% utilization) how far a
batch scales out depends on how fast this shared 2-core machine runs it, and
its 3 s cold starts and 30 s grace period would make the test a minute longer.
Here the target is 20 rps a pod, so any batch asks for every slot (max-scale
4), cold starts take 0.5 s, the grace period 2 s and a tick 0.5 s. The batch
must outlast nonna's 2 s rate period, a tick and a cold start after the first
pod is up: measured, the first pod served 2,800-3,700 of the 9,000 rows alone
before the others joined (with and without a busy loop on one core).
"""

from __future__ import annotations

import threading
import urllib.request
from pathlib import Path

import pytest

from katyusha.core.errors import ConfigError
from katyusha.fleet.spec import build_spec, load_spec
from tests.batch_stack import SCORES, Driver, batch_file, sqlite_rows, sqlite_table, tweets
from tests.procs import FleetUp, get_json, wait_for

pytestmark = pytest.mark.timeout(300)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "sentiment-fleet.yaml"

FLEET_YAML = """
nodes: 2
pods: 4
katyusha:
  port: 0
  admin_port: 0
autoscale: true
autoscaler:
  initial-scale: 0
  allow-zero-initial-scale: true
  scale-to-zero-grace-period: 2s
  tick-interval: 0.5s
runner:
  poll_interval_s: 0.2
services:
  - name: sentiment
    annotations:
      autoscaling.knative.dev/metric: rps
      autoscaling.knative.dev/window: 6s
      autoscaling.knative.dev/target: "20"
      autoscaling.knative.dev/max-scale: "4"
groups:
  - name: sentiment
defaults:
  app: sentiment
  concurrency: 1
  image_size_mb: 10
  pull_mbps: 40        # 0.25 s pull
  start_s: 0.25        # + 0.25 s start: a 0.5 s cold start from null
"""

ROWS = 9_000


# -- the fleet file's `app` ------------------------------------------------------------


def test_app_is_set_by_defaults_groups_and_overrides_in_that_order():
    spec = build_spec({
        "pods": 3,
        "defaults": {"app": "sentiment"},
        "groups": [{"name": "vader", "count": 2}, {"name": "plain", "app": "emulated"}],
        "overrides": {"vader-2": {"app": "emulated"}, "plain-1": {"app": "sentiment"}},
    }, {})  # fmt: skip
    assert {pod.name: pod.params.app for pod in spec.pods} == {
        "vader-1": "sentiment", "vader-2": "emulated", "plain-1": "sentiment"}
    assert {pod.params.app for pod in build_spec({}, {}).pods} == {"emulated"}


@pytest.mark.parametrize("doc, path, message", [
    ({"defaults": {"app": "vader"}}, "defaults.app", "'vader' is not one of emulated, sentiment"),
    ({"groups": [{"name": "a", "app": "sentimental"}]}, "groups[0].app", "'sentimental' is not one of"),
    ({"pods": 2, "overrides": {"pod-2": {"app": 3}}}, "overrides.pod-2.app", "must be a non-empty string"),
])  # fmt: skip
def test_an_unknown_app_names_its_path_and_the_apps(doc, path, message):
    with pytest.raises(ConfigError) as caught:
        build_spec(doc, {})
    assert caught.value.key == path
    assert message in str(caught.value)


def test_the_example_fleet_file_has_the_seeds_settings():
    spec = load_spec(EXAMPLE)
    [(service, kpa)] = spec.scaling().items()
    assert (kpa.metric, kpa.stable_window, kpa.target, kpa.max_scale) == ("rps", 6.0, 200.0, 10)
    assert (kpa.initial_scale, spec.autoscaler.enabled) == (0, True)
    assert len(spec.pods) == 10
    assert {(pod.params.app, pod.params.state) for pod in spec.pods} == {("sentiment", "null")}


# -- end to end ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    up = FleetUp(tmp_path_factory.mktemp("batch-autoscale"), FLEET_YAML)
    try:
        up.wait_ready(120)
        yield up
    finally:
        up.stop()


def pods_view(fleet) -> dict:
    return get_json(fleet.doc["control"]["admin"] + "/autoscaler")["pods"]


def answered_200(nonna_admin: str) -> float:
    """The 200 responses a pod's nonna has sent (its Prometheus counter)."""
    with urllib.request.urlopen(nonna_admin + "/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("nonna_requests_total{") and 'code="200"' in line)


def test_a_batch_scales_the_sentiment_service_out_from_zero_and_back(fleet, tmp_path):
    states = {name: fleet.state(name)["state"] for name in fleet.pods}
    assert set(states.values()) == {"null"}, states
    assert pods_view(fleet)["serving"] == 0

    rows = tweets(ROWS)
    sqlite_table(tmp_path / "in.db", rows)
    out = tmp_path / "out.db"
    config = batch_file(tmp_path / "b.yaml", fleet.doc["url"],
                        {"sqlite": {"path": str(tmp_path / "in.db"), "table": "tweets"}},
                        {"sqlite": {"path": str(out), "table": "sentiment", "columns": SCORES}},
                        **{"max-in-flight": 6})

    most = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            most[0] = max(most[0], pods_view(fleet)["serving"])

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    driver = Driver(config)
    try:
        status = driver.wait(timeout=240)
    finally:
        done.set()
        watcher.join()
    assert status == 0, driver.output + fleet.output[-4000:]

    got = sqlite_rows(out, "SELECT id, compound FROM sentiment ORDER BY id")
    assert [id_ for id_, _ in got] == [id_ for id_, _ in rows]
    assert driver.summary["dead_letters"] == 0
    # The pods ran VADER (the fleet file's `app`): "great" scores positive, "awful" negative.
    compound = dict(got)
    assert (rows[7][1].endswith("great"), rows[0][1].endswith("awful")) == (True, True)
    assert compound[8] > 0.3 and compound[1] < -0.3, (compound[8], compound[1])

    # Scaled out while the batch ran: more than one pod served it.
    served = {name: answered_200(pod["nonna"]["admin"]) for name, pod in fleet.pods.items()}
    assert most[0] >= 2 and sum(1 for n in served.values() if n) >= 2, (most[0], served)
    assert sum(served.values()) == ROWS
    view = get_json(fleet.doc["control"]["admin"] + "/autoscaler")
    assert view["cold_starts"]["total"] >= 2, view

    # And back to zero once the traffic is gone: every pod drained and retired.
    wait_for(lambda: pods_view(fleet)["serving"] + pods_view(fleet)["waking"] == 0, 90, "zero pods")
    wait_for(lambda: get_json(fleet.doc["katyusha"][0]["admin"] + "/demand")["ready_pods"] == 0, 10,
             "katyusha's set emptied")
    wait_for(lambda: {fleet.state(name)["state"] for name in fleet.pods} == {"warmdisk"}, 30,
             "every pod retired to warmdisk")
