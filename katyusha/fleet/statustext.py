"""The text of ``katyusha fleet status``: processes, autoscaler, load tables and nodes, from the fleet's live view.

The live view is the JSON the control plane serves as ``GET /fleet``
(katyusha.control.fleetview); these functions only lay it out.
"""

from __future__ import annotations

from typing import Any

from katyusha.fleet.table import render


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
    """Every process with its state, the control plane, the autoscaler's view and each replica's load table."""
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
    control = live["fleet"].get("control")
    if control:
        where = control.get("admin")
        text += f"control plane: {where}" + ("" if live.get("control_up", True) else " (unreachable: status read directly)")
        text += "\n"
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


def nodes_text(nodes: list[dict], placement: dict | None) -> str:
    """The node table, and the last placement's outcome when there is one."""
    rows = []
    for node in nodes:
        pods = ", ".join(f"{p['name']} {p['state'] or 'DOWN'}" for p in node["pods"]) or "-"
        rows.append((
            node["name"],
            _over(node["requested_cpu_m"], node["cpu_m"], "m"),
            _over(node["requested_ram_mib"], node["ram_mib"], "Mi"),
            _over(node["serving"], node["max_pods"], ""),
            ",".join(node["images"]) or "-",
            ",".join(node["taints"]) or "-",
            pods,
        ))  # fmt: skip
    text = "\nnodes (requests of serving pods / capacity):\n"
    text += render(("NODE", "CPU", "RAM", "PODS", "IMAGES", "TAINTS", "POD STATES"), rows)
    if placement is None:
        return text
    if "error" in placement:
        return text + f"placement: unreachable: {placement['error']}\n"
    wake = placement.get("last_wake")
    if wake:
        woken = ", ".join(f"{w['pod']} on {w['node']} (was {w['from']})" for w in wake.get("woken", [])) or "none"
        text += f"placement: last scale-up asked {wake.get('asked')}, woke {woken}\n"
        for service, reason in (wake.get("reasons") or {}).items():
            text += f"  not placed ({wake.get('unplaced')} pod(s)), {service}: {reason}\n"
    retire = placement.get("last_retire")
    if retire:
        gone = ", ".join(f"{r['pod']} on {r['node']}" for r in retire.get("retired", [])) or "none"
        text += f"placement: last scale-down retired {gone}\n"
    return text


def _over(used: Any, capacity: Any, unit: str) -> str:
    return f"{used}{unit}/{'?' if capacity is None else f'{capacity}{unit}'}"
