"""The one HTTP client of the control plane: JSON calls to the admin ports of katyusha, nonna, sim-backend.

Built on httpx (off the request path: a handful of calls a second per pod).
Connections are kept alive briefly (shorter than the servers' own keep-alive
timeouts, so a reused connection is not one the server just closed), proxies
from the environment are ignored (control traffic goes straight to the
processes), and every call has a timeout. Errors are :class:`AdminError`,
whose ``status`` is 0 when nothing answered.

katyusha's pod-set calls take a ``service``: the query parameter
``service=NAME`` is sent only when one is given, so a katyusha that runs one
service (its default) is addressed exactly as before services existed.

With a ``token`` (the fleet's admin token, katyusha.admintoken) every call
carries ``Authorization: Bearer <token>``, which every process's admin port
asks of mutating requests.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx

from katyusha.admintoken import bearer
from katyusha.core.actuation import WalkAnswer
from katyusha.core.podstate import PodState


class AdminError(Exception):
    """An admin call failed: unreachable, timed out, or an unexpected status (``status`` 0: no answer)."""

    def __init__(self, message: str, status: int = 0, payload: Any = None):
        super().__init__(message)
        self.status = status
        self.payload = payload


def _short(payload: Any) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return text if len(text) <= 300 else text[:300] + "..."


def _service(service: str | None) -> dict[str, str]:
    return {"service": service} if service is not None else {}


class AdminClient:
    """Async JSON calls to admin ports; one per control plane (or per CLI command). Close with :meth:`aclose`."""

    def __init__(self, timeout: float = 5.0, token: str | None = None):
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            timeout=timeout,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=64, keepalive_expiry=2.0),
            headers={"Accept": "application/json", **bearer(token)},
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    # -- generic ------------------------------------------------------------------------

    async def call(self, method: str, url: str, body: Any = None, *, params: dict | None = None,
                   timeout: float | None = None) -> tuple[int, Any]:
        """Send one request; return (status, decoded JSON, or the text when not JSON). Raises AdminError."""
        try:
            response = await self._http.request(
                method, url, json=body, params=params, timeout=self.timeout if timeout is None else timeout
            )
        except httpx.HTTPError as exc:
            raise AdminError(f"{method} {url}: {exc or type(exc).__name__}") from None
        text = response.text
        try:
            return response.status_code, response.json() if text else None
        except ValueError:
            return response.status_code, text

    async def expect(self, method: str, url: str, body: Any = None, *, ok=(200,), params: dict | None = None,
                     timeout: float | None = None) -> Any:
        """Like :meth:`call`, but raise AdminError (with status and payload) unless the status is in ``ok``."""
        status, payload = await self.call(method, url, body, params=params, timeout=timeout)
        if status not in ok:
            raise AdminError(f"{method} {url}: HTTP {status}: {_short(payload)}", status, payload)
        return payload

    async def get_json(self, url: str, *, timeout: float = 2.0) -> Any:
        """GET ``url`` expecting 200. Raises AdminError."""
        return await self.expect("GET", url, timeout=timeout)

    # -- katyusha ------------------------------------------------------------------------

    async def put_pods(self, admin: str, entries: list[dict], *, service: str | None = None) -> Any:
        """Upsert ``entries`` into one katyusha replica's pod set (``PUT /pods``)."""
        return await self.expect("PUT", admin + "/pods", {"pods": entries, "replace": False},
                                 params=_service(service))  # fmt: skip

    async def delete_pod(self, admin: str, name: str, *, service: str | None = None,
                         drain_s: float = 30.0) -> dict | None:
        """Take ``name`` out of one replica's set; answers once drained (None: it was not there)."""
        params = {**_service(service), "timeout": f"{drain_s:g}"}
        url = f"{admin}/pods/{quote(name, safe='')}"
        status, payload = await self.call("DELETE", url, params=params, timeout=drain_s + 5.0)
        if status == 404:
            return None
        if status != 200:
            raise AdminError(f"DELETE {url}: HTTP {status}: {_short(payload)}", status, payload)
        return payload if isinstance(payload, dict) else {}

    async def pod_table(self, admin: str, *, service: str | None = None) -> dict:
        """One replica's ``GET /pods`` document (policy, queue, load table rows)."""
        payload = await self.expect("GET", admin + "/pods", params=_service(service), timeout=2.0)
        if not isinstance(payload, dict) or not isinstance(payload.get("pods"), list):
            raise AdminError(f"GET {admin}/pods: no pod list in {_short(payload)}")
        return payload

    async def demand(self, admin: str) -> Any:
        """One replica's ``GET /demand`` document."""
        return await self.get_json(admin + "/demand")

    # -- sim-backend ---------------------------------------------------------------------

    async def pod_state(self, sim_admin: str) -> dict:
        """sim-backend's ``GET /state`` document (at least ``{"state": ...}``)."""
        payload = await self.get_json(sim_admin + "/state")
        if not isinstance(payload, dict) or "state" not in payload:
            raise AdminError(f"GET {sim_admin}/state: no state in {_short(payload)}")
        return payload

    async def walk(self, sim_admin: str, target: PodState) -> tuple[WalkAnswer, str]:
        """Ask sim-backend to walk to ``target`` along the legal path; its answer and the reason of a refusal."""
        status, payload = await self.call("PUT", sim_admin + "/state", {"state": target.value, "path": "auto"})
        if status == 200:
            return WalkAnswer.DONE, ""
        if status == 202:
            return WalkAnswer.STARTED, ""
        detail = payload.get("error", _short(payload)) if isinstance(payload, dict) else _short(payload)
        # 409: a walk runs, or requests still execute; both end by themselves.
        return (WalkAnswer.BUSY if status == 409 else WalkAnswer.REFUSED), f"HTTP {status}: {detail}"

    # -- nonna ---------------------------------------------------------------------------

    async def health(self, admin: str) -> int | None:
        """The status of ``GET /healthz`` (any answer: the process runs), None when nothing answers."""
        try:
            status, _ = await self.call("GET", admin + "/healthz", timeout=1.0)
        except AdminError:
            return None
        return status


def state_of(document: dict) -> tuple[PodState | None, PodState | None]:
    """(state, heading) from sim-backend's ``GET /state``: heading is where a running walk or transition ends."""
    state = state_named(document.get("state"))
    walk = document.get("walk")
    heading = None
    if isinstance(walk, list) and walk and isinstance(walk[-1], dict):
        heading = state_named(walk[-1].get("to"))
    elif isinstance(document.get("transition"), dict):
        heading = state_named(document["transition"].get("to"))
    return state, heading


def state_named(value: Any) -> PodState | None:
    """The state called ``value`` on the wire, None for anything else (a process that did not say)."""
    try:
        return PodState(value)
    except ValueError:
        return None
