"""The live autoscaler: every tick, read demand, feed the KPA core, and ask an actuator for the pod count.

Each tick (``tick-interval``, 2 s by default) the loop reads katyusha's admin
``GET /demand`` (``{"waiting", "in_flight", "ready_pods"}``) and, when pod
admin URLs are known, each nonna's ``GET /stats`` for requests per second. It
records ``waiting + in_flight`` as the service's concurrency and the summed
``requests_per_second`` as its rate, decides with
:class:`katyusha.core.autoscaler.Autoscaler`, and calls ``actuator.scale_to``
when the decision differs from ``actuator.current()``. How pods are started
and stopped is the actuator's business.

katyusha POSTs the same demand document to its ``demand-url`` when requests
wait with no ready pod; :meth:`AutoscalerLoop.on_demand` (or the ``POST
/demand`` route of :meth:`AutoscalerLoop.asgi_app`) pokes the core so scaling
from zero starts at once instead of at the next tick. As a second path that
needs no setting on katyusha's side, while no pod is asked for the loop also
reads ``GET /demand`` every ``zero_poll_s`` (100 ms), so a request waiting at
zero is seen within that time even when the POST is lost.

With several katyusha replicas, ``demand_urls`` lists every replica's
``/demand``: waiting and in-flight requests are summed, ready pods are the
most any replica has. ``GET /metrics`` on the loop's ASGI app exposes the
autoscaler's view to Prometheus (see katyusha.control.metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

from katyusha.control import adminhttp
from katyusha.control.metrics import ColdStarts, exposition, make_registry
from katyusha.core.autoscaler import Autoscaler, Decision
from katyusha.core.autoscaler_config import KPAConfig
from katyusha.core.errors import BadInput, KatyushaError

log = logging.getLogger("katyusha.autoscaler")

FetchJSON = Callable[[str], Awaitable[Any]]


class Actuator(Protocol):
    """What moves pods: the fleet runner implements it."""

    def current(self) -> int:
        """The pod count last asked for (ready or starting)."""
        ...

    async def scale_to(self, count: int) -> None:
        """Start or stop pods until ``count`` are asked for."""
        ...


def parse_demand(document: Any) -> tuple[int, int, int]:
    """(waiting, in_flight, ready_pods) from a demand document. Raises BadInput naming the bad field."""
    if not isinstance(document, dict):
        raise BadInput('demand must be a JSON object {"waiting", "in_flight", "ready_pods"}')
    values = []
    for field in ("waiting", "in_flight", "ready_pods"):
        value = document.get(field, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadInput(f'demand field "{field}" must be an integer >= 0, got {value!r}')
        values.append(value)
    return values[0], values[1], values[2]


def stats_rps(document: Any) -> float:
    """Requests per second from a nonna ``/stats`` document (top level or its ``last`` period); 0 if absent."""
    if isinstance(document, dict):
        for candidate in (document, document.get("last_period"), document.get("last"), document.get("period")):
            if isinstance(candidate, dict):
                value = candidate.get("requests_per_second")
                if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                    return max(0.0, float(value))
    return 0.0


async def fetch_json_stdlib(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` and decode JSON (asyncio, no thread). Raises AdminCallError."""
    return await adminhttp.get_json(url, timeout=timeout)


class AutoscalerLoop:
    """One service's autoscaler run live: a tick loop, a demand callback, and ``desired`` for the runner."""

    def __init__(
        self,
        config: KPAConfig,
        actuator: Actuator,
        *,
        demand_url: str | None = None,
        demand_urls: Callable[[], Iterable[str]] | None = None,
        pod_stats_urls: Callable[[], Iterable[str]] | None = None,
        fetch_json: FetchJSON = fetch_json_stdlib,
        clock: Callable[[], float] = time.monotonic,
        zero_poll_s: float = 0.1,
        cold: ColdStarts | None = None,
    ):
        """``demand_url`` is katyusha's full ``.../demand`` admin URL; ``demand_urls`` lists several (read each time).

        With neither, only POSTed demand is seen. ``cold`` is the cold-start
        record the metrics expose (the actuator's, when it keeps one).
        """
        self.config = config
        self.actuator = actuator
        if demand_urls is None and demand_url is not None:
            demand_urls = lambda: [demand_url]  # noqa: E731
        self.demand_url = demand_url
        self.demand_urls = demand_urls
        self.pod_stats_urls = pod_stats_urls
        self.fetch_json = fetch_json
        self.clock = clock
        self.zero_poll_s = zero_poll_s
        self.core = Autoscaler(config, clock(), ready_pods=actuator.current())
        self.last: Decision | None = None
        self.errors = 0
        self.observed = {"concurrency": 0.0, "rps": 0.0, "waiting": 0, "in_flight": 0}
        self.ready_pods = 0
        self.cold = cold if cold is not None else getattr(actuator, "cold", None) or ColdStarts()
        self.registry = make_registry(self.status, self.cold)
        self._lock = asyncio.Lock()

    @property
    def desired(self) -> int:
        """The latest decided pod count (the actuator's count before the first decision)."""
        return self.last.desired if self.last is not None else self.actuator.current()

    async def tick(self) -> Decision | None:
        """Read demand and stats, decide, actuate. Returns None when demand could not be read."""
        ready = None
        concurrency = 0.0
        if self.demand_urls is not None:
            try:
                waiting, in_flight, ready = await self.read_demand()
            except Exception as exc:
                # One failed read must not stop scaling; the core keeps its history.
                self.errors += 1
                log.warning("autoscaler: cannot read demand: %s", exc)
                return None
            concurrency = float(waiting + in_flight)
        rps = await self._read_rps()
        self.observed["concurrency"], self.observed["rps"] = concurrency, rps
        async with self._lock:
            now = self.clock()
            self.core.record(now, concurrency, rps)
            decision = self.core.decide(now, ready if ready is not None else self.actuator.current())
            await self._apply(decision)
        return decision

    async def read_demand(self) -> tuple[int, int, int]:
        """(waiting, in_flight, ready_pods) over every replica that answers.

        Raises the first error when no replica answers, BadInput for a bad document.
        """
        urls = list(self.demand_urls()) if self.demand_urls is not None else []
        if not urls:
            raise LookupError("no katyusha replica to read demand from")
        results = await asyncio.gather(*(self.fetch_json(url) for url in urls), return_exceptions=True)
        documents = [r for r in results if not isinstance(r, BaseException)]
        if not documents:
            raise results[0]
        parsed = [parse_demand(doc) for doc in documents]
        waiting = sum(p[0] for p in parsed)
        in_flight = sum(p[1] for p in parsed)
        ready = max(p[2] for p in parsed)
        self.observed["waiting"], self.observed["in_flight"] = waiting, in_flight
        self.ready_pods = ready
        return waiting, in_flight, ready

    async def on_demand(self, document: Any) -> Decision:
        """katyusha's immediate demand notice: poke the core and actuate at once. Raises BadInput."""
        waiting, in_flight, ready = parse_demand(document)
        async with self._lock:
            decision = self.core.poke(self.clock(), waiting=float(max(1, waiting + in_flight)), ready_pods=ready)
            await self._apply(decision)
        return decision

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every ``tick_interval`` seconds until ``stop`` is set; watch for demand at zero meanwhile."""
        watcher = asyncio.get_running_loop().create_task(self._watch_zero(stop))
        try:
            await self._tick_loop(stop)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _tick_loop(self, stop: asyncio.Event) -> None:
        interval = self.config.tick_interval
        while not stop.is_set():
            started = self.clock()
            try:
                await self.tick()
            except Exception:  # pragma: no cover - a bug must not end the control loop silently
                self.errors += 1
                log.exception("autoscaler tick failed")
            remaining = max(0.0, interval - (self.clock() - started))
            try:
                await asyncio.wait_for(stop.wait(), timeout=remaining)
            except TimeoutError:
                pass

    async def _watch_zero(self, stop: asyncio.Event) -> None:
        """While no pod is asked for, read demand every ``zero_poll_s`` and act on waiting requests at once."""
        if self.demand_urls is None or self.zero_poll_s <= 0:
            return
        while not stop.is_set():
            if self.actuator.current() == 0:
                try:
                    waiting, in_flight, ready = await self.read_demand()
                    if waiting > 0 and self.actuator.current() == 0:
                        await self.on_demand({"waiting": waiting, "in_flight": in_flight, "ready_pods": ready})
                except Exception as exc:  # the tick loop counts and logs read errors
                    log.debug("autoscaler: zero watch: %s", exc)
            try:
                await asyncio.wait_for(stop.wait(), timeout=self.zero_poll_s)
            except TimeoutError:
                pass

    def status(self) -> dict:
        """The latest decision as JSON."""
        decision = self.last
        counts = getattr(self.actuator, "counts", None)
        return {
            "desired": self.desired,
            "current": self.actuator.current(),
            "ready_pods": self.ready_pods,
            "pods": counts() if counts is not None else None,
            "observed": dict(self.observed),
            "errors": self.errors,
            "cold_starts": {"total": self.cold.total, "failed": self.cold.failed,
                            "last_s": self.cold.last_s,
                            "mean_s": self.cold.sum_s / self.cold.total if self.cold.total else None},
            "decision": None
            if decision is None
            else {
                "desired": decision.desired,
                "panic": decision.panic,
                "stable_value": decision.stable_value,
                "panic_value": decision.panic_value,
                "target": decision.target,
                "excess_burst_capacity": decision.excess_burst_capacity,
                "activator_in_path": decision.activator_in_path,
                "reason": decision.reason,
            },
        }

    def asgi_app(self) -> Callable:
        """An ASGI app: ``POST /demand`` (katyusha's notice), ``GET /autoscaler`` (status), ``GET /metrics``, ``GET /healthz``."""

        async def app(scope, receive, send) -> None:
            if scope["type"] == "lifespan":
                while True:
                    message = await receive()
                    if message["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif message["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            if scope["type"] != "http":
                return
            method, path = scope["method"], scope["path"]
            if path == "/demand":
                if method != "POST":
                    await _respond(send, 405, {"error": "use POST /demand"}, allow="POST")
                    return
                body = await _read_body(receive)
                try:
                    document = json.loads(body or b"null")
                except (ValueError, UnicodeDecodeError) as exc:
                    await _respond(send, 400, {"error": f"body is not JSON: {exc}"})
                    return
                try:
                    decision = await self.on_demand(document)
                except KatyushaError as exc:
                    await _respond(send, exc.status_hint, {"error": str(exc)})
                    return
                await _respond(send, 202, {"desired": decision.desired})
            elif path == "/autoscaler" and method == "GET":
                await _respond(send, 200, self.status())
            elif path == "/metrics" and method == "GET":
                body = exposition(self.registry)
                await send({"type": "http.response.start", "status": 200, "headers": [
                    (b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                    (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
            elif path == "/healthz" and method == "GET":
                await _respond(send, 200, "ok")
            else:
                await _respond(send, 404, {"error": f"no route {method} {path}"})

        return app

    # -- internals ----------------------------------------------------------------------

    async def _read_rps(self) -> float:
        if self.pod_stats_urls is None:
            return 0.0
        urls = list(self.pod_stats_urls())
        if not urls:
            return 0.0
        results = await asyncio.gather(*(self.fetch_json(url) for url in urls), return_exceptions=True)
        # A pod that does not answer contributes nothing this tick; it may be starting or gone.
        return sum(stats_rps(result) for result in results if not isinstance(result, BaseException))

    async def _apply(self, decision: Decision) -> None:
        self.last = decision
        if decision.desired != self.actuator.current():
            log.info("autoscaler: scale %d -> %d (%s)", self.actuator.current(), decision.desired, decision.reason)
            await self.actuator.scale_to(decision.desired)


async def _read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send, status: int, payload: Any, allow: str | None = None) -> None:
    body = json.dumps(payload).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if allow:
        headers.append((b"allow", allow.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
