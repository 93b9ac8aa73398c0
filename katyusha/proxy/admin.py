"""The admin port of ``katyusha serve``: health, config, metrics, the pod set and demand.

Routes (all JSON unless said otherwise)::

    GET    /healthz             "ok" (503 "draining" once shutdown began)
    GET    /config              the settings in force
    GET    /metrics             Prometheus text
    GET    /pods                load table snapshot, policy, L1 queue counters
    PUT    /pods                {"pods": [{"name","url","node","admin","concurrency"}], "replace": false}
    DELETE /pods/{name}         take out of picking, answer once drained (?timeout=30)
    GET    /demand              {"waiting", "in_flight", "ready_pods"}
    GET    /pool                response pool summary (outoushuugou)
"""

from __future__ import annotations

import json
import math
from urllib.parse import parse_qs, unquote

from katyusha.core.errors import BadInput, ConfigError, KatyushaError
from katyusha.proxy.asgi import TEXT, lifespan, read_body, respond, respond_json
from katyusha.proxy.balancer import Balancer
from katyusha.proxy.config import PodSpec, ProxyConfig, parse_pod
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

    def __init__(self, config: ProxyConfig, balancer: Balancer, registry, notes: dict | None = None):
        self.config = config
        self.balancer = balancer
        self.registry = registry
        self.notes = notes or {}

    async def __call__(self, scope, receive, send) -> None:
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
        balancer = self.balancer
        if path == "/healthz" and method in ("GET", "HEAD"):
            if balancer.draining:
                await respond(send, 503, b"draining\n", TEXT)
            else:
                await respond(send, 200, b"ok\n", TEXT)
        elif path == "/config" and method == "GET":
            await respond_json(send, 200, self.config.to_json())
        elif path == "/metrics" and method == "GET":
            await respond(send, 200, exposition(self.registry), METRICS_TYPE)
        elif path == "/demand" and method == "GET":
            await respond_json(send, 200, balancer.demand())
        elif path == "/pool" and method == "GET":
            pool = balancer.pool
            summary = pool.summary(balancer.now()) if pool is not None else None
            await respond_json(send, 200, {"enabled": pool is not None, "summary": summary})
        elif path == "/pods":
            if method == "GET":
                await respond_json(send, 200, {**balancer.state(), **self.notes})
            elif method in ("PUT", "POST"):
                specs, replace = parse_pods_body(await read_body(receive))
                if replace:
                    removed = balancer.replace(specs)
                else:
                    removed = []
                    for spec in specs:
                        balancer.upsert(spec)
                await respond_json(
                    send,
                    200,
                    {
                        "pods": [row["name"] for row in balancer.state()["pods"]],
                        "removed": removed,
                        "ready_pods": len(balancer.table.ready()),
                    },
                )
            else:
                await _method_not_allowed(send, "GET, PUT")
        elif path.startswith("/pods/"):
            name = unquote(path[len("/pods/"):])
            if method == "GET":
                rows = [row for row in balancer.state()["pods"] if row["name"] == name]
                if not rows:
                    await respond_json(send, 404, {"error": f"unknown pod {name!r}"})
                else:
                    await respond_json(send, 200, rows[0])
            elif method == "DELETE":
                timeout = parse_timeout(scope.get("query_string", b""))
                entry = balancer.remove(name)
                if entry is None:
                    await respond_json(send, 404, {"error": f"unknown pod {name!r}"})
                    return
                drained = await balancer.drain(entry, timeout)
                await respond_json(
                    send, 200, {"name": name, "drained": drained, "in_flight": balancer.busy(entry)}
                )
            else:
                await _method_not_allowed(send, "GET, DELETE")
        else:
            await respond_json(send, 404, {"error": f"no admin route {method} {path}"})


async def _method_not_allowed(send, allow: str) -> None:
    await respond_json(
        send, 405, {"error": f"method not allowed; allowed: {allow}"}, [(b"allow", allow.encode())]
    )
