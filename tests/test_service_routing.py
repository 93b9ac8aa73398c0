"""Routing a request to a service: Host (port ignored, any case), then the longest path prefix."""

from __future__ import annotations

import pytest

from katyusha.core.errors import ConfigError
from katyusha.core.routing import Router, normalise_host, prefix_matches
from katyusha.proxy import config
from katyusha.proxy.services_config import ServiceSpec


def router() -> Router[str]:
    return Router([
        ("shop", ["shop.local", "www.shop.local"], "/"),
        ("shop-api", ["shop.local"], "/api"),
        ("shop-api-v2", ["shop.local"], "/api/v2/"),
        ("catch", [], "/"),
        ("metrics", [], "/metrics"),
    ])


@pytest.mark.parametrize("host, path, expected", [
    (b"shop.local", "/", "shop"),
    (b"SHOP.local:8080", "/cart", "shop"),
    (b"shop.local.", "/cart", "shop"),
    (b"shop.local", "/api", "shop-api"),
    (b"shop.local", "/api/users", "shop-api"),
    (b"shop.local", "/apix", "shop"),
    (b"shop.local", "/api/v2/x", "shop-api-v2"),
    (b"www.shop.local:80", "/api", "shop"),
    (b"other", "/", "catch"),
    (None, "/metrics/x", "metrics"),
    (b"[::1]:8080", "/metricsx", "catch"),
])
def test_host_then_longest_prefix(host, path, expected):
    assert router().match(host, path) == expected


def test_no_match_and_no_fall_through_from_a_named_host():
    only_hosts = Router([("a", ["a.local"], "/api")])
    assert only_hosts.match(b"a.local", "/") is None
    assert only_hosts.match(b"b.local", "/api") is None
    mixed = Router([("a", ["a.local"], "/api"), ("any", [], "/")])
    # a.local's group is final, as in Envoy and nginx.
    assert mixed.match(b"a.local", "/other") is None
    assert mixed.match(b"b.local", "/other") == "any"


def test_the_usual_single_service_is_matched_without_reading_the_host():
    single = Router([("default", [], "/")])
    assert single.only == "default" and single.match(None, "/x") == "default"
    assert router().only is None


def test_two_services_on_one_host_and_prefix_are_refused():
    with pytest.raises(ConfigError, match="'a.local'"):
        Router([("a", ["a.local"], "/"), ("b", ["A.local"], "/")])
    with pytest.raises(ConfigError, match=r"'\*'"):
        Router([("a", [], "/x"), ("b", [], "/x")])


def test_helpers():
    assert normalise_host("Example.COM:443") == "example.com"
    assert normalise_host("[::1]:80") == "[::1]"
    assert prefix_matches("/", "/anything") and prefix_matches("/a/", "/a/b")
    assert not prefix_matches("/a", "/ab") and prefix_matches("/a", "/a")


def test_services_settings_inherit_and_override_the_global_ones():
    cfg = config.validate({
        "policy": "p2c", "request-timeout": "5", "katyusha-junbanmachi-concurrent-request": "50",
        "services": [
            {"name": "a", "hosts": ["A.local"], "pods": ["http://127.0.0.1:1,name=p"]},
            {"name": "b", "path-prefix": "/b", "policy": "round-robin", "queue-length": 3,
             "katyusha-junbanmachi-concurrent-request": 2, "request-timeout": "250ms",
             "pod-capacity-factor": 0},
        ],
    })
    a, b = cfg.service_specs
    assert a.hosts == ("a.local",) and a.pods[0].name == "p" and cfg.default_service == "a"
    sa, sb = cfg.service_settings(a), cfg.service_settings(b)
    assert (sa.policy, sa.l1_limit, sa.request_timeout, sa.queue_length) == ("p2c", 50, 5.0, 10_000)
    assert (sb.policy, sb.l1_limit, sb.request_timeout, sb.queue_length, sb.capacity_factor) == (
        "round-robin", 2, 0.25, 3, 0.0)
    # The seed's switches still win over a service's own keys.
    off = config.validate({"katyusha-enable-fukabunsan": "false", "katyusha-enable-junbanmachi": "false",
                           "services": [{"name": "b", "policy": "p2c",
                                         "katyusha-junbanmachi-concurrent-request": 2}]})
    settings = off.service_settings(off.service_specs[0])
    assert (settings.policy, settings.l1_limit) == ("round-robin", None)
    # Without services: one service "default" from the global keys; round-trips through /config.
    plain = config.validate({"pods": ["http://127.0.0.1:1"]})
    assert [s.name for s in plain.service_specs] == ["default"] and plain.default_service == "default"
    view = cfg.to_json()
    view.pop("effective")
    assert config.validate(view) == cfg


def test_services_given_as_a_string_and_priority_settings():
    cfg = config.validate({"services": '[{name: x, hosts: [x.local]}]',
                           "priority-header": "X-Priority", "priority-classes": "3"})
    assert cfg.service_specs == (ServiceSpec(name="x", hosts=("x.local",)),)
    assert cfg.priority_header == "x-priority"
    assert cfg.service_settings(cfg.service_specs[0]).priority_classes == 3
    assert config.validate({}).service_settings(ServiceSpec("d")).priority_classes == 1
    with pytest.raises(ConfigError, match="services"):
        config.validate({"services": "{name: [}"})
    with pytest.raises(ConfigError, match="priority-classes"):
        config.validate({"priority-classes": "1"})
