"""Fixtures shared by the drop-in tests (WebSockets, streaming, TLS) against tests/edge_servers.py."""

from __future__ import annotations

import pytest

from tests.edge_servers import CHAINS, start_app, start_chain, stop_all


@pytest.fixture(scope="module")
def app():
    """The third-party app (uvicorn + Starlette: echo, WebSocket, SSE), one per test module."""
    proc = start_app()
    yield proc
    proc.terminate()


@pytest.fixture(scope="module", params=CHAINS)
def chain(request, app):
    """katyusha alone, or katyusha and nonna, in front of ``app``: the front process."""
    procs = start_chain(request.param, app.url)
    yield procs[-1]
    stop_all(procs)
