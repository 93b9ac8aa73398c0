"""The node view of ``katyusha fleet status``: each node's pods and states, requests against capacity.

A node's requested CPU and RAM are its serving pods' (warm or active) service
requests; a pod in any other state holds nothing but, from warmdisk on, the
image on the node's disk. With the autoscaler running, its last placement
(``GET /placement``) is shown too: which pods the last scale-up woke, and why
the pods it could not place stay pending.
"""

from __future__ import annotations

from typing import Any

from katyusha.fleet import adminclient
from katyusha.fleet.table import render

SERVING = frozenset({"warm", "active"})
IMAGE_STATES = frozenset({"warmdisk", "warm", "active"})


def node_view(live: dict) -> list[dict]:
    """Per node: capacity (None when the fleet's state file predates it), pods with states, requests, images."""
    document = live["fleet"]
    topology = document.get("topology") or {}
    services = {s["name"]: s for s in topology.get("services", [])}
    pod_services = topology.get("pod_services", {})
    nodes = topology.get("nodes") or [{"name": name} for name in dict.fromkeys(p["node"] for p in document["pods"])]
    view = []
    for node in nodes:
        pods, cpu, ram, images = [], 0, 0, set()
        for pod, probe in zip(document["pods"], live["pods"], strict=True):
            if pod["node"] != node["name"]:
                continue
            service = services.get(pod_services.get(pod["name"], ""), {})
            state = probe.get("state")
            pods.append({"name": pod["name"], "state": state, "service": service.get("name")})
            if state in SERVING:
                cpu += service.get("cpu_m", 0)
                ram += service.get("ram_mib", 0)
            if state in IMAGE_STATES and service.get("image"):
                images.add(service["image"])
        view.append({
            "name": node["name"], "cpu_m": node.get("cpu_m"), "ram_mib": node.get("ram_mib"),
            "max_pods": node.get("max_pods"), "labels": node.get("labels", {}), "taints": node.get("taints", []),
            "pods": pods, "serving": sum(1 for p in pods if p["state"] in SERVING),
            "requested_cpu_m": cpu, "requested_ram_mib": ram, "images": sorted(images),
        })  # fmt: skip
    return view


def read_placement(live: dict) -> dict | None:
    """The autoscaler's ``GET /placement``, None without an autoscaler, ``{"error"}`` when it does not answer."""
    autoscaler = live["fleet"].get("autoscaler")
    if not autoscaler:
        return None
    try:
        return adminclient.expect("GET", autoscaler["admin"] + "/placement", timeout=2.0)
    except adminclient.AdminError as exc:
        return {"error": str(exc)}


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
