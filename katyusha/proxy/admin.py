"""The admin port of ``katyusha serve``: health, config, metrics, services, pod sets, demand, picks.

Routes (all JSON unless said otherwise). Every route that concerns a service
acts on the default service unless ``service=NAME`` selects another (404
naming it when unknown)::

    GET    /healthz             "ok" (503 "draining" once shutdown began)
    GET    /config              the settings in force
    GET    /metrics             Prometheus text
    GET    /services            every service: hosts, path prefix, policy, ready pods, queue
    GET    /pods                load table snapshot, policy, L1 queue counters
    PUT    /pods                {"pods": [{"name","url","node","admin","concurrency"}], "replace": false}
    GET    /pods/{name}         one load table row
    DELETE /pods/{name}         take out of picking, answer once drained (?timeout=30)
    GET    /demand              {"waiting", "in_flight", "ready_pods"} (+ "services" without service=)
    GET    /pool                response pool summary (outoushuugou)
    GET    /trace               the last trace-picks picks (all services without service=)
    GET    /dashboard           the live dashboard page (HTML, katyusha.dashboard)
    GET    /dashboard/data      what the page polls: per service rps, p50/p99, queue, pods (one with service=)
    GET    /dashboard/raw       this process's services now and their per-second points after since= (for worker 0)

With ``admin-token`` set, PUT, POST and DELETE need ``Authorization: Bearer
<token>`` (401 otherwise, katyusha.admintoken); reads stay open.
"""

from __future__ import annotations

import json
import math
from urllib.parse import parse_qs, unquote

from katyusha.admintoken import AdminGuard
from katyusha.core.errors import BadInput, ConfigError, KatyushaError
from katyusha.dashboard import PAGE_TYPE, page
from katyusha.proxy.asgi import TEXT, lifespan, read_body, respond, respond_json
from katyusha.proxy.config import PodSpec, ProxyConfig, parse_pod
from katyusha.proxy.discovery import Membership, PushSource
from katyusha.proxy.metrics import exposition

METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def parse_pods_body(body: bytes) -> tuple[list[PodSpec], bool]:
    """The pods and ``replace`` flag of a ``PUT /pods`` body. Raises BadInput naming the bad field."""
    try:
        document = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"body is not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadInput('body must be a JSON object {"pods": [...], "replace": false}')
    unknown = set(document) - {"pods", "replace"}
    if unknown:
        raise BadInput(f"unknown field(s): {', '.join(sorted(unknown))}")
    pods = document.get("pods")
    if not isinstance(pods, list):
        raise BadInput('field "pods" must be a list of {"name", "url", "node", "admin", "concurrency"}')
    replace = document.get("replace", False)
    if not isinstance(replace, bool):
        raise BadInput('field "replace" must be true or false')
    specs = []
    for index, item in enumerate(pods):
        if not isinstance(item, dict):
            raise BadInput(f"pods[{index}] must be an object")
        if "name" not in item:
            raise BadInput(f"pods[{index}].name is required")
        try:
            specs.append(parse_pod(f"pods[{index}]", item))
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise BadInput("pods: names must be unique within one request")
    return specs, replace


def _query(scope) -> dict[str, list[str]]:
    return parse_qs(scope.get("query_string", b"").decode("latin-1"))


def parse_timeout(query: bytes, default: float = 30.0) -> float:
    """``timeout=`` seconds from a query string. Raises BadInput for a bad value."""
    values = parse_qs(query.decode("latin-1")).get("timeout")
    if not values:
        return default
    try:
        timeout = float(values[-1])
    except ValueError:
        timeout = math.nan
    if not math.isfinite(timeout) or timeout < 0 or timeout > 3600:
        raise BadInput(f"timeout must be seconds from 0 to 3600, got {values[-1]!r}")
    return timeout


class AdminApp:
    """Raw ASGI app of the admin port for one katyusha process."""

    def __init__(self, config: ProxyConfig, membership: Membership, push: PushSource, registry,
                 notes: dict | None = None, *, draining=lambda: False, dashboard=None):
        self.config = config
        self.membership = membership
        self.push = push
        self.registry = registry
        self.notes = notes or {}
        self.draining = draining
        self.dashboard = dashboard  # katyusha.dashboard.feed.DashboardFeed, or None: no dashboard
        self._guarded = AdminGuard(self._serve, config.admin_token)

    async def __call__(self, scope, receive, send) -> None:
        await self._guarded(scope, receive, send)

    async def _serve(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        try:
            await self.route(scope, receive, send)
        except KatyushaError as exc:
            await respond_json(send, exc.status_hint, {"error": str(exc)})

    async def route(self, scope, receive, send) -> None:
        method = scope["method"]
        path = scope["path"]
        query = _query(scope)
        selected = query.get("service", [None])[-1]
        if path == "/healthz" and method in ("GET", "HEAD"):
            if self.draining():
                await respond(send, 503, b"draining\n", TEXT)
            else:
                await respond(send, 200, b"ok\n", TEXT)
        elif path == "/config" and method == "GET":
            await respond_json(send, 200, self.config.to_json())
        elif path == "/metrics" and method == "GET":
            await respond(send, 200, exposition(self.registry), METRICS_TYPE)
        elif path == "/services" and method == "GET":
            await respond_json(send, 200, self.services())
        elif path == "/demand" and method == "GET":
            await respond_json(send, 200, self.demand(selected))
        elif path == "/trace" and method == "GET":
            await respond_json(send, 200, self.trace(selected))
        elif path == "/pool" and method == "GET":
            live = self.membership.service(selected)
            pool = live.core.pool
            summary = pool.summary(live.now()) if pool is not None else None
            await respond_json(send, 200, {"service": live.name, "enabled": pool is not None,
                                           "summary": summary})
        elif path in ("/dashboard", "/dashboard/") and method == "GET" and self.dashboard is not None:
            await respond(send, 200, page(), PAGE_TYPE)
        elif path == "/dashboard/data" and method == "GET" and self.dashboard is not None:
            only = None if selected is None else self.membership.service(selected).name  # 404 when unknown
            await respond_json(send, 200, self.dashboard.data(only))
        elif path == "/dashboard/raw" and method == "GET" and self.dashboard is not None:
            since = query.get("since", [None])[-1]
            try:
                since = None if since is None else float(since)
            except ValueError:
                raise BadInput(f"since must be a time in seconds, got {since!r}") from None
            await respond_json(send, 200, self.dashboard.raw(None, since))
        elif path == "/pods":
            await self._pods(scope, receive, send, method, selected)
        elif path.startswith("/pods/"):
            await self._pod(scope, send, method, selected, unquote(path[len("/pods/"):]))
        else:
            await respond_json(send, 404, {"error": f"no admin route {method} {path}"})

    async def _pods(self, scope, receive, send, method: str, selected: str | None) -> None:
        if method == "GET":
            live = self.membership.service(selected)
            await respond_json(send, 200, {**live.state(), **self.notes})
        elif method in ("PUT", "POST"):
            live = self.membership.service(selected)
            specs, replace = parse_pods_body(await read_body(receive))
            result = self.push.put(live.name, specs, replace)
            table = live.core.table
            await respond_json(send, 200, {
                "service": live.name,
                "pods": [entry.name for entry in table.pods()],
                "removed": [entry.name for entry in result.removed],
                "ready_pods": len(table.ready()),
            })
        else:
            await _method_not_allowed(send, "GET, PUT")

    async def _pod(self, scope, send, method: str, selected: str | None, name: str) -> None:
        live = self.membership.service(selected)
        if method == "GET":
            entry = live.core.table.get(name)
            if entry is None:
                await respond_json(send, 404, {"error": f"unknown pod {name!r}"})
            else:
                await respond_json(send, 200, live.core.pod_row(entry, live.now()))
        elif method == "DELETE":
            timeout = parse_timeout(scope.get("query_string", b""))
            await respond_json(send, 200, await self.push.delete(live.name, name, timeout))
        else:
            await _method_not_allowed(send, "GET, DELETE")

    def services(self) -> dict:
        """``GET /services``: the default service's name and every service's summary."""
        return {"default": self.membership.default,
                "services": [live.summary() for live in self.membership.services.values()]}

    def demand(self, selected: str | None) -> dict:
        """``GET /demand``: one service's demand; without ``service=``, the default's plus all."""
        if selected is not None:
            live = self.membership.service(selected)
            return {"service": live.name, **live.demand()}
        return {**self.membership.service(None).demand(),
                "services": {name: live.demand() for name, live in self.membership.services.items()}}

    def trace(self, selected: str | None) -> dict:
        """``GET /trace``: the recorded picks, oldest first (every service's, merged, without ``service=``)."""
        services = ([self.membership.service(selected)] if selected is not None
                    else list(self.membership.services.values()))
        picks = []
        for live in services:
            trace = live.core.trace
            if trace is not None:
                picks.extend(trace.records(live.now()))
        picks.sort(key=lambda pick: pick["at"])
        return {"enabled": self.config.trace_picks > 0, "size": self.config.trace_picks,
                "picks": picks}


async def _method_not_allowed(send, allow: str) -> None:
    await respond_json(
        send, 405, {"error": f"method not allowed; allowed: {allow}"}, [(b"allow", allow.encode())]
    )
