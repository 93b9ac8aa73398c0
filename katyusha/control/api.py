"""The control plane's admin API (JSON; errors are ``{"error": "..."}`` with the status named below).

Routes::

    GET  /healthz                 "ok" once the plane runs (503 before)
    GET  /fleet                   the fleet's live view: processes, pod states, load tables, nodes,
                                  the autoscaler's view and the last placement (katyusha fleet status)
    PUT  /pods/{name}/state       {"state": "warmdisk", "timeout": 120}: move one pod through the
                                  membership writer, draining it first when it leaves service; answers
                                  when done: 200 {"pod", "state", "steps"}; 400 bad body or state,
                                  404 unknown pod, 502 the move failed ({"error", "steps"})
    POST /demand                  katyusha's demand notice: 202 {"desired", "service"}; 400 bad
                                  document, 404 service not autoscaled (or the autoscaler is off)
    GET  /autoscaler              the autoscaler's view (404 when it is off)
    GET  /placement               nodes, services, the last wake and retirement (404 when off)
    GET  /metrics                 Prometheus text (the autoscaler's series)
    GET  /dashboard               the fleet's live dashboard page (HTML, katyusha.dashboard)
    GET  /dashboard/data          what the page polls (katyusha.dashboard.fleet)

With the plane's admin token set, PUT and POST need ``Authorization: Bearer
<token>`` (401 otherwise; katyusha.admintoken); reads stay open.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from katyusha.admintoken import AdminGuard
from katyusha.control.autoscaler import UnknownService
from katyusha.control.membership import MoveFailed
from katyusha.core.errors import BadInput, KatyushaError
from katyusha.core.podstate import WALK_TARGETS, PodState, names
from katyusha.core.scaling import ScaleTo, service_label
from katyusha.dashboard import page
from katyusha.dashboard.fleet import Cached, fleet_data

DEFAULT_MOVE_TIMEOUT_S = 120.0
MAX_MOVE_TIMEOUT_S = 3600.0


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status)


async def _json_object(request: Request, fields: set[str]) -> dict:
    """The body as a JSON object with only ``fields``. Raises BadInput naming what is wrong."""
    try:
        body = json.loads(await request.body() or b"null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"body is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput(f"body must be a JSON object with {', '.join(sorted(fields))}")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise BadInput(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return body


def parse_move(body: dict) -> tuple[PodState, float]:
    """The target state and timeout of a ``PUT /pods/{name}/state`` body. Raises BadInput naming the field."""
    value = body.get("state")
    try:
        target = PodState(value)
    except ValueError:
        target = None
    if target not in WALK_TARGETS:
        raise BadInput(f'"state" must be one of {names(WALK_TARGETS)}, got {value!r}')
    timeout = body.get("timeout", DEFAULT_MOVE_TIMEOUT_S)
    if (isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout)
            or not 0 < timeout <= MAX_MOVE_TIMEOUT_S):  # fmt: skip
        raise BadInput(f'"timeout" must be seconds above 0 and at most {MAX_MOVE_TIMEOUT_S:g}, got {timeout!r}')
    return target, float(timeout)


def build_app(plane) -> AdminGuard:
    """The admin app of ``plane`` (a katyusha.control.plane.ControlPlane), behind its admin token."""

    async def healthz(request: Request) -> Response:
        if not plane.started:
            return PlainTextResponse("starting\n", status_code=503)
        return PlainTextResponse("ok\n")

    async def fleet(request: Request) -> Response:
        return JSONResponse(await plane.fleet_view())

    async def move(request: Request) -> Response:
        name = request.path_params["name"]
        try:
            target, timeout = parse_move(await _json_object(request, {"state", "timeout"}))
        except KatyushaError as exc:
            return _error(exc.status_hint, str(exc))
        try:
            final, lines = await plane.move_pod(name, target, timeout)
        except LookupError as exc:
            return _error(404, str(exc))
        except MoveFailed as exc:
            return _error(502, str(exc), steps=getattr(exc, "lines", []))
        return JSONResponse({"pod": name, "state": final.value, "steps": lines})

    async def demand(request: Request) -> Response:
        if plane.autoscaler is None:
            return _error(404, "the autoscaler is off in this fleet")
        try:
            document = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError) as exc:
            return _error(400, f"body is not JSON: {exc}")
        try:
            outcome = await plane.autoscaler.on_demand(document)
        except KatyushaError as exc:
            return _error(exc.status_hint, str(exc))
        except UnknownService as exc:
            return _error(404, str(exc))
        if isinstance(outcome, ScaleTo):
            return JSONResponse({"desired": outcome.count, "service": service_label(outcome.service)},
                                status_code=202)  # fmt: skip
        return JSONResponse({"desired": outcome.desired}, status_code=202)

    async def autoscaler(request: Request) -> Response:
        if plane.autoscaler is None:
            return _error(404, "the autoscaler is off in this fleet")
        return JSONResponse(plane.autoscaler.status())

    async def placement(request: Request) -> Response:
        if plane.actuator is None:
            return _error(404, "the autoscaler is off in this fleet: nothing is placed")
        return JSONResponse(plane.actuator.status())

    async def metrics(request: Request) -> Response:
        return Response(plane.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def dashboard(request: Request) -> Response:
        return Response(page(), media_type="text/html; charset=utf-8")

    snapshot = Cached(lambda: fleet_data(plane))

    async def dashboard_data(request: Request) -> Response:
        return JSONResponse(await snapshot.get())

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, f"no route {request.method} {request.url.path}")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return _error(405, f"method {request.method} not allowed on {request.url.path}")

    return AdminGuard(Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/fleet", fleet, methods=["GET"]),
            Route("/pods/{name}/state", move, methods=["PUT"]),
            Route("/demand", demand, methods=["POST"]),
            Route("/autoscaler", autoscaler, methods=["GET"]),
            Route("/placement", placement, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/dashboard", dashboard, methods=["GET"]),
            Route("/dashboard/data", dashboard_data, methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed},
    ), getattr(plane, "token", None))
