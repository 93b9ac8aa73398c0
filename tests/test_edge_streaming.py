"""Streaming through katyusha, and katyusha and nonna: Server-Sent Events from Starlette on uvicorn,
and a 50 MB static file from nginx.

Each event must reach the client as soon as the app sends it (nothing holds
the body back or coalesces chunks behind a timer), and the request holds its
pod's in-flight count until the stream ends.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
from pathlib import Path

import pytest

from benchmarks.peers import nginx_static, require
from tests.edge_servers import CHAINS, start_chain, stop_all
from tests.procs import get_json


def open_stream(url: str, path: str) -> http.client.HTTPResponse:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    conn.request("GET", path, headers={"Accept": "text/event-stream"})
    return conn.getresponse()


def test_each_server_sent_event_arrives_when_sent(chain):
    response = open_stream(chain.url, "/sse?n=6&gap=0.2")
    assert response.status == 200
    assert response.getheader("content-type").startswith("text/event-stream")
    lags, arrivals = [], []
    in_flight_during = None
    for raw in response:
        if not raw.startswith(b"data: "):
            continue
        event = json.loads(raw[6:])
        now = time.time()
        lags.append(now - event["sent"])
        arrivals.append(now)
        if event["i"] == 2:
            in_flight_during = sum(row["in_flight"] for row in get_json(chain.admin + "/pods")["pods"])
    response.close()
    assert len(lags) == 6
    # The first event within 300 ms of its being sent, and every other as well.
    assert lags[0] < 0.3, lags
    assert max(lags) < 0.3, lags
    # They came one by one, about 200 ms apart, not all at the end.
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
    assert min(gaps) > 0.1, gaps
    # The stream held its pod's in-flight count while it ran, and gave it back at its end.
    assert in_flight_during == 1
    for _ in range(40):
        if sum(row["in_flight"] for row in get_json(chain.admin + "/pods")["pods"]) == 0:
            break
        time.sleep(0.05)
    assert sum(row["in_flight"] for row in get_json(chain.admin + "/pods")["pods"]) == 0


@pytest.fixture(scope="module")
def big_file(tmp_path_factory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("static") / "big.bin"
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(50):
            block = os.urandom(1 << 20)
            out.write(block)
            digest.update(block)
    return path, digest.hexdigest()


@pytest.fixture(scope="module")
def nginx(big_file):
    try:
        require("nginx")
    except SystemExit as exc:  # pragma: no cover - make test-deps installs it
        pytest.fail(str(exc))
    with nginx_static(files={"big.bin": str(big_file[0])}) as running:
        yield running


@pytest.mark.parametrize("kind", CHAINS)
def test_fifty_megabytes_from_nginx_arrive_byte_exact(nginx, big_file, kind):
    procs = start_chain(kind, nginx.url)
    try:
        response = open_stream(procs[-1].url, "/files/big.bin")
        assert response.status == 200
        assert response.getheader("content-length") == str(50 << 20)
        digest = hashlib.sha256()
        size = 0
        while block := response.read(1 << 20):
            digest.update(block)
            size += len(block)
        response.close()
        assert size == 50 << 20
        assert digest.hexdigest() == big_file[1]
    finally:
        stop_all(procs)
