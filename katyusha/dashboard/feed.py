"""katyusha's side of the dashboard: a 1 s timer sampling each service's counters, and ``/dashboard/data``.

Nothing here runs per request: the timer reads the counters the request path
already keeps (:class:`katyusha.proxy.metrics.ProxyStats`) and the load
table as it is, once a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

from katyusha.dashboard.samples import DEFAULT_WINDOW_S, ServiceSamples

PERIOD_S = 1.0
SERIES_S = 180  # seconds of history each /dashboard/data answer carries
RATE_S = 3  # the rates shown as figures (service and pods alike) are means over this many seconds


class DashboardFeed:
    """Per-service sample rings over ``services`` (katyusha.proxy.service.LiveService objects)."""

    def __init__(self, services, window_s: int = DEFAULT_WINDOW_S):
        self.services = services
        self.samples = {live.name: ServiceSamples(live.stats.upstream_latency.bounds, window_s)
                        for live in services}  # fmt: skip
        self._task: asyncio.Task | None = None

    def sample(self, now: float) -> None:
        """Add one point to every service's ring (the timer calls this every second)."""
        for live in self.services:
            stats = live.stats
            self.samples[live.name].add(now, stats.responses, stats.upstream_latency.counts)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.sample(loop.time())
            await asyncio.sleep(PERIOD_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def data(self, only: str | None = None) -> dict:
        """``GET /dashboard/data``: every service (or the one named ``only``) with its series, queue and pods."""
        return {"kind": "katyusha", "at": time.time(), "period_s": PERIOD_S,
                "services": [self.service(live) for live in self.services if only in (None, live.name)]}  # fmt: skip

    def service(self, live) -> dict:
        samples = self.samples[live.name]
        state = live.state()
        draining = {entry.name for entry in live.core.draining()}
        errors: dict[str, int] = {}
        requests: dict[str, int] = {}
        for (status, pod), count in live.stats.responses.items():
            if status >= 400:
                errors[str(status)] = errors.get(str(status), 0) + count
            if pod:
                requests[pod] = requests.get(pod, 0) + count
        pods = []
        for row in state["pods"]:
            name = row["name"]
            pods.append({
                "name": name, "node": row.get("node"), "ready": row.get("ready"),
                "health": row.get("health"), "health_cause": row.get("health_cause"),
                "ejected_until_s": row.get("ejected_until_s"), "draining": name in draining,
                "in_flight": row.get("in_flight"), "reported_queue": row.get("reported_queue"),
                "reported_in_flight": row.get("reported_in_flight"),
                "reported_state": row.get("reported_state"),
                "latency_ewma_ms": row.get("latency_ewma_ms"), "estimated_load": row.get("estimated_load"),
                "rps": round(samples.pod_rps(name, RATE_S), 2), "requests": requests.get(name, 0),
                "failures": row.get("failures"),
            })  # fmt: skip
        # A pod being drained has left the table but still answers what it holds.
        for name in sorted(draining - {p["name"] for p in pods}):
            pods.append({"name": name, "draining": True, "ready": False, "rps": round(samples.pod_rps(name, RATE_S), 2)})
        queue = state["queue"]
        return {
            "name": live.name, "policy": state["policy"], "ready_pods": state["ready_pods"],
            "queue": queue, "l1_waiting": queue.get("waiting"), "l1_active": queue.get("active"),
            "rps": _round(samples.recent("rps", RATE_S)), "p50_ms": _round(samples.recent("p50_ms", 5)),
            "p99_ms": _round(samples.recent("p99_ms", 5)), "errors_by_status": errors,
            "requests": sum(requests.values()), "pods": pods, "series": samples.series(SERIES_S),
        }  # fmt: skip


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
