"""The control plane's side of the dashboard: the fleet's live view plus every replica's and pod's numbers.

``GET /dashboard/data`` on the control plane answers :func:`fleet_data`: the
fleet view (katyusha.control.fleetview: pod states with the transition under way and
its expected end, load tables, nodes), each pod's CPU/RAM from its monitor
(sim-backend ``GET /monitor``), the autoscaler's view with its
last decision and reason per service, the last placements, and each
katyusha replica's own ``/dashboard/data``. A process that does not answer
shows as down; the page keeps polling.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from katyusha.control.adminclient import AdminClient, AdminError


async def _get(client: AdminClient, url: str) -> Any:
    try:
        return await client.get_json(url, timeout=1.5)
    except AdminError:
        return None


async def _monitor(client: AdminClient, pod: dict) -> dict:
    admin = (pod.get("sim") or {}).get("admin")
    monitor = await _get(client, admin + "/monitor") if admin else None
    return {"monitor": monitor.get("current")} if isinstance(monitor, dict) else {}


async def _replica_data(client: AdminClient, replica: dict) -> Any:
    return await _get(client, replica["admin"] + "/dashboard/data") if replica.get("admin") else None


async def fleet_data(plane) -> dict:
    """The control plane's ``/dashboard/data`` (see the module doc)."""
    client: AdminClient = plane.client
    live = await plane.fleet_view()
    document = live["fleet"]
    extras, replicas = await asyncio.gather(
        asyncio.gather(*(_monitor(client, pod) for pod in document["pods"])),
        asyncio.gather(*(_replica_data(client, r) for r in document["katyusha"])),
    )
    pod_services = (live["fleet"].get("topology") or {}).get("pod_services", {})
    traffic: dict[str, dict[str, float]] = {}
    for data in replicas:
        for service in (data or {}).get("services", []):
            for row in service.get("pods", []):
                seen = traffic.setdefault(row["name"], {"rps": 0.0, "in_flight": 0, "in_sets": 0, "draining": False,
                                                        "queue": None})
                seen["rps"] += row.get("rps") or 0.0
                # nonna's queue as the freshest report any replica holds shows it (the largest).
                if row.get("reported_queue") is not None:
                    seen["queue"] = max(seen["queue"] or 0, row["reported_queue"])
                seen["in_flight"] += row.get("in_flight") or 0
                seen["in_sets"] += 0 if row.get("draining") else 1
                seen["draining"] = seen["draining"] or bool(row.get("draining"))
    pods = []
    for pod, probe, extra in zip(document["pods"], live["pods"], extras, strict=True):
        seen = traffic.get(pod["name"], {})
        pods.append({
            **probe, **extra, "service": pod_services.get(pod["name"]),
            "rps": round(seen.get("rps", 0.0), 2), "in_flight": seen.get("in_flight", 0),
            "in_sets": seen.get("in_sets", 0), "draining": seen.get("draining", False),
            "reported_queue": seen.get("queue"),
            "restarts": (pod.get("sim") or {}).get("restarts", 0) + (pod.get("nonna") or {}).get("restarts", 0),
        })  # fmt: skip
    measured = {}
    for pod in pods:
        monitor = pod.get("monitor") or {}
        node = measured.setdefault(pod["node"], {"cpu_cores": 0.0, "ram_mb": 0.0, "disk_mb": 0.0})
        for key in node:
            node[key] += monitor.get(key) or 0.0
    nodes = [{**node, "measured": measured.get(node["name"])} for node in live["nodes"]]
    return {
        "kind": "fleet", "at": time.time(), "url": document.get("url"),
        "token_required": plane.token is not None,
        "pods": pods, "nodes": nodes,
        "replicas": [{"name": r["name"], "admin": r.get("admin"), "up": data is not None, "data": data}
                     for r, data in zip(document["katyusha"], replicas, strict=True)],
        "autoscaler": live.get("autoscaler"), "placement": live.get("placement"),
    }  # fmt: skip


class Cached:
    """One computation shared by every caller within ``ttl_s`` (several pages poll the same plane)."""

    def __init__(self, make, ttl_s: float = 0.5):
        self.make = make
        self.ttl_s = ttl_s
        self._at = -1e9
        self._task: asyncio.Future | None = None

    async def get(self) -> Any:
        now = time.monotonic()
        if self._task is None or (self._task.done() and now - self._at > self.ttl_s):
            self._at = now
            self._task = asyncio.ensure_future(self.make())
        return await asyncio.shield(self._task)
