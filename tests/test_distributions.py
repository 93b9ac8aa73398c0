"""Service-time specs: parsing, errors that name the spec, means and sampling."""

import math
import random
import statistics

import pytest

from katyusha.core.distributions import (
    Const,
    Exponential,
    LogNormal,
    Uniform,
    parse_duration,
    parse_service_time,
)
from katyusha.core.errors import ConfigError


@pytest.mark.parametrize(
    "text,seconds", [("100ms", 0.1), ("1.5s", 1.5), ("250us", 250e-6), ("0ms", 0.0), (".5s", 0.5)]
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("const:100ms", Const(0.1)),
        ("exp:20ms", Exponential(0.02)),
        ("lognormal:20ms,0.5", LogNormal(0.02, 0.5)),
        ("uniform:10ms,30ms", Uniform(0.01, 0.03)),
        ("uniform:1s, 2s", Uniform(1.0, 2.0)),
    ],
)
def test_parse_and_round_trip(spec, expected):
    dist = parse_service_time(spec)
    assert dist == expected
    assert parse_service_time(dist.spec) == dist


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "100ms",
        "gauss:10ms",
        "const:100",
        "const:100min",
        "const:-5ms",
        "exp:0ms",
        "exp:10ms,2",
        "uniform:30ms,10ms",
        "uniform:10ms",
        "lognormal:20ms",
        "lognormal:20ms,-1",
        "lognormal:20ms,abc",
    ],
)
def test_bad_specs_name_the_key_and_spec(spec):
    with pytest.raises(ConfigError) as info:
        parse_service_time(spec, key="--service-time")
    assert info.value.key == "--service-time"
    assert repr(spec) in str(info.value) or spec.strip() == ""
    assert info.value.status_hint == 400


@pytest.mark.parametrize(
    "spec,mean",
    [("const:100ms", 0.1), ("exp:20ms", 0.02), ("lognormal:20ms,0.5", 0.02), ("uniform:10ms,30ms", 0.02)],
)
def test_sample_mean_matches_declared_mean(spec, mean):
    dist = parse_service_time(spec)
    assert dist.mean == pytest.approx(mean)
    rng = random.Random(7)
    draws = [dist.sample(rng) for _ in range(20000)]
    assert min(draws) >= 0
    assert statistics.fmean(draws) == pytest.approx(mean, rel=0.05)


def test_lognormal_spec_is_the_mean_not_the_median():
    dist = parse_service_time("lognormal:20ms,0.5")
    assert dist.median == pytest.approx(0.02 * math.exp(-0.125))
    rng = random.Random(3)
    draws = sorted(dist.sample(rng) for _ in range(20000))
    assert draws[len(draws) // 2] == pytest.approx(dist.median, rel=0.05)


def test_uniform_stays_in_bounds_and_seed_repeats():
    dist = parse_service_time("uniform:10ms,30ms")
    first = [dist.sample(random.Random(1)) for _ in range(3)]
    assert first == [dist.sample(random.Random(1)) for _ in range(3)]
    draws = [dist.sample(random.Random(5)) for _ in range(1000)]
    assert all(0.01 <= d <= 0.03 for d in draws)
