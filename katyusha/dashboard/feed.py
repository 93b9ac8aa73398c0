"""katyusha's side of the dashboard: a 1 s timer sampling each service's counters, and ``/dashboard/data``.

Nothing here runs per request: the timer reads the counters the request path
already keeps (:class:`katyusha.proxy.metrics.ProxyStats`: responses, and
the per-pod latency sketches since the last sample) and the load table as it
is, once a second, just after each whole second of the wall clock, so the
points of several worker processes fall on the same seconds and merge
(:mod:`katyusha.dashboard.view`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from katyusha.dashboard import view
from katyusha.dashboard.samples import DEFAULT_WINDOW_S, ServiceSamples

PERIOD_S = 1.0
_AFTER_TICK_S = 0.005  # sample this long after the whole second, past any rounding


class DashboardFeed:
    """Per-service sample rings over ``services`` (katyusha.proxy.service.LiveService objects)."""

    def __init__(self, services, window_s: int = DEFAULT_WINDOW_S, clock=time.time):
        self.services = services
        self.clock = clock
        self.samples = {live.name: ServiceSamples(window_s) for live in services}
        self._task: asyncio.Task | None = None

    def sample(self, now: float) -> None:
        """Add one point to every service's ring (the timer calls this every second)."""
        for live in self.services:
            stats = live.stats
            self.samples[live.name].add(now, stats.responses, stats.take_recent_latency())

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            self.sample(self.clock())
            # After the first (partial) point, every point spans one whole second of the wall clock.
            await asyncio.sleep(PERIOD_S - (self.clock() % PERIOD_S) + _AFTER_TICK_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def raw(self, only: str | None = None, since: float | None = None) -> dict:
        """``GET /dashboard/raw``: each service as it is now and its points after ``since`` (what worker 0
        gathers from the other workers)."""
        return {"kind": "katyusha-raw", "at": self.clock(),
                "services": [{**self.instant(live), "points": [p.to_json() for p in self.samples[live.name].since(since)]}
                             for live in self.services if only in (None, live.name)]}  # fmt: skip

    def data(self, only: str | None = None) -> dict:
        """``GET /dashboard/data``: every service (or the one named ``only``) with its series, queue and pods."""
        return {"kind": "katyusha", "at": self.clock(), "period_s": PERIOD_S, "workers": 1,
                "services": [view.service([self.instant(live)], self.samples[live.name])
                             for live in self.services if only in (None, live.name)]}  # fmt: skip

    def instant(self, live) -> dict:
        """One service as it is now: policy, L1 queue, pod rows, who drains, cumulative responses."""
        state = live.state()
        pods = [{
            "name": row["name"], "node": row.get("node"), "ready": row.get("ready"),
            "health": row.get("health"), "health_cause": row.get("health_cause"),
            "ejected_until_s": row.get("ejected_until_s"),
            "in_flight": row.get("in_flight"), "reported_queue": row.get("reported_queue"),
            "reported_in_flight": row.get("reported_in_flight"),
            "reported_state": row.get("reported_state"),
            "latency_ewma_ms": row.get("latency_ewma_ms"), "estimated_load": row.get("estimated_load"),
            "failures": row.get("failures"),
        } for row in state["pods"]]  # fmt: skip
        return {"name": live.name, "policy": state["policy"], "ready_pods": state["ready_pods"],
                "queue": state["queue"], "pods": pods,
                "draining": sorted(entry.name for entry in live.core.draining()),
                "responses": [[status, pod, n] for (status, pod), n in live.stats.responses.items()]}
