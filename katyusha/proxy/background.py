"""Work katyusha does off the request path: demand notifications, prequal's load probes, health probes.

All talk to control-plane, admin or pod endpoints through the project's HTTP
client, never block a request, and are bounded: at most one demand POST per
``min_interval`` and one probe of each kind in flight per pod. What to probe
and when is the core's decision (katyusha.core.health); the
:class:`HealthChecker` only runs the probes and reports their results.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from katyusha.core.health import Probe
from katyusha.deadline_timer import DeadlineTimer
from katyusha.http import PoolSet, UpstreamError
from katyusha.proxy.service import LiveService

log = logging.getLogger("katyusha")


def _origin_and_path(url: str) -> tuple[str, bytes]:
    parts = urlsplit(url)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return f"{parts.scheme}://{parts.netloc}", path.encode()


class DemandNotifier:
    """POSTs ``demand()`` JSON to ``url`` when asked, fire-and-forget, at most once per ``min_interval``.

    A call inside the interval is not lost: one trailing POST is sent at its
    end, so the control plane always sees the latest demand.
    """

    def __init__(
        self, url: str, demand: Callable[[], dict], pools: PoolSet, *,
        min_interval: float = 0.1, timeout: float = 2.0, token: str | None = None,
    ):
        self.origin, self.path = _origin_and_path(url)
        # The fleet's admin token, for a control plane that asks for one.
        self.headers = [(b"content-type", b"application/json")]
        if token:
            self.headers.append((b"authorization", b"Bearer " + token.encode()))
        self.demand = demand
        self.pools = pools
        self.min_interval = min_interval
        self.timeout = timeout
        self.sent = 0
        self.failed = 0
        self._last = -float("inf")
        self._task: asyncio.Task | None = None
        self._trailing = False

    def __call__(self) -> None:
        if self._task is not None and not self._task.done():
            self._trailing = True
            return
        self._task = asyncio.get_running_loop().create_task(self._post_soon())

    async def _post_soon(self) -> None:
        while True:
            wait = self._last + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            self._trailing = False
            self._last = time.monotonic()
            await self._post()
            if not self._trailing:
                return

    async def _post(self) -> None:
        body = json.dumps(self.demand()).encode()
        try:
            pool = self.pools.get(self.origin)
            response = await pool.request(b"POST", self.path, self.headers, body, timeout=self.timeout)
            async with response:
                await response.read()
            self.sent += 1
        except (UpstreamError, ValueError, OSError) as exc:
            self.failed += 1
            log.warning("demand POST to %s failed: %s", self.origin, exc)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class Prober:
    """Asks nonna's admin ``/stats`` of a few pods each tick and feeds ``policy.observe_probe``.

    Runs for the services whose policy has ``observe_probe`` (prequal). Every
    ``1 / rate`` seconds it probes, in each such service, the pods the policy
    asks for (``probe_targets``: two, preferring pods with no live probe),
    else every ready pod with an admin URL; at most one probe is in flight
    per pod. So a service sees about ``2 * rate`` probes a second in all,
    each of its N pods about ``2 * rate / N`` (at most ``rate``).
    """

    def __init__(self, services: list[LiveService], pools: PoolSet, *, rate: float,
                 timeout: float = 0.5):
        self.services = [live for live in services if hasattr(live.core.policy, "observe_probe")]
        self.pools = pools
        self.interval = 1.0 / rate
        self.timeout = timeout
        self.probes = 0
        self.failures = 0
        self._busy: set[tuple[str, str]] = set()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.services:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            for live in self.services:
                self._tick(live)

    def _tick(self, live: LiveService) -> None:
        core = live.core
        candidates = [e for e in core.table.ready() if core.admin_url(e.name)]
        if not candidates:
            return
        targets = getattr(core.policy, "probe_targets", None)
        chosen = targets(candidates, live.now(), 2) if targets else candidates
        for entry in chosen:
            key = (live.name, entry.name)
            if key not in self._busy:
                self._busy.add(key)
                asyncio.get_running_loop().create_task(self._probe(live, entry, key))

    async def _probe(self, live: LiveService, entry, key: tuple[str, str]) -> None:
        core = live.core
        try:
            admin = core.admin_url(entry.name)
            if not admin:
                return
            started = time.monotonic()
            response = await self.pools.get(admin.rstrip("/")).request(
                b"GET", b"/stats", [], None, timeout=self.timeout
            )
            async with response:
                stats = json.loads(await response.read() or b"{}")
            rtt_ms = (time.monotonic() - started) * 1000.0
            rif = _count(stats, "queue_length") + _count(stats, "in_flight")
            # Before nonna has timed a request it reports no latency: the pod's
            # recent latency as katyusha measured it stands in, then the round trip.
            known = entry.latency_ewma_ms
            latency_ms = _number(stats, "latency_ms")
            if latency_ms is None:
                latency_ms = rtt_ms if known is None else known
            app_ms = _number(stats, "app_ewma_ms")
            concurrency = _count(stats, "concurrency")
            step_ms = app_ms / concurrency if app_ms is not None and concurrency else None
            core.policy.observe_probe(entry, live.now(), rif, latency_ms, step_ms)
            self.probes += 1
        except (UpstreamError, ValueError, OSError, TypeError):
            self.failures += 1
        finally:
            self._busy.discard(key)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


class HealthChecker:
    """Runs the health probes each service's core asks for, and reports their results.

    One timer per service follows ``core.next_health_deadline()``; when it
    fires, every probe ``core.health_due(now)`` names is started as its own
    task, bounded by ``timeout``: nonna's admin ``/healthz`` or the pod's
    health path (a 2xx answer is healthy), or a TCP connect.
    """

    def __init__(self, services: list[LiveService], pools: PoolSet, *, timeout: float):
        self.services = services
        self.pools = pools
        self.timeout = timeout
        self.probes = 0
        self._timers: list[DeadlineTimer] = []
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        for live in self.services:
            timer = DeadlineTimer(live.core.next_health_deadline,
                                  lambda now, live=live: self._due(live, now), clock=loop.time)
            live.on_health = timer.follow
            self._timers.append(timer)
            timer.follow()

    def _due(self, live: LiveService, now: float) -> None:
        for entry, probe in live.core.health_due(now):
            task = asyncio.get_running_loop().create_task(self._probe(live, entry, probe))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _probe(self, live: LiveService, entry, probe: Probe) -> None:
        ok, why = await self.check(probe)
        self.probes += 1
        live.probe_result(entry, ok, why)

    async def check(self, probe: Probe) -> tuple[bool, str]:
        """``(healthy, why)`` of one probe; never raises."""
        try:
            async with asyncio.timeout(self.timeout):
                if probe.kind == "tcp":
                    parts = urlsplit(probe.url)
                    _, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
                    return True, "accepts connections"
                origin, path = _origin_and_path(probe.url)
                response = await self.pools.get(origin).request(b"GET", path, [], None,
                                                                timeout=self.timeout)
                async with response:
                    await response.read()
                status = response.status
                return 200 <= status < 300, f"GET {probe.url} answered {status}"
        except TimeoutError:
            return False, f"{probe.url}: no answer within {self.timeout:g}s"
        except (UpstreamError, ValueError, OSError) as exc:
            return False, f"{probe.url}: {exc}"

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for live in self.services:
            live.on_health = None
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _count(stats: dict, key: str) -> int:
    value = stats.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _number(stats: dict, key: str) -> float | None:
    value = stats.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return None
