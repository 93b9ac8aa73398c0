"""The admin port: state, lifecycle moves, health, monitor samples, request log, metrics, speed.

Errors are JSON ``{"error": "..."}`` with the status the core's error carries:
400 for a malformed body, 409 for a transition the table or the pod's
current activity refuses. With ``--admin-token`` set, ``PUT /state`` and
``PUT /speed`` need ``Authorization: Bearer <token>`` (401 otherwise).
"""

from __future__ import annotations

import contextlib
import json
import math

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from katyusha.admintoken import AdminGuard
from katyusha.core.errors import BadInput, KatyushaError
from katyusha.core.podstate import PodState
from sim_backend.metrics import exposition, make_registry
from sim_backend.monitor import Monitor
from sim_backend.pod import Pod

_STATE_FIELDS = {"state", "path", "wait"}
_PATHS = ("step", "auto")


def _error(exc: KatyushaError) -> JSONResponse:
    return JSONResponse({"error": str(exc)}, status_code=exc.status_hint)


async def _json_object(request: Request, fields: set[str]) -> dict:
    """The request body as a JSON object with only ``fields``; raises BadInput naming the problem."""
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadInput(f"body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadInput(f"body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - fields)
    if unknown:
        raise BadInput(f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(fields))}")
    return body


def _parse_state_body(body: dict) -> tuple[PodState, str, bool]:
    if "state" not in body:
        raise BadInput('missing field "state" (one of null, cold, warmdisk, warm)')
    name = body["state"]
    try:
        target = PodState(name)
    except ValueError:
        known = ", ".join(s.value for s in PodState)
        raise BadInput(f"unknown state {name!r}; known states: {known}") from None
    path = body.get("path", "step")
    if path not in _PATHS:
        raise BadInput(f'unknown path {path!r}; "path" is "step" (one step, the default) or "auto"')
    wait = body.get("wait", False)
    if not isinstance(wait, bool):
        raise BadInput(f'"wait" must be true or false, got {wait!r}')
    return target, path, wait


def build_admin_app(pod: Pod, monitor: Monitor, token: str | None = None) -> AdminGuard:
    """The admin ASGI app of ``pod``; mutating requests need ``token`` when one is given."""
    registry = make_registry(pod, monitor)

    async def get_state(request: Request) -> Response:
        return JSONResponse(pod.state_doc())

    async def put_state(request: Request) -> Response:
        try:
            target, path, wait = _parse_state_body(await _json_object(request, _STATE_FIELDS))
            src = pod.state
            steps = pod.walk(target) if path == "auto" else [pod.step(target)]
        except KatyushaError as exc:
            return _error(exc)
        if wait:
            await pod.wait_transition()
        total = sum(s.cost_s for s in steps)
        doc = {
            "from": src.value,
            "to": target.value,
            "path": path,
            "steps": [s.to_dict() for s in steps],
            "total_s": total,
            "pod": pod.state_doc(),
        }
        done = pod.state in (target, PodState.ACTIVE) and not pod.moving
        return JSONResponse(doc, status_code=200 if done else 202)

    async def healthz(request: Request) -> Response:
        state = pod.state.value
        if pod.serving:
            return JSONResponse({"status": "ok", "state": state, "pod": pod.name})
        return JSONResponse(
            {"status": "unavailable", "state": state, "pod": pod.name, "error": f"pod {pod.name} is {state}"},
            status_code=503,
        )

    async def get_monitor(request: Request) -> Response:
        return JSONResponse(monitor.doc())

    async def get_requests(request: Request) -> Response:
        records = list(pod.requests)
        limit = request.query_params.get("limit")
        if limit is not None:
            try:
                count = int(limit)
                if count < 0:
                    raise ValueError
            except ValueError:
                return _error(BadInput(f"limit must be an integer >= 0, got {limit!r}"))
            records = records[len(records) - count :] if count else []
        return JSONResponse({"pod": pod.name, "capacity": pod.requests.maxlen, "requests": records})

    async def metrics(request: Request) -> Response:
        return Response(exposition(registry), media_type=CONTENT_TYPE_LATEST)

    def speed_doc() -> dict:
        schedule = pod.slow_schedule
        return {
            "speed": pod.speed,
            "effective_speed": pod.effective_speed(),
            "slow_schedule": schedule.to_dict() if schedule else None,
        }

    async def get_speed(request: Request) -> Response:
        return JSONResponse(speed_doc())

    async def put_speed(request: Request) -> Response:
        try:
            body = await _json_object(request, {"speed"})
            if "speed" not in body:
                raise BadInput('missing field "speed" (a number above 0)')
            speed = body["speed"]
            if isinstance(speed, bool) or not isinstance(speed, int | float):
                raise BadInput(f'"speed" must be a number above 0, got {speed!r}')
            if not (speed > 0 and math.isfinite(speed)):
                raise BadInput(f'"speed" must be a finite number above 0, got {speed!r}')
        except KatyushaError as exc:
            return _error(exc)
        pod.set_speed(float(speed))
        return JSONResponse(speed_doc())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        monitor.start()
        try:
            yield
        finally:
            await monitor.stop()
            await pod.close()

    return AdminGuard(Starlette(
        routes=[
            Route("/state", get_state, methods=["GET"]),
            Route("/state", put_state, methods=["PUT"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/monitor", get_monitor, methods=["GET"]),
            Route("/requests", get_requests, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/speed", get_speed, methods=["GET"]),
            Route("/speed", put_speed, methods=["PUT"]),
        ],
        lifespan=lifespan,
    ), token)
