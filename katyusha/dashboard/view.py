"""``/dashboard/data`` of a katyusha process group, from each worker's state and samples.

Pure. Each worker's feed (katyusha.dashboard.feed) describes a service as it
is now (:func:`katyusha.dashboard.feed.DashboardFeed.raw`: queue, pod rows,
cumulative responses) and keeps its per-second points; with ``--workers N``
worker 0 gathers every worker's description and points and :func:`service`
shows them as one katyusha: counts, rates, in flight and the L1 queue are
summed over the workers, quantiles are read from the summed sketches, a
pod's nonna queue is the freshest (largest) any worker holds, and a pod is
shown ready only when every worker has it ready (else the worst health any
worker has, with how many workers see it so).
"""

from __future__ import annotations

from collections.abc import Sequence

from katyusha.dashboard.samples import Point, ServiceSamples, merge_points

SERIES_S = 180  # seconds of history each /dashboard/data answer carries
RATE_S = 3  # the rates shown as figures (service and pods alike) are means over this many seconds
QUANTILE_S = 5  # the service's p50/p99 figures: every request of the last 5 s
POD_QUANTILE_S = 10  # a pod's p50/p99 figures: every request of the last 10 s

_SUMMED_POD = ("in_flight", "estimated_load", "failures")
_MOST_POD = ("reported_queue", "reported_in_flight", "ejected_until_s")


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _merge_pods(instants: Sequence[dict]) -> list[dict]:
    rows: dict[str, list[dict]] = {}
    for doc in instants:
        for row in doc["pods"]:
            rows.setdefault(row["name"], []).append(row)
    out = []
    for seen in rows.values():
        row = dict(seen[0])
        for key in _SUMMED_POD:
            values = [r.get(key) for r in seen if r.get(key) is not None]
            row[key] = sum(values) if values else None
        for key in _MOST_POD:
            values = [r.get(key) for r in seen if r.get(key) is not None]
            row[key] = max(values) if values else None
        ewmas = [r["latency_ewma_ms"] for r in seen if r.get("latency_ewma_ms") is not None]
        row["latency_ewma_ms"] = sum(ewmas) / len(ewmas) if ewmas else None
        unready = [r for r in seen if not r.get("ready")]
        if unready or len(seen) < len(instants):
            worst = unready[0] if unready else {"health": "unknown", "health_cause": "not in every worker's table"}
            row["ready"] = False
            row["health"], row["health_cause"] = worst.get("health"), worst.get("health_cause")
            if len(instants) > 1:
                bad = len(unready) + len(instants) - len(seen)
                row["health_cause"] = f"{row['health_cause'] or row['health']} in {bad} of {len(instants)} workers"
        out.append(row)
    return out


def service(instants: Sequence[dict], samples: ServiceSamples) -> dict:
    """One service as the page shows it: ``instants`` are the workers' descriptions (one without
    ``--workers``), ``samples`` their points merged (katyusha.dashboard.samples.merge_points)."""
    first = instants[0]
    draining = sorted({name for doc in instants for name in doc.get("draining", ())})
    responses: dict[tuple[int, str], int] = {}
    for doc in instants:
        for status, pod, count in doc["responses"]:
            responses[(status, pod)] = responses.get((status, pod), 0) + count
    errors: dict[str, int] = {}
    requests: dict[str, int] = {}
    for (status, pod), count in responses.items():
        if status >= 400:
            errors[str(status)] = errors.get(str(status), 0) + count
        if pod:
            requests[pod] = requests.get(pod, 0) + count
    pods = []
    for row in _merge_pods(instants):
        name = row["name"]
        pods.append({
            **row, "draining": name in draining,
            "rps": round(samples.pod_rps(name, RATE_S), 2), "requests": requests.get(name, 0),
            "p50_ms": _round(samples.quantile_ms(0.5, POD_QUANTILE_S, name)),
            "p99_ms": _round(samples.quantile_ms(0.99, POD_QUANTILE_S, name)),
        })  # fmt: skip
    # A pod being drained has left the table but still answers what it holds.
    for name in sorted(set(draining) - {p["name"] for p in pods}):
        pods.append({"name": name, "draining": True, "ready": False, "rps": round(samples.pod_rps(name, RATE_S), 2),
                     "requests": requests.get(name, 0)})  # fmt: skip
    queue = dict(first["queue"])
    if len(instants) > 1:
        for key, value in first["queue"].items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                queue[key] = sum(doc["queue"].get(key) or 0 for doc in instants)
    return {
        "name": first["name"], "policy": first["policy"], "workers": len(instants),
        "ready_pods": max(doc["ready_pods"] for doc in instants),
        "queue": queue, "l1_waiting": queue.get("waiting"), "l1_active": queue.get("active"),
        "rps": _round(samples.rps(RATE_S)),
        "p50_ms": _round(samples.quantile_ms(0.5, QUANTILE_S)), "p99_ms": _round(samples.quantile_ms(0.99, QUANTILE_S)),
        "errors_by_status": errors, "requests": sum(requests.values()), "pods": pods,
        "series": samples.series(SERIES_S, [p["name"] for p in pods]),
    }  # fmt: skip


class Group:
    """Worker 0's copy of every worker's points, fed by their ``/dashboard/raw`` answers.

    Each poll asks each worker only for the points after the last one
    copied (:meth:`since`), so a poll moves a second or two of points, not
    the whole history.
    """

    def __init__(self, workers: int, window_s: int = SERIES_S):
        self.window_s = window_s
        self.rings: list[dict[str, ServiceSamples]] = [{} for _ in range(workers)]

    def since(self, worker: int) -> float | None:
        """The time of the newest point copied from ``worker`` (None: none yet, send everything)."""
        ats = [ring.points[-1].at for ring in self.rings[worker].values() if ring.points]
        return max(ats) if ats else None

    def data(self, raws: Sequence[dict | None], only: str | None = None) -> dict:
        """``/dashboard/data`` of the group from each worker's ``/dashboard/raw`` (None: it did not answer;
        its points copied so far still count)."""
        instants: dict[str, list[dict]] = {}
        for worker, raw in enumerate(raws):
            for doc in (raw or {}).get("services", []):
                ring = self.rings[worker].setdefault(doc["name"], ServiceSamples(self.window_s))
                ring.extend(Point.from_json(p) for p in doc.get("points", ()))
                instants.setdefault(doc["name"], []).append(doc)
        services = []
        for name, docs in instants.items():
            if only not in (None, name):
                continue
            merged = ServiceSamples(self.window_s, merge_points(
                worker.get(name, ServiceSamples(0)).points for worker in self.rings))
            services.append(service(docs, merged))
        at = max((raw["at"] for raw in raws if raw), default=None)
        return {"kind": "katyusha", "at": at, "period_s": 1.0, "workers": len(raws),
                "workers_up": sum(1 for raw in raws if raw), "services": services}
