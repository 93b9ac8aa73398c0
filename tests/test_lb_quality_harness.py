"""The lb_quality harness's pure parts: bursty arrivals, the drawn tune/held-out sets, bootstrap intervals."""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("numpy")

from benchmarks.lb_quality import (  # noqa: E402
    MAX_FLEET_RPS,
    bootstrap,
    drawn_scenarios,
    merge,
    pooled,
    scenarios,
)
from benchmarks.loadgen import mmpp_schedule, poisson_schedule  # noqa: E402


def test_mmpp_keeps_the_mean_rate_and_is_burstier_than_poisson():
    rate, seconds = 200.0, 200.0
    bursty = mmpp_schedule(rate, seconds, random.Random(1))
    plain = poisson_schedule(rate, seconds, random.Random(1))
    assert abs(len(bursty) / seconds - rate) < 0.1 * rate
    assert abs(len(plain) / seconds - rate) < 0.05 * rate

    def dispersion(times):  # variance / mean of counts per 100 ms
        counts = [0] * int(seconds * 10)
        for t in times:
            counts[int(t * 10)] += 1
        mean = sum(counts) / len(counts)
        return sum((c - mean) ** 2 for c in counts) / len(counts) / mean

    assert dispersion(plain) < 1.5 < 3 < dispersion(bursty)


def test_drawn_scenarios_are_fixed_by_the_seed_split_in_halves_and_fit_the_machine():
    first, again = drawn_scenarios(8), drawn_scenarios(8)
    assert [s.describe() for s in first] == [s.describe() for s in again]
    assert [s.split for s in first] == ["tune", "heldout"] * 4
    for scenario in first + scenarios():
        assert scenario.capacity_rps <= MAX_FLEET_RPS * 1.01, scenario.name
    named = {s.name for s in scenarios()}
    assert {"concurrency", "heavy-tail", "bursty", "pods32", "mixed"} <= named


def test_bootstrap_interval_holds_the_estimate_and_narrows_with_agreeing_runs():
    rng = random.Random(3)
    runs = [[rng.expovariate(1 / 20) for _ in range(2000)] for _ in range(5)]
    p99 = pooled(runs, 0.99)
    low, high = bootstrap(runs, 0.99, resamples=200)
    assert low <= p99 <= high
    # A system against itself: the ratio's interval holds 1 (requests are drawn apart within runs).
    low, high = bootstrap(runs, 0.99, runs, resamples=100)
    assert low <= 1.0 <= high
    # Twice as slow: the ratio's interval is around 2.
    slower = [[2 * v for v in run] for run in runs]
    low, high = bootstrap(slower, 0.99, runs, resamples=100)
    assert low <= 2.0 <= high and high - low < 1.0


def _raw(path, seed: int, scale: float) -> str:
    rng = random.Random(seed)
    runs = {"katyusha jsq-piggyback": [], "haproxy leastconn maxconn": []}
    rows = {name: [] for name in runs}
    for _ in range(2):
        base = sorted(rng.expovariate(1 / 20) for _ in range(1000))
        for name, factor in (("katyusha jsq-piggyback", scale), ("haproxy leastconn maxconn", 1.0)):
            runs[name].append([factor * v for v in base])
            rows[name].append({"sent": 1000, "errors": 0.0, "pod_requests": 1000, "per_pod": {}, "p99_ms": 0})
    path.write_text(json.dumps({"noisy": {"90%": {"split": "named", "rate": 360.0, "describe": "",
                                                   "runs": runs, "rows": rows}}}))
    return str(path)


def test_merge_pools_the_rounds_of_several_raw_files(tmp_path):
    out = merge([_raw(tmp_path / "a.json", 1, 0.5), _raw(tmp_path / "b.json", 2, 0.5)])
    cell = out["noisy"]["90%"]
    assert cell["systems"]["katyusha jsq-piggyback"]["runs"] == 4
    ratio = cell["ratios"]["katyusha jsq-piggyback"]["p99"]
    assert ratio["best_peer"] == "haproxy leastconn maxconn" and ratio["ratio"] == 0.5
    assert ratio["ci95"][0] <= 0.5 <= ratio["ci95"][1]
