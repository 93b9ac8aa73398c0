"""`katyusha fleet status` and `katyusha fleet pod NAME state STATE`: steer a running fleet.

Both find the fleet through its state file (see statefile) and talk to the
live processes' admin ports; neither needs the runner's cooperation.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from katyusha.fleet import adminclient
from katyusha.fleet.spec import INITIAL_STATES, SERVING_STATES
from katyusha.fleet.table import render


def _probe_pod(pod: dict) -> dict:
    sim, nonna = pod["sim"], pod["nonna"]
    nonna_health = None
    if nonna.get("admin"):
        try:
            # Any answer means nonna runs; 200 means its app is ready too.
            nonna_health = adminclient.call("GET", nonna["admin"] + "/healthz", timeout=1.0)[0]
        except adminclient.AdminError:
            pass
    try:
        state = adminclient.pod_state(sim["admin"])
    except adminclient.AdminError as exc:
        state = {"state": None, "error": str(exc)}
    return {
        "name": pod["name"],
        "node": pod["node"],
        "state": state.get("state"),
        "sim_up": state.get("state") is not None,
        "nonna_up": nonna_health is not None,
        "nonna_ready": nonna_health == 200,
    }


def collect(document: dict) -> dict:
    """Query every process of a fleet; returns the state file plus live pod states and load tables."""
    pods = [_probe_pod(pod) for pod in document["pods"]]
    replicas = []
    for replica in document["katyusha"]:
        entry: dict[str, Any] = {"name": replica["name"], "admin": replica["admin"]}
        try:
            table = adminclient.katyusha_pods(replica["admin"])
            entry["up"] = True
            entry["policy"] = table.get("policy")
            entry["pods"] = table.get("pods", [])
        except adminclient.AdminError as exc:
            entry["up"] = False
            entry["error"] = str(exc)
            entry["pods"] = []
        replicas.append(entry)
    live = {"fleet": document, "pods": pods, "replicas": replicas}
    autoscaler = document.get("autoscaler")
    if autoscaler:
        try:
            live["autoscaler"] = {"up": True, **adminclient.expect("GET", autoscaler["admin"] + "/autoscaler", timeout=2.0)}
        except adminclient.AdminError as exc:
            live["autoscaler"] = {"up": False, "error": str(exc)}
    return live


def autoscaler_text(view: dict) -> str:
    """The autoscaler's view in a few lines: observed load, desired and actual pods, panic or not."""
    if not view.get("up"):
        return f"\nautoscaler: unreachable: {view.get('error')}\n"
    decision = view.get("decision") or {}
    pods = view.get("pods") or {}
    observed = view.get("observed") or {}
    cold = view.get("cold_starts") or {}
    mean = cold.get("mean_s")
    lines = [
        "",
        "autoscaler:",
        f"  observed:  concurrency {observed.get('concurrency', 0):g} (waiting {observed.get('waiting', 0)}, "
        f"in flight {observed.get('in_flight', 0)}), {observed.get('rps', 0):.1f} rps",
        f"  averages:  stable {decision.get('stable_value', 0):g}, panic {decision.get('panic_value', 0):g} "
        f"(target {decision.get('target', 0):g} per pod)",
        f"  pods:      desired {view.get('desired')}, serving {pods.get('serving', 0)}, starting "
        f"{pods.get('waking', 0)}, retiring {pods.get('retiring', 0)}, free {pods.get('free', 0)}",
        f"  mode:      {'PANIC' if decision.get('panic') else 'stable'} ({decision.get('reason', 'no decision yet')})",
        f"  cold starts: {cold.get('total', 0)}" + (f", mean {mean:.2f}s" if mean is not None else ""),
    ]
    return "\n".join(lines) + "\n"


def status_text(live: dict) -> str:
    document = live["fleet"]
    rows = []
    for replica, info in zip(document["katyusha"], live["replicas"], strict=True):
        alive = "up" if info["up"] else "DOWN"
        rows.append((replica["name"], "katyusha", "-", replica["data"], replica["admin"], replica["pid"],
                     f"{alive}, {len(info['pods'])} pods in set"))  # fmt: skip
    for pod, probe in zip(document["pods"], live["pods"], strict=True):
        sets = sum(1 for info in live["replicas"] if any(r["name"] == pod["name"] for r in info["pods"]))
        state = probe["state"] or "DOWN"
        rows.append((pod["sim"]["name"], "sim-backend", pod["node"], pod["sim"]["data"], pod["sim"]["admin"],
                     pod["sim"]["pid"], f"{state} (in {sets}/{len(live['replicas'])} sets)"))  # fmt: skip
        rows.append((pod["nonna"]["name"], "nonna", pod["node"], pod["nonna"]["data"], pod["nonna"]["admin"],
                     pod["nonna"]["pid"], _nonna_text(probe)))  # fmt: skip
    text = render(("PROCESS", "ROLE", "NODE", "DATA", "ADMIN", "PID", "STATE"), rows)
    text += f"\nsend traffic to: {document.get('url')}\n"
    if "autoscaler" in live:
        text += autoscaler_text(live["autoscaler"])
    for info in live["replicas"]:
        text += f"\n{info['name']} load table (policy {info.get('policy') or '?'}):\n"
        if not info["up"]:
            text += f"  unreachable: {info.get('error')}\n"
            continue
        load_rows = [
            (row.get("name"), row.get("node"), row.get("ready"), row.get("in_flight"), row.get("requests"),
             row.get("failures"), _num(row.get("estimated_load")), _num(row.get("latency_ewma_ms")))
            for row in info["pods"]
        ]  # fmt: skip
        text += render(("POD", "NODE", "READY", "IN_FLIGHT", "REQUESTS", "FAILURES", "LOAD", "LATENCY_MS"), load_rows)
    return text


def _nonna_text(probe: dict) -> str:
    if not probe["nonna_up"]:
        return "DOWN"
    return "up" if probe["nonna_ready"] else "up (app not ready)"


def _num(value: Any) -> Any:
    return f"{value:.2f}" if isinstance(value, float) else value


def show_status(document: dict, *, as_json: bool = False) -> int:
    """Print the fleet's processes, pod states and load tables; 0, or 1 when something is down."""
    live = collect(document)
    if as_json:
        sys.stdout.write(json.dumps(live, indent=2) + "\n")
    else:
        sys.stdout.write(status_text(live))
    down = any(not r["up"] for r in live["replicas"]) or any(not (p["sim_up"] and p["nonna_up"]) for p in live["pods"])
    return 1 if down else 0


class PodCommandError(Exception):
    """The pod command could not do what was asked; ``status`` is the exit status to use."""

    def __init__(self, message: str, status: int = 1):
        super().__init__(message)
        self.status = status


def move_pod(document: dict, name: str, target: str, *, timeout: float, say=print) -> str:
    """Move pod ``name`` to ``target``, keeping katyusha's sets right; return the final state.

    Leaving service: drain it out of every replica first, then move it. Coming
    into service: move it, wait until it is warm, then add it to every replica.
    Raises PodCommandError (status 2 for a bad name or state, 1 otherwise).
    """
    if target not in INITIAL_STATES:
        raise PodCommandError(f"state {target!r} is not one of {', '.join(INITIAL_STATES)}", 2)
    pods = {pod["name"]: pod for pod in document["pods"]}
    pod = pods.get(name)
    if pod is None:
        raise PodCommandError(f"no pod {name!r} in this fleet (pods: {', '.join(pods)})", 2)
    sim_admin = pod["sim"]["admin"]
    try:
        before = adminclient.pod_state(sim_admin)["state"]
    except adminclient.AdminError as exc:
        raise PodCommandError(f"{name}: sim-backend unreachable: {exc}") from None
    say(f"{name}: {before} -> {target}")

    if target not in SERVING_STATES:
        for replica in document["katyusha"]:
            try:
                removed = adminclient.remove_pod(replica["admin"], name, timeout=timeout)
            except adminclient.AdminError as exc:
                raise PodCommandError(f"{name}: could not drain it from {replica['name']}: {exc}") from None
            say(f"{name}: {'drained and removed from' if removed else 'was not in'} {replica['name']}")

    if before != target:
        try:
            adminclient.move_pod(sim_admin, target)
        except adminclient.AdminError as exc:
            raise PodCommandError(f"{name}: sim-backend refused {target}: {exc}") from None
    final = _wait_state(sim_admin, target, timeout)
    if final != target:
        raise PodCommandError(f"{name}: still {final} after {timeout:g}s (wanted {target})")
    say(f"{name}: now {final}")

    if target in SERVING_STATES:
        nonna = pod["nonna"]
        entry = {"name": name, "url": nonna["data"], "node": pod["node"], "admin": nonna["admin"]}
        for replica in document["katyusha"]:
            try:
                adminclient.add_pods(replica["admin"], [entry])
            except adminclient.AdminError as exc:
                raise PodCommandError(f"{name}: could not add it to {replica['name']}: {exc}") from None
            say(f"{name}: added to {replica['name']}")
    return final


def _wait_state(sim_admin: str, target: str, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    state = None
    while True:
        try:
            document = adminclient.pod_state(sim_admin)
            state = document.get("state")
            moving = adminclient.destination(document) not in (None, state)
            if state == target and not moving:
                return state
        except adminclient.AdminError:
            state = None
        if time.monotonic() >= deadline:
            return state
        time.sleep(0.1)
