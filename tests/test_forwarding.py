"""Forwarding headers and trust: what the app learns about the client, and whose Nonna-* is believed.

The rules in the core (katyusha.core.forwarding), then end to end through real
katyusha and nonna processes in front of an app that echoes what it got.
"""

from __future__ import annotations

import json
import sys
import urllib.request

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from katyusha.core.errors import ConfigError
from katyusha.core.forwarding import Forwarding, parse_trusted_proxies
from tests.katyusha_fleet import admin, katyusha
from tests.procs import Proc, script

SPOOFED = [(b"host", b"shop.example"), (b"x-forwarded-for", b"6.6.6.6"), (b"x-forwarded-for", b"7.7.7.7"),
           (b"x-real-ip", b"6.6.6.6"), (b"forwarded", b"for=6.6.6.6"), (b"x-forwarded-proto", b"https"),
           (b"x-forwarded-host", b"evil.example"), (b"nonna-error", b"upstream-unreachable"),
           (b"via", b"1.0 corp-proxy")]


def as_dict(headers) -> dict[bytes, list[bytes]]:
    out: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        out.setdefault(name, []).append(value)
    return out


def test_an_untrusted_client_s_chain_is_replaced_and_its_real_ip_and_nonna_headers_dropped():
    got = as_dict(Forwarding(parse_trusted_proxies("trusted-proxies", ["10.0.0.0/8"])).rewrite(
        SPOOFED, "203.0.113.9", "http"))
    assert got[b"x-forwarded-for"] == [b"203.0.113.9"]
    assert got[b"x-forwarded-proto"] == [b"http"]
    assert got[b"x-forwarded-host"] == [b"shop.example"]
    assert got[b"forwarded"] == [b"for=203.0.113.9;proto=http;host=shop.example"]
    assert b"x-real-ip" not in got and b"nonna-error" not in got
    assert got[b"host"] == [b"shop.example"]
    assert got[b"via"] == [b"1.0 corp-proxy, 1.1 katyusha"]


def test_requests_that_bring_no_forwarding_headers_each_get_their_own_client_and_host():
    # The headers added for such requests are kept per (client, scheme, host): each
    # request must still get its own, and one with a chain of its own its own too.
    forwarding = Forwarding()
    for _ in range(2):
        a = as_dict(forwarding.rewrite([(b"host", b"a.example")], "203.0.113.9", "http"))
        b = as_dict(forwarding.rewrite([(b"host", b"b.example:8080")], "203.0.113.10", "https"))
        assert a[b"forwarded"] == [b"for=203.0.113.9;proto=http;host=a.example"]
        assert a[b"x-forwarded-host"] == [b"a.example"] and a[b"x-forwarded-proto"] == [b"http"]
        assert b[b"forwarded"] == [b'for=203.0.113.10;proto=https;host="b.example:8080"']
        assert b[b"x-forwarded-for"] == [b"203.0.113.10"] and b[b"via"] == [b"1.1 katyusha"]
        c = as_dict(forwarding.rewrite([(b"host", b"a.example"), (b"via", b"1.0 corp")],
                                       "203.0.113.9", "http"))
        assert c[b"via"] == [b"1.0 corp, 1.1 katyusha"]
        d = as_dict(forwarding.rewrite([], None, "http"))
        assert d[b"x-forwarded-for"] == [b"unknown"] and b"x-forwarded-host" not in d


def test_a_trusted_proxy_s_chain_is_appended_to_as_one_header():
    forwarding = Forwarding(parse_trusted_proxies("trusted-proxies", "10.0.0.0/8, ::1"))
    got = as_dict(forwarding.rewrite(SPOOFED, "10.1.2.3", "https"))
    assert got[b"x-forwarded-for"] == [b"6.6.6.6, 7.7.7.7, 10.1.2.3"]
    assert got[b"x-forwarded-proto"] == [b"https"]  # what the trusted proxy saw
    assert got[b"x-forwarded-host"] == [b"evil.example"]
    assert got[b"forwarded"] == [b"for=6.6.6.6, for=10.1.2.3;proto=https;host=shop.example"]
    assert got[b"x-real-ip"] == [b"6.6.6.6"]
    assert b"nonna-error" not in got  # never from a client, trusted or not
    v6 = as_dict(forwarding.rewrite([(b"host", b"a:8080")], "::1", "http"))
    assert v6[b"forwarded"] == [b'for="[::1]";proto=http;host="a:8080"']


def test_an_empty_x_forwarded_host_from_a_trusted_proxy_gives_way_to_host_or_to_none():
    forwarding = Forwarding(parse_trusted_proxies("trusted-proxies", "10.0.0.0/8"))
    got = forwarding.rewrite([(b"x-forwarded-host", b""), (b"host", b"h")], "10.1.2.3", "http")
    assert as_dict(got)[b"x-forwarded-host"] == [b"h"]
    # No Host either (HTTP/1.0): no X-Forwarded-Host, rather than one with no bytes at all.
    got = forwarding.rewrite([(b"x-forwarded-host", b"")], "10.1.2.3", "http")
    assert all(isinstance(value, bytes) for _, value in got)
    assert b"x-forwarded-host" not in as_dict(got)


def test_https_scheme_is_forwarded_as_https():
    got = as_dict(Forwarding().rewrite([(b"host", b"h")], "1.2.3.4", "https"))
    assert got[b"x-forwarded-proto"] == [b"https"]


@pytest.mark.parametrize("raw", [["10.0.0.0/33"], "not-an-ip", [{"a": 1}]])
def test_bad_trusted_proxies_name_the_entry(raw):
    with pytest.raises(ConfigError) as info:
        parse_trusted_proxies("trusted-proxies", raw)
    assert info.value.key.startswith("trusted-proxies")


@pytest.fixture(scope="module")
def echo_app():
    app = Proc([sys.executable, "-m", "tests.plain_app", "--name", "echo"])
    yield app
    app.kill()


def fetch(url: str, headers: dict[str, str]) -> tuple[dict, dict]:
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=10) as reply:
        return json.loads(reply.read()), {k.lower(): v for k, v in reply.headers.items()}


def echoed(doc: dict) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in doc["headers"]:
        out.setdefault(name, []).append(value)
    return out


SPOOF = {"X-Forwarded-For": "6.6.6.6", "X-Real-IP": "6.6.6.6", "Forwarded": "for=6.6.6.6",
         "Nonna-Error": "upstream-unreachable", "Nonna-Queue-Length": "999", "Host": "shop.example"}


def test_spoofed_forwarding_headers_from_an_untrusted_client_are_replaced(echo_app):
    with katyusha("--pod", f"{echo_app.url},name=echo") as proxy:
        doc, _ = fetch(proxy.url + "/echo", SPOOF)
        got = echoed(doc)
        assert got["x-forwarded-for"] == ["127.0.0.1"]
        assert got["forwarded"] == ["for=127.0.0.1;proto=http;host=shop.example"]
        assert got["host"] == ["shop.example"] and got["x-forwarded-host"] == ["shop.example"]
        assert got["via"] == ["1.1 katyusha"]
        assert "x-real-ip" not in got
        assert not [name for name in got if name.startswith("nonna-")]
        # The client's Nonna-Error did not count as a failure of the pod.
        _, state = admin(proxy, "GET", "/pods")
        row = state["pods"][0]
        assert (row["failures"], row["health"], row["reported_queue"]) == (0, "ok", None)


def test_a_trusted_proxy_s_chain_is_appended(echo_app):
    with katyusha("--pod", f"{echo_app.url},name=echo", "--trusted-proxies", "127.0.0.0/8") as proxy:
        doc, _ = fetch(proxy.url + "/echo", SPOOF)
        got = echoed(doc)
        assert got["x-forwarded-for"] == ["6.6.6.6, 127.0.0.1"]
        assert got["forwarded"] == ["for=6.6.6.6, for=127.0.0.1;proto=http;host=shop.example"]
        assert got["x-real-ip"] == ["6.6.6.6"]
        assert not [name for name in got if name.startswith("nonna-")]


def test_nonna_drops_a_client_s_nonna_headers_and_the_app_s_own(echo_app):
    nonna = Proc([script("nonna"), "--port", "0", "--admin-port", "0", "--upstream", echo_app.url,
                  "--pod", "pod-7", "--concurrency", "4"])
    try:
        # Straight to nonna: the client's Nonna-* never reach the app.
        doc, headers = fetch(nonna.url + "/echo", {**SPOOF, "X-Send-Nonna": "1"})
        assert not [name for name in echoed(doc) if name.startswith("nonna-")]
        # The app answered with Nonna-* headers of its own: nonna dropped them for its report.
        assert headers["nonna-pod"] == "pod-7" and "nonna-error" not in headers
        assert headers["nonna-queue-length"] == "0" and headers["nonna-in-flight"] != "999"
        # Through katyusha: the app's fake report neither marks the pod down nor fills the table.
        with katyusha("--pod", f"{nonna.url},name=pod-7,admin={nonna.admin}") as proxy:
            for _ in range(3):
                fetch(proxy.url + "/echo", {"X-Send-Nonna": "1"})
            _, state = admin(proxy, "GET", "/pods")
            row = state["pods"][0]
            assert (row["failures"], row["health"], row["reported_queue"]) == (0, "ok", 0)
    finally:
        nonna.terminate()
        nonna.kill()


def test_without_nonna_katyusha_still_strips_what_the_app_says_as_nonna_from_clients(echo_app):
    with katyusha("--pod", f"{echo_app.url},name=echo") as proxy:
        _, headers = fetch(proxy.url + "/echo", {"X-Send-Nonna": "1"})
        assert not [name for name in headers if name.startswith("nonna-")]


# -- the fast path's one pass: the same header lines as rewrite, then the hop-by-hop filter --

_NAMES = [b"host", b"x-request-id", b"x-keep", b"x-forwarded-for", b"x-forwarded-proto",
          b"x-forwarded-host", b"forwarded", b"x-real-ip", b"via", b"nonna-queue-length",
          b"connection", b"te", b"keep-alive", b"content-length", b"transfer-encoding", b"accept"]
_VALUES = [b"", b"a", b"svc.example:8080", b"10.0.0.1", b"keep-alive", b"close", b"x-keep", b"0"]


@given(headers=st.lists(st.tuples(st.sampled_from(_NAMES), st.sampled_from(_VALUES)), max_size=8),
       client=st.sampled_from(["10.0.0.7", "192.168.1.2", "::1", None]),
       scheme=st.sampled_from(["http", "https"]))
@settings(max_examples=400, deadline=None)
def test_the_one_pass_to_header_lines_gives_what_rewrite_then_the_filter_give(headers, client, scheme):
    from katyusha.proxy.app import _client_lines, _upstream_lines

    forwarding = Forwarding(parse_trusted_proxies("trusted-proxies", ["10.0.0.0/8"]))
    general = _upstream_lines(forwarding.rewrite(headers, client, scheme))
    one_pass = _client_lines(headers, forwarding, client, scheme)
    names = {name for name, _ in headers}
    if names & {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded",
                b"x-real-ip", b"via"}:
        assert one_pass is None  # left to rewrite
    elif general is None:
        assert one_pass is None
    else:  # the same lines (joined: the pieces may be cut differently)
        assert (b"".join(one_pass[0]), *one_pass[1:]) == (b"".join(general[0]), *general[1:])
    # Asked again (the added lines now come from the cache): the same.
    assert _client_lines(headers, forwarding, client, scheme) == one_pass
