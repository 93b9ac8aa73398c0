"""The live view of a fleet: every process probed, pod states, load tables and the node view, as JSON.

The control plane serves it as ``GET /fleet``; ``katyusha fleet status``
prints it (katyusha.fleet.status), or builds it itself from the state file
when no control plane answers. ``document`` is the fleet as the state file
records it: ``katyusha`` (replicas: name, data, admin, pid), ``pods`` (name,
node, sim and nonna: name, data, admin, pid), ``url`` and ``topology``
(nodes, services and each pod's service, for the node view).
"""

from __future__ import annotations

import asyncio
from typing import Any

from katyusha.control.adminclient import AdminClient, AdminError, state_named
from katyusha.core.podstate import IMAGE_ON_DISK, SERVING


async def _probe_pod(client: AdminClient, pod: dict) -> dict:
    sim, nonna = pod["sim"], pod["nonna"]
    # Any answer from nonna's health means it runs; 200 means its app is ready too.
    health = await client.health(nonna["admin"]) if nonna.get("admin") else None
    try:
        doc = await client.pod_state(sim["admin"]) if sim.get("admin") else {}
    except AdminError:
        doc = {}
    state = doc.get("state")
    return {"name": pod["name"], "node": pod["node"], "state": state, "sim_up": state is not None,
            "nonna_up": health is not None, "nonna_ready": health == 200,
            "transition": doc.get("transition")}  # fmt: skip


async def _table(client: AdminClient, replica: dict) -> dict:
    entry: dict[str, Any] = {"name": replica["name"], "admin": replica["admin"]}
    if not replica.get("admin"):  # not running now (the runner is restarting it)
        return {**entry, "up": False, "error": "not running", "pods": []}
    try:
        table = await client.pod_table(replica["admin"])
    except AdminError as exc:
        return {**entry, "up": False, "error": str(exc), "pods": []}
    return {**entry, "up": True, "policy": table.get("policy"), "pods": table.get("pods", [])}


async def collect(client: AdminClient, document: dict) -> dict:
    """Probe every process of the fleet in ``document``; the document plus pod probes, tables and nodes."""
    pods, replicas = await asyncio.gather(
        asyncio.gather(*(_probe_pod(client, pod) for pod in document["pods"])),
        asyncio.gather(*(_table(client, replica) for replica in document["katyusha"])),
    )
    live = {"fleet": document, "pods": list(pods), "replicas": list(replicas)}
    live["nodes"] = node_view(live)
    return live


def node_view(live: dict) -> list[dict]:
    """Per node: capacity (None when not known), pods with states, requests of serving pods, images on disk."""
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
            state = state_named(probe.get("state"))
            pods.append({"name": pod["name"], "state": probe.get("state"), "service": service.get("name")})
            if state in SERVING:
                cpu += service.get("cpu_m", 0)
                ram += service.get("ram_mib", 0)
            if state in IMAGE_ON_DISK and service.get("image"):
                images.add(service["image"])
        view.append({
            "name": node["name"], "cpu_m": node.get("cpu_m"), "ram_mib": node.get("ram_mib"),
            "max_pods": node.get("max_pods"), "labels": node.get("labels", {}), "taints": node.get("taints", []),
            "pods": pods, "serving": sum(1 for p in pods if state_named(p["state"]) in SERVING),
            "requested_cpu_m": cpu, "requested_ram_mib": ram, "images": sorted(images),
        })  # fmt: skip
    return view

