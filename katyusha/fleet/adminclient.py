"""JSON calls to the admin ports of the fleet's processes (blocking, standard library only).

The runner calls these from worker threads (``asyncio.to_thread``); admin
traffic is a handful of requests a second, so a connection per call is fine.
"""

from __future__ import annotations

import http.client
import json
from typing import Any
from urllib.parse import quote, urlsplit


class AdminError(Exception):
    """An admin call failed: no answer, or an unexpected status (``status`` is 0 when unreachable)."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


def call(method: str, url: str, body: Any = None, *, timeout: float = 5.0) -> tuple[int, Any]:
    """Send one request; return (status, decoded JSON or text). Raises AdminError when unreachable."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        raise AdminError(f"{method} {url}: {exc or type(exc).__name__}") from None
    finally:
        conn.close()
    text = raw.decode("utf-8", "replace")
    try:
        return resp.status, json.loads(text) if text else None
    except ValueError:
        return resp.status, text


def expect(method: str, url: str, body: Any = None, *, ok=(200,), timeout: float = 5.0) -> Any:
    """Like :func:`call` but raise AdminError (with the status and body) unless the status is in ``ok``."""
    status, payload = call(method, url, body, timeout=timeout)
    if status not in ok:
        raise AdminError(f"{method} {url}: HTTP {status}: {_short(payload)}", status)
    return payload


def pod_state(sim_admin: str, *, timeout: float = 2.0) -> dict:
    """sim-backend's GET /state document (at least ``{"state": ...}``)."""
    payload = expect("GET", sim_admin + "/state", timeout=timeout)
    if not isinstance(payload, dict) or "state" not in payload:
        raise AdminError(f"GET {sim_admin}/state: no state in {_short(payload)}")
    return payload


def destination(document: dict) -> str | None:
    """Where a pod described by sim-backend's /state document is heading, or None when it stays.

    The end of the running walk when there is one, else the end of the running transition.
    """
    walk = document.get("walk")
    if isinstance(walk, list) and walk and isinstance(walk[-1], dict):
        return walk[-1].get("to")
    transition = document.get("transition")
    if isinstance(transition, dict):
        return transition.get("to")
    return None


def move_pod(sim_admin: str, state: str, *, timeout: float = 5.0) -> dict:
    """Ask sim-backend to walk to ``state`` along the legal path (it answers at once)."""
    payload = expect("PUT", sim_admin + "/state", {"state": state, "path": "auto"}, ok=(200, 202), timeout=timeout)
    return payload if isinstance(payload, dict) else {}


def add_pods(katyusha_admin: str, pods: list[dict], *, timeout: float = 5.0) -> None:
    """Upsert ``pods`` (each with name, url, node, admin) into one katyusha replica's set."""
    expect("PUT", katyusha_admin + "/pods", {"pods": pods, "replace": False}, timeout=timeout)


def remove_pod(katyusha_admin: str, name: str, *, timeout: float = 60.0) -> bool:
    """Drain and remove pod ``name`` from one replica; False when it was not there."""
    status, payload = call("DELETE", f"{katyusha_admin}/pods/{quote(name, safe='')}", timeout=timeout)
    if status == 404:
        return False
    if status not in (200, 202, 204):
        raise AdminError(f"DELETE {katyusha_admin}/pods/{name}: HTTP {status}: {_short(payload)}", status)
    return True


def katyusha_pods(katyusha_admin: str, *, timeout: float = 2.0) -> Any:
    """katyusha's GET /pods document (its load table)."""
    return expect("GET", katyusha_admin + "/pods", timeout=timeout)


def _short(payload: Any) -> str:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return text if len(text) <= 300 else text[:300] + "..."
