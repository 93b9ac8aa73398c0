"""The live dashboard: one HTML page served by katyusha's admin port and by the control plane.

``GET /dashboard`` is :data:`PAGE` (inline JS and CSS, no CDN, no build
step); the page polls ``GET /dashboard/data`` every second. katyusha's data
comes from :class:`katyusha.dashboard.feed.DashboardFeed` (per-second samples
of counters the request path already keeps); the control plane's from
:mod:`katyusha.dashboard.fleet`, which adds pod states, the autoscaler and
the node view and reads every replica's data. See docs/dashboard.md.
"""

from __future__ import annotations

from importlib.resources import files

PAGE_TYPE = b"text/html; charset=utf-8"


def page() -> bytes:
    """The dashboard page, as shipped in the package."""
    return files(__package__).joinpath("page.html").read_bytes()
