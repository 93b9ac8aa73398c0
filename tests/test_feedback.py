"""Parsing the load nonna piggybacks on responses: good, missing and garbage headers."""

import math

from hypothesis import given
from hypothesis import strategies as st

from katyusha.core.feedback import MAX_COUNT, Feedback, parse_feedback, parse_server_timing


def h(**headers):
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]


GOOD = h(
    content_type="text/plain",
    nonna_queue_length="3",
    nonna_in_flight="4",
    nonna_concurrency="8",
    nonna_pod="pod-a",
    nonna_node="node-1",
    nonna_state="active",
    server_timing="nonna-queue;dur=1.5, app;dur=20",
)


def test_full_report_is_parsed():
    fb = parse_feedback(GOOD)
    assert fb == Feedback(3, 4, 8, 1.5, 20.0, "pod-a", "node-1", "active")


def test_only_required_headers():
    fb = parse_feedback(h(nonna_queue_length="0", nonna_in_flight="1"))
    assert fb is not None
    assert (fb.queue_length, fb.in_flight) == (0, 1)
    assert fb.concurrency is fb.queue_ms is fb.app_ms is fb.pod is fb.node is None


def test_missing_required_header_gives_none():
    assert parse_feedback(h(nonna_in_flight="1")) is None
    assert parse_feedback(h(nonna_queue_length="1")) is None
    assert parse_feedback([]) is None
    assert parse_feedback(h(content_type="text/plain", server_timing="app;dur=3")) is None


def test_garbage_counts_give_none():
    for bad in ["-1", "1.5", "abc", "", "+3", "1_0", "0x10", str(MAX_COUNT + 1), "9" * 40, "\u0661"]:
        assert parse_feedback(h(nonna_queue_length=bad, nonna_in_flight="1")) is None, bad
        assert parse_feedback(h(nonna_queue_length="1", nonna_in_flight=bad)) is None, bad


def test_whitespace_around_counts_is_tolerated():
    fb = parse_feedback(h(nonna_queue_length=" 2 ", nonna_in_flight="\t5"))
    assert fb is not None and (fb.queue_length, fb.in_flight) == (2, 5)


def test_garbage_optional_headers_become_none():
    fb = parse_feedback(
        h(
            nonna_queue_length="1",
            nonna_in_flight="2",
            nonna_concurrency="lots",
            nonna_pod="",
            server_timing="app;dur=NaN, nonna-queue;dur=-4",
        )
    )
    assert fb is not None
    assert fb.concurrency is None and fb.pod is None
    assert fb.app_ms is None and fb.queue_ms is None


def test_non_bytes_headers_give_none_not_an_exception():
    assert parse_feedback([("nonna-queue-length", "1"), ("nonna-in-flight", "1")]) is None
    assert parse_feedback([(b"nonna-queue-length", None), (b"nonna-in-flight", b"1")]) is None


def test_server_timing_entries():
    assert parse_server_timing("nonna-queue;dur=1.2, app;dur=20.0") == {"nonna-queue": 1.2, "app": 20.0}
    assert parse_server_timing(b'app;desc="x";dur="7"') == {"app": 7.0}
    assert parse_server_timing("miss, db;dur=abc, app;dur=2, app;dur=9, cpu;dur=inf") == {"app": 2.0}
    assert parse_server_timing("") == {}


header_names = st.sampled_from(
    [b"nonna-queue-length", b"nonna-in-flight", b"nonna-concurrency", b"nonna-pod",
     b"nonna-node", b"nonna-state", b"server-timing", b"x-other"]
) | st.binary(max_size=30)


@given(st.lists(st.tuples(header_names, st.binary(max_size=60)), max_size=12))
def test_parse_feedback_never_raises(headers):
    fb = parse_feedback(headers)
    if fb is not None:
        assert 0 <= fb.queue_length <= MAX_COUNT and 0 <= fb.in_flight <= MAX_COUNT
        for ms in (fb.queue_ms, fb.app_ms):
            assert ms is None or (math.isfinite(ms) and ms >= 0)


@given(st.text(max_size=200) | st.binary(max_size=200))
def test_parse_server_timing_never_raises(value):
    for duration in parse_server_timing(value).values():
        assert math.isfinite(duration) and duration >= 0
