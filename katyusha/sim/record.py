"""What a run records: requests (t1..t4 or the drop), pod states, autoscaler decisions, placements, node use.

A :class:`Recorder` keeps the summary figures in memory and either writes
each table as CSV into a folder (:meth:`Recorder.to_folder`) or keeps the
rows (``keep=True``, for tests and notebooks). Rows go out in the order the
simulation produced them, and floats are written with fixed precision, so
the same scenario and seed give byte-identical files.
"""

from __future__ import annotations

import csv
import json
from array import array
from pathlib import Path
from typing import IO

TABLES = {
    "requests": ("service", "replica", "pod", "node", "t1", "t2", "t3", "t4", "t_done", "latency_ms", "status",
                 "drop"),
    "pods": ("t", "pod", "service", "node", "from", "to"),
    "decisions": ("t", "service", "desired", "actual", "ready", "panic", "stable_value", "panic_value", "reason"),
    "placements": ("t", "service", "action", "pod", "node", "from"),
    "nodes": ("t", "node", "region", "cpu_cores", "ram_mb", "serving_pods"),
}


def _cell(value) -> object:
    if isinstance(value, float):
        return f"{value:.6f}"
    if value is None:
        return ""
    return value


class Recorder:
    """The tables of one run, streamed to CSV or kept, and the per-service figures of ``summary.json``."""

    def __init__(self, services: list[str], *, folder: Path | None = None, keep: bool = False,
                 requests: bool = True):
        self.keep = keep
        self.request_rows = requests
        # Whether a request's row goes anywhere (kept, or a folder to write it to).
        self._request_rows = requests and (keep or folder is not None)
        self.rows: dict[str, list[tuple]] = {name: [] for name in TABLES}
        self._files: dict[str, IO[str]] = {}
        self._writers: dict[str, object] = {}
        self.folder = folder
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            for name, header in TABLES.items():
                if name == "requests" and not requests:
                    continue
                handle = open(folder / f"{name}.csv", "w", encoding="utf-8", newline="")
                writer = csv.writer(handle, lineterminator="\n")
                writer.writerow(header)
                self._files[name] = handle
                self._writers[name] = writer
        self.latencies: dict[str, array] = {s: array("d") for s in services}
        self.drops: dict[str, dict[str, int]] = {s: {} for s in services}

    def row(self, table: str, values: tuple) -> None:
        if self.keep:
            self.rows[table].append(values)
        writer = self._writers.get(table)
        if writer is not None:
            writer.writerow([_cell(v) for v in values])  # type: ignore[attr-defined]

    def request(self, service: str, replica: int, pod: str | None, node: str | None, t1: float, t2, t3, t4,
                done: float, status: int, drop: str | None) -> None:
        latency_ms = (done - t1) * 1000.0
        if drop is None:
            self.latencies[service].append(latency_ms)
        else:
            counts = self.drops[service]
            counts[drop] = counts.get(drop, 0) + 1
        if self._request_rows:
            self.row("requests", (service, replica, pod, node, t1, t2, t3, t4, done, latency_ms, status, drop))

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._writers.clear()


def percentile(sorted_values, q: float) -> float | None:
    """The nearest-rank ``q``-th percentile (0..100) of ``sorted_values``; None when empty."""
    n = len(sorted_values)
    if not n:
        return None
    rank = max(1, -(-q * n // 100))
    return sorted_values[int(min(rank, n)) - 1]


def latency_figures(values) -> dict:
    """p50, p99, p99.9 and mean latency (ms) of ``values``, rounded to the microsecond."""
    ordered = sorted(values)
    out = {}
    for name, q in (("p50_ms", 50), ("p99_ms", 99), ("p999_ms", 99.9)):
        got = percentile(ordered, q)
        out[name] = None if got is None else round(got, 3)
    out["mean_ms"] = round(sum(ordered) / len(ordered), 3) if ordered else None
    return out


def write_summary(path: Path, summary: dict) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
