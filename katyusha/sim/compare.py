"""Comparison mode: one scenario, several policies, the same arrivals and work; one table, one CDF plot.

Arrivals and each request's work are drawn from streams seeded by the
scenario's seed and the service name only, so every policy sees exactly the
same requests (common random numbers): the differences are the policies'.
"""

from __future__ import annotations

from pathlib import Path

from katyusha.sim.engine import run_scenario
from katyusha.sim.scenario import Scenario

COLUMNS = ("policy", "service", "requests", "drops", "p50_ms", "p99_ms", "p999_ms", "mean_ms", "cold_starts",
           "pod_seconds")


def compare(scenario: Scenario, policies: list[str], out: Path | None = None, *, progress: bool = False,
            plots: bool = True) -> list[dict]:
    """Run ``scenario`` once per policy; rows of :data:`COLUMNS`, per policy and service."""
    rows = []
    latencies = {}
    for policy in policies:
        settings = {**scenario.settings, "policy": policy}
        folder = out / policy if out is not None else None
        summary, sim = run_scenario(scenario, folder, settings=settings, progress=progress)
        latencies[policy] = {service: list(values) for service, values in sim.recorder.latencies.items()}
        for service, figures in summary["services"].items():
            rows.append({"policy": policy, "service": service, **{k: figures[k] for k in COLUMNS[2:]}})
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.csv").write_text(
            ",".join(COLUMNS) + "\n" + "".join(",".join(_text(row[c]) for c in COLUMNS) + "\n" for row in rows),
            encoding="utf-8")
        if plots:
            from katyusha.sim.plots import plot_cdf

            plot_cdf(latencies, out / "latency_cdf.png")
    return rows


def _text(value) -> str:
    return "" if value is None else str(value)


def table(rows: list[dict]) -> str:
    """``rows`` as a fixed-width text table."""
    cells = [[_text(row[c]) for c in COLUMNS] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) if i > 1 else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths, strict=True)))
              for r in cells]
    return "\n".join(lines) + "\n"
