"""PNG plots of a run (matplotlib, from the ``bench`` extra): latency CDF, pods per service, node CPU and RAM."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - the bench extra is not installed
        raise OSError("plots need matplotlib: pip install 'katyusha[bench]' (or pass --no-plots)") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cdf(latencies: dict[str, dict[str, list[float]]], path: Path) -> None:
    """Latency CDFs: one panel per service, one line per label (a policy, or the run), log x axis in ms."""
    plt = _pyplot()
    services = sorted({service for by_service in latencies.values() for service in by_service})
    fig, axes = plt.subplots(1, max(1, len(services)), figsize=(5.5 * max(1, len(services)), 4.2), squeeze=False)
    for ax, service in zip(axes[0], services, strict=False):
        for label, by_service in latencies.items():
            ordered = sorted(by_service.get(service, ()))
            if not ordered:
                continue
            n = len(ordered)
            ax.plot(ordered, [(i + 1) / n for i in range(n)], label=label)
        ax.set_xscale("log")
        ax.set_title(service)
        ax.set_xlabel("latency (ms)")
        ax.set_ylabel("fraction of requests")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def plot_run(folder: Path, summary: dict) -> None:
    """latency_cdf.png, pods.png (serving pods per service) and nodes.png from a run's CSV files."""
    plt = _pyplot()
    latencies: dict[str, list[float]] = defaultdict(list)
    requests = folder / "requests.csv"
    if requests.exists():
        with open(requests, encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                if not row["drop"]:
                    latencies[row["service"]].append(float(row["latency_ms"]))
        plot_cdf({summary.get("policy", "run"): dict(latencies)}, folder / "latency_cdf.png")
    serving: dict[str, list[tuple[float, int]]] = defaultdict(list)
    count: dict[str, int] = defaultdict(int)
    with open(folder / "pods.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            was, now = row["from"] in ("warm", "active"), row["to"] in ("warm", "active")
            if was != now:
                count[row["service"]] += 1 if now else -1
                serving[row["service"]].append((float(row["t"]), count[row["service"]]))
    fig, ax = plt.subplots(figsize=(7, 4))
    end = float(summary.get("simulated_s", 0.0))
    for service, points in serving.items():
        points = [*points, (max(end, points[-1][0]), points[-1][1])]
        ax.step([0.0] + [t for t, _ in points], [0] + [c for _, c in points], where="post", label=service)
    ax.set_xlabel("simulated time (s)")
    ax.set_ylabel("serving pods")
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "pods.png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    cpu: dict[float, float] = defaultdict(float)
    ram: dict[float, float] = defaultdict(float)
    peak_cpu: dict[float, float] = defaultdict(float)
    with open(folder / "nodes.csv", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            t = float(row["t"])
            cpu[t] += float(row["cpu_cores"])
            ram[t] += float(row["ram_mb"])
            peak_cpu[t] = max(peak_cpu[t], float(row["cpu_cores"]))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    times = sorted(cpu)
    top.plot(times, [cpu[t] for t in times], label="all nodes")
    top.plot(times, [peak_cpu[t] for t in times], label="busiest node")
    top.set_ylabel("CPU (cores)")
    top.legend()
    bottom.plot(times, [ram[t] for t in times])
    bottom.set_ylabel("RAM, all nodes (MB)")
    bottom.set_xlabel("simulated time (s)")
    fig.tight_layout()
    fig.savefig(folder / "nodes.png", dpi=110, metadata={"Software": None})
    plt.close(fig)
