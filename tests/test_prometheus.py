"""Prometheus for real: the shipped rules and configs pass promtool, and `katyusha fleet up --prometheus`
runs Debian's Prometheus scraping every process, whose HTTP API then answers rate() of katyusha's
request counter and the recording rules.

promtool and prometheus come from `make system-deps`; without them these tests are skipped, except
under CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from katyusha.fleet.prometheus import rules_text, scrape_document
from tests.procs import FleetUp, script, wait_for

ROOT = Path(__file__).resolve().parent.parent
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    (PROMTOOL is None or PROMETHEUS is None) and os.environ.get("CI") != "true",
    reason="needs Debian's prometheus package (make system-deps)")  # fmt: skip

FLEET_YAML = """
nodes: 2
pods: 2
katyusha:
  port: 0
  admin_port: 0
runner:
  poll_interval_s: 0.2
  stop_timeout_s: 10
defaults:
  service_time: const:1ms
  concurrency: 4
"""


def _promtool(*args: str) -> str:
    run = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout + run.stderr


def test_the_compose_rules_are_the_shipped_rules():
    assert (ROOT / "deploy/prometheus/rules.yml").read_text() == rules_text()
    assert yaml.safe_load((ROOT / "deploy/prometheus/compose.yml").read_text())["rule_files"] == ["rules.yml"]


@needs_prometheus
def test_promtool_accepts_the_rules_and_both_configs(tmp_path):
    assert "SUCCESS: 8 rules found" in _promtool("check", "rules", str(ROOT / "deploy/prometheus/rules.yml"))
    assert "SUCCESS" in _promtool("check", "config", str(ROOT / "deploy/prometheus/compose.yml"))
    proc = {"admin": "http://127.0.0.1:9001"}
    document = {"katyusha": [{"name": "katyusha-0", **proc}], "control": proc,
                "pods": [{"name": "pod-1", "node": "node-1", "sim": proc, "nonna": proc}]}  # fmt: skip
    (tmp_path / "rules.yml").write_text(rules_text())
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(scrape_document(document)))
    assert "SUCCESS" in _promtool("check", "config", str(tmp_path / "prometheus.yml"))


def _query(base: str, expr: str) -> list:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        doc = json.loads(response.read())
    assert doc["status"] == "success", doc
    return doc["data"]["result"]


@needs_prometheus
def test_fleet_up_prometheus_scrapes_every_process_and_answers_rate(tmp_path):
    fleet = FleetUp(tmp_path, FLEET_YAML, "--prometheus")
    try:
        doc = fleet.wait_ready(60)
        base = re.search(r"^prometheus: (\S+)", fleet.output, re.M).group(1)

        def targets() -> list:
            with urllib.request.urlopen(f"{base}/api/v1/targets", timeout=5) as response:
                return json.loads(response.read())["data"]["activeTargets"]

        # katyusha, the control plane, and a nonna and a sim-backend per pod, every one up.
        wait_for(lambda: len(targets()) == 2 + 2 * len(doc["pods"]), 15, "every process a target")
        wait_for(lambda: all(t["health"] == "up" for t in targets()), 15, "every target up")
        deadline = time.monotonic() + 30
        rate = recorded = None
        while time.monotonic() < deadline and not (rate and recorded):
            for _ in range(50):
                urllib.request.urlopen(doc["url"] + "/", timeout=5).read()
            rate = _query(base, 'sum(rate(katyusha_requests_total{service="default"}[5s]))')
            rate = rate and float(rate[0]["value"][1]) > 0
            recorded = _query(base, "service:katyusha_requests:rate1m")
            recorded = recorded and float(recorded[0]["value"][1]) > 0
            time.sleep(0.5)
        assert rate, "rate(katyusha_requests_total[5s]) stayed 0\n" + fleet.output
        assert recorded, "the recording rule service:katyusha_requests:rate1m has no value"
        assert _query(base, 'up{job="sim-backend"}') and _query(base, "katyusha_l1_queue_length")
    finally:
        assert fleet.stop() == 0, fleet.output


def test_fleet_up_prometheus_without_prometheus_says_what_to_install(tmp_path):
    (tmp_path / "fleet.yaml").write_text(FLEET_YAML)
    env = {**os.environ, "PATH": str(Path(script("katyusha")).parent)}
    run = subprocess.run([script("katyusha"), "fleet", "up", "--prometheus", "--fleet", str(tmp_path / "fleet.yaml")],
                         capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
    assert run.returncode == 2
    assert "apt-get install prometheus" in run.stderr and "make system-deps" in run.stderr
