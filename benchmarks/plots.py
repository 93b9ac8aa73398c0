"""PNG plots every benchmark shares (matplotlib, the `bench` extra): one look, units on every axis.

Every benchmark's main() ends with ``plots.save("NAME", document, args.json)``, which writes the JSON, then
``plots.write("NAME", document, args.json)``:
the plotter registered for NAME (:data:`PLOTTERS`) draws the benchmark's
PNGs from the very JSON document it wrote, next to it (``beside(json_path,
name)``: ``overhead.json`` -> ``overhead-throughput.png``), so a PNG can be
drawn again from a kept JSON (``python -m benchmarks.plots NAME FILE.json``).
Each plot function takes plain data and a path, and returns the path
written, or None (with a message) when matplotlib is not installed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# katyusha in one colour family, peers in another, so a reader finds us at a glance.
KATYUSHA = ("#c0262d", "#e0656a", "#8a1a20", "#f0a0a3")
PEERS = ("#2563eb", "#1f9d55", "#c98a00", "#6b7280", "#7c3aed", "#0e7490", "#db2777", "#65a30d", "#b45309",
         "#1e3a8a", "#0891b2", "#a16207", "#9333ea", "#374151")


def beside(json_path: str | Path, name: str) -> Path:
    """The PNG path for plot ``name`` next to ``json_path``."""
    path = Path(json_path)
    return path.with_name(f"{path.stem}-{name}.png")


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        print("matplotlib not installed: no PNG (pip install -e '.[bench]')")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def ours(name: str) -> bool:
    """katyusha's variants, and the tree under test in a benchmark beside an earlier commit (its peer)."""
    return name.startswith("katyusha") or name == "this tree"


def colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per system: katyusha's variants red, peers (an earlier commit among them) blue/green/..."""
    mine = iter(KATYUSHA * 4)
    theirs = iter(PEERS * 4)
    return {name: next(mine) if ours(name) else next(theirs) for name in names}


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bars(path: str | Path, groups: Mapping[str, Mapping[str, float]], *, title: str, ylabel: str,
         xlabel: str = "", log: bool = False) -> Path | None:
    """Grouped bars: ``groups[group][system] = value`` (e.g. req/s per system per connection count)."""
    plt = _pyplot()
    if plt is None:
        return None
    systems = list(dict.fromkeys(name for values in groups.values() for name in values))
    colour = colours(systems)
    fig, ax = plt.subplots(figsize=(min(14.0, max(6.0, 0.3 * len(groups) * len(systems) + 2)), 4.6))
    width = 0.8 / max(1, len(systems))
    for index, system in enumerate(systems):
        xs = [g + index * width for g in range(len(groups))]
        ys = [values.get(system, 0.0) for values in groups.values()]
        ax.bar(xs, ys, width, label=system, color=colour[system])
    ax.set_xticks([g + width * (len(systems) - 1) / 2 for g in range(len(groups))], list(groups))
    if sum(len(str(group)) for group in groups) > 60:
        # Long group names (chaos's runs, placement's cases) would overlap: slant them.
        ax.tick_params(axis="x", labelrotation=25)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    if xlabel:
        ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def latency_cdf(path: str | Path, panels: Mapping[str, Mapping[str, Sequence[float]]], *, title: str,
                tail_from: float = 0.0) -> Path | None:
    """One CDF panel per key of ``panels``; each maps system -> latencies in ms (any order)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), squeeze=False)
    for ax, (panel, by_system) in zip(axes[0], panels.items(), strict=True):
        colour = colours(list(by_system))
        for system, values in by_system.items():
            values = sorted(values)
            if not values:
                continue
            n = len(values)
            style = "-" if system.startswith("katyusha") else "--"
            ax.plot(values, [(i + 1) / n for i in range(n)], style, label=system, linewidth=1.2,
                    color=colour[system])
        ax.set_xscale("log")
        ax.set_ylim(tail_from, 1.0005)
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("fraction of requests" + (f" (from {tail_from:g})" if tail_from else ""))
        ax.set_title(f"{title}: {panel}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, plt, path)


def timeline(path: str | Path, t: Sequence[float], series: Mapping[str, Sequence[float]], *, title: str,
             ylabel: str, xlabel: str = "time (s)") -> Path | None:
    """Lines over time on one axis (e.g. pods over time, requests per second)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(8, 4))
    colour = colours(list(series))
    for name, values in series.items():
        ax.plot(t, values, label=name, color=colour[name], linewidth=1.3, drawstyle="steps-post")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def panels(path: str | Path, t: Sequence[float], rows: Mapping[str, Mapping[str, Sequence[float]]], *,
           title: str, xlabel: str = "time (s)") -> Path | None:
    """Timelines stacked on a shared x axis: ``rows[ylabel][name] = values`` (e.g. RSS and descriptors)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 2.6 * len(rows) + 0.6), sharex=True, squeeze=False)
    for ax, (ylabel, series) in zip(axes[:, 0], rows.items(), strict=True):
        colour = colours(list(series))
        for name, values in series.items():
            ax.plot(t[:len(values)], values, label=name, color=colour[name], linewidth=1.3)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    axes[0, 0].set_title(title)
    axes[-1, 0].set_xlabel(xlabel)
    return _save(fig, plt, path)


# ---------------------------------------------------------------------------------------------------
# One plotter per benchmark: its JSON document in, its PNGs next to that JSON out.
# A benchmark's main() ends with ``plots.save("NAME", document, args.json)``: the JSON, then ``write``.

Plotter = Callable[[dict, Path], list]
PLOTTERS: dict[str, Plotter] = {}


def plotter(name: str):
    def register(function: Plotter) -> Plotter:
        PLOTTERS[name] = function
        return function

    return register


def write(benchmark: str, document: dict, json_path: str | Path | None) -> list[Path]:
    """Write ``benchmark``'s PNGs for ``document`` next to ``json_path`` and print where; none without a path.

    A plot that fails is reported and skipped: the figures in the JSON matter more than a picture.
    """
    if not json_path:
        return []
    try:
        written = [Path(p) for p in PLOTTERS[benchmark](document, Path(json_path)) if p is not None]
    except Exception as exc:  # noqa: BLE001 - a picture never fails a benchmark
        print(f"plots for {benchmark}: not written ({type(exc).__name__}: {exc})")
        return []
    for path in written:
        print(f"wrote {path}")
    return written


def save(benchmark: str, document: dict, json_path: str | Path | None) -> list[Path]:
    """Write ``document`` as ``json_path`` (indented, one trailing newline) and print where, then its PNGs.

    The ending every benchmark's main() shares; nothing is written without a path.
    """
    if not json_path:
        return []
    Path(json_path).write_text(json.dumps(document, indent=2) + "\n")
    print(f"wrote {json_path}")
    return write(benchmark, document, json_path)


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


@plotter("dropin")
def _dropin(doc: dict, at: Path) -> list:
    systems = doc["systems"]
    return [
        bars(beside(at, "latency"), {"p50": doc["median_p50_ms"], "p99": doc["median_p99_ms"],
                                     "p99.9": {s: _median([r["p999_ms"] for r in rows]) for s, rows in systems.items()}},
             title=f"drop-in: 4 apps (one 4x slower) at {doc['load']:.0%} load, median of {doc['runs']} runs",
             ylabel="latency (ms)"),
        bars(beside(at, "p99-by-run"),
             {f"run {i + 1}": {s: rows[i]["p99_ms"] for s, rows in systems.items() if i < len(rows)}
              for i in range(doc["runs"])},
             title="drop-in: p99 of each run (systems interleaved)", ylabel="p99 latency (ms)"),
    ]


@plotter("chaos")
def _chaos(doc: dict, at: Path) -> list:
    runs = doc["runs"]
    written = [
        bars(beside(at, "latency"), {name: {"katyusha p50": row["p50_ms"], "katyusha p99": row["p99_ms"]}
                                     for name, row in runs.items()},
             title=f"chaos: {doc.get('rate')} req/s, {doc['duration_s']:g} s per run", ylabel="latency (ms)"),
        bars(beside(at, "outcomes"),
             {name: {"failed": 100 * row["failed"] / max(row["sent"], 1),
                     "unanswered": 100 * row["unanswered"] / max(row["sent"], 1)} for name, row in runs.items()},
             title="chaos: requests that failed or got no answer", ylabel="share of requests sent (%)"),
    ]
    after = {name: row["timeline"] for name, row in runs.items() if row.get("timeline")}
    if after:
        t = [step["offset_s"] for step in next(iter(after.values()))]

        def values(steps: list, key: str) -> list[float]:
            return [float("nan") if step.get(key) is None else step[key] for step in steps]

        written.append(panels(
            beside(at, "after-return"), t,
            {f"{name} p99 (ms)": {"requests sent then": values(steps, "p99_ms"),
                                  "baseline run, same moments": values(steps, "baseline_p99_ms")}
             for name, steps in after.items()},
            title="chaos: p99 of requests sent in each 0.25 s around a process's return (0: it is ready)",
            xlabel="seconds from the return"))
    return written


@plotter("soak")
def _soak(doc: dict, at: Path) -> list:
    over = doc.get("over_time") or {}
    written = [bars(beside(at, "memory"), {"RSS": {"idle": doc["rss_idle_mb"], "after warm-up": doc["rss_after_warmup_mb"],
                                                   "end": doc["rss_end_mb"], "peak": doc["rss_peak_mb"]}},
                    title=f"soak: katyusha's memory over {doc['requests']:,} requests", ylabel="RSS (MB)")]
    if over.get("t"):
        written.append(panels(beside(at, "over-time"), over["t"],
                              {"katyusha RSS (MB)": {"katyusha RSS": over["rss_mb"]},
                               "open descriptors": {"katyusha fds": over["fds"]}},
                              title=f"soak: {doc['rate_achieved']:,} req/s, connections come and go"))
    return written


@plotter("placement")
def _placement(doc: dict, at: Path) -> list:
    def case(row: dict) -> str:
        return f"{row['nodes']:,} nodes\n{row['pods']:,} pods"

    names = {"flow": "min-cost flow", "pod_at_a_time": "pod at a time"}
    return [
        bars(beside(at, "seconds"), {case(r): {label: r[key]["seconds"] for key, label in names.items()}
                                     for r in doc["cases"]},
             title="placement of one batch (median wall time)", ylabel="seconds (log scale)", log=True),
        bars(beside(at, "cost"), {case(r): {label: r[key]["total_cost"] for key, label in names.items()}
                                  for r in doc["cases"]},
             title="total placement cost (one cost function; lower is better)", ylabel="total cost"),
    ]


@plotter("policy_micro")
def _policy_micro(doc: dict, at: Path) -> list:
    sizes = list(next(iter(doc["pick_us"].values())))
    return [bars(beside(at, "pick"), {f"{int(n):,} pods": {p: by[n] for p, by in doc["pick_us"].items()}
                                      for n in sizes},
                 title="one pick of each policy (median of runs)", ylabel="µs per pick (log scale)", log=True)]


@plotter("calls_per_request")
def _calls_per_request(doc: dict, at: Path) -> list:
    versions = doc["versions"]
    return [bars(beside(at, "calls"),
                 {"Python functions": {v: d["python_calls"] for v, d in versions.items()},
                  "with built-ins": {v: d["all_calls"] for v, d in versions.items()}},
                 title="calls per body-less request (cProfile, one katyusha worker)", ylabel="calls per request")]


@plotter("bytecodes_per_request")
def _bytecodes_per_request(doc: dict, at: Path) -> list:
    versions = doc["versions"]
    return [bars(beside(at, "bytecodes"), {"bytecodes": {v: d["bytecodes"] for v, d in versions.items()}},
                 title="Python bytecodes per body-less request (fast path, in process)",
                 ylabel="bytecodes per request")]


@plotter("live_cost")
def _live_cost(doc: dict, at: Path) -> list:
    systems = doc["systems"]
    parts = {"user": "user_us_per_request", "kernel": "kernel_us_per_request"}
    return [bars(beside(at, "cpu"), {part: {s: sum(r[key] for r in rows) / len(rows) for s, rows in systems.items()}
                                     for part, key in parts.items()},
                 title=f"CPU a request of the proxy's process (wrk -c{doc['connections']}, mean of rounds)",
                 ylabel="µs per request")]


@plotter("forward_micro")
def _forward_micro(doc: dict, at: Path) -> list:
    systems = doc["systems"]
    return [
        bars(beside(at, "throughput"), {f"{doc['connections']} conns": {s: r["rps"] for s, r in systems.items()}},
             title="forward() beside nginx (wrk -t1, small body)", ylabel="requests per second"),
        bars(beside(at, "latency"), {"p50": {s: r["p50_ms"] for s, r in systems.items()},
                                     "p99": {s: r["p99_ms"] for s, r in systems.items()}},
             title="forward() beside nginx: latency (wrk)", ylabel="latency (ms)"),
    ]


@plotter("fuzz")
def _fuzz(doc: dict, at: Path) -> list:
    history = doc.get("history") or []
    if not history:
        return []
    return [panels(beside(at, "over-time"), [h[0] for h in history],
                   {"inputs run": {f"fuzz {doc['target']}": [h[1] for h in history]},
                    "process RSS (MB)": {f"fuzz {doc['target']}": [h[2] for h in history]}},
                   title=f"fuzzing {doc['target']}: {doc['inputs']:,} inputs, {doc['crashes']} crashes",
                   xlabel="seconds")]


@plotter("sim_clock")
def _sim_clock(doc: dict, at: Path) -> list:
    rates = {"katyusha.sim.clock": doc["clock"]["requests_per_s"]}
    if "simpy" in doc:
        rates["simpy"] = doc["simpy"]["requests_per_s"]
    return [bars(beside(at, "throughput"), {f"M/M/1, {doc['requests']:,} requests": rates},
                 title="simulated requests per wall-clock second", ylabel="simulated requests per second")]


@plotter("sim_scale")
def _sim_scale(doc: dict, at: Path) -> list:
    rates = {"katyusha simulator": doc["requests_per_s"]}
    if doc.get("simfaas"):
        rates[f"SimFaaS here ({doc['simfaas']['requests']:,} requests)"] = doc["simfaas"]["requests_per_s"]
    rates["SimFaaS (published)"] = doc["simfaas_requests_per_s"]
    written = [bars(beside(at, "throughput"), {f"{doc['requests']:,} requests, {doc['pods']:,} pods": rates},
                    title="simulated requests per wall-clock second", ylabel="simulated requests per second")]
    growth = doc.get("growth") or {}
    if growth.get("pods"):
        written.append(bars(beside(at, "growth"), {f"{r['pods']:,} pods": {"wall s": r["wall_s"]} for r in growth["pods"]},
                            title="the same 100k requests on more pods", ylabel="wall-clock seconds"))
    return written


@plotter("sim_vs_live")
def _sim_vs_live(doc: dict, at: Path) -> list:
    written = []
    for q in ("p50", "p99"):
        groups = {}
        for scenario, sims in doc["sim"].items():
            lives = doc["live"].get(scenario, {})
            groups[scenario] = {**{f"katyusha {p} sim": r[f"{q}_ms"] for p, r in sims.items()},
                                **{f"{p} live": r[f"{q}_ms"] for p, r in lives.items()}}
        written.append(bars(beside(at, q), groups, title=f"simulated (red) and live (blue) {q} per policy",
                            ylabel=f"{q} latency (ms)"))
    return written


@plotter("tail_model")
def _tail_model(doc: dict, at: Path) -> list:
    settings = [k for k in next(iter(doc["scenarios"].values())) if k != "split"]
    return [
        bars(beside(at, "p99"), {name: {s: row[s]["p99_ms"] for s in settings} for name, row in doc["scenarios"].items()},
             title=f"modelled p99 per scenario at {doc['load']:.0%} load", ylabel="p99 latency (ms, log scale)",
             log=True),
        bars(beside(at, "ratio"), doc["median_ratio_to_best"],
             title="median over scenarios of p99 / the better peer model's", ylabel="p99 ratio (lower is better)"),
    ]


@plotter("policy_share")
def _policy_share(doc: dict, at: Path) -> list:
    # Median requests the slow pod served, per setting (groups) and policy (bars).
    groups = {label: {policy: _median(runs) for policy, runs in by_policy.items()} for label, by_policy in doc.items()}
    return [bars(beside(at, "slow-pod"), groups, ylabel="requests the slow pod served",
                 title="requests sent to the slow pod (of 150 per replica; lower is better)")]


@plotter("coldstart")
def _coldstart(doc: dict, at: Path) -> list:
    samples = doc.get("pods_over_time") or []
    written = []
    if samples:
        written.append(timeline(beside(at, "pods"), [s["t"] for s in samples],
                                {k: [s[k] for s in samples] for k in ("desired", "serving", "starting", "retiring")},
                                title=f"scale from zero: {doc['plan']['rate']:g} req/s for {doc['plan']['step_s']:g} s",
                                ylabel="pods"))
    systems = {"katyusha": doc}
    if doc.get("peer"):
        systems["nginx"] = doc["peer"]
    written.append(bars(beside(at, "latency"), {
        "p50": {s: r["p50_ms"] or 0 for s, r in systems.items()}, "p99": {s: r["p99_ms"] or 0 for s, r in systems.items()}},
        title="scale from zero: latency of the step", ylabel="latency (ms)"))
    written.append(bars(beside(at, "errors"), {"errors": {s: r["errors"] for s, r in systems.items()}},
                        title="scale from zero: requests that failed", ylabel="requests"))
    return written


@plotter("batch")
def _batch(doc: dict, at: Path) -> list:
    return [batch_timeline(beside(at, "over-time"), doc)]


def batch_timeline(path: str | Path, result: dict) -> Path | None:
    """Rows written per second and pods over time of each batch run (benchmarks.batch's JSON)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, (rates_ax, pods_ax) = plt.subplots(2, 1, figsize=(9, 7), sharex=True)
    for name, run in result["runs"].items():
        points = run["timeline"]
        # Rows written per second over 1 s (two samples), as batches land every 0.5 s or 40 rows.
        pairs = list(zip(points, points[2:], strict=False))
        times = [b[0] for _, b in pairs]
        rates = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in pairs]
        line, = rates_ax.plot(times, rates, label=f"{name} ({run['rows_per_s']} rows/s, {run['wall_s']} s)")
        pods_ax.step([p[0] for p in points], [p[2] for p in points], where="post", color=line.get_color(),
                     label=f"{name}: serving (max {run['max_pods']}, back to 0 in {run['back_to_zero_s']} s)")
        pods_ax.step([p[0] for p in points], [p[2] + p[3] for p in points], where="post",
                     color=line.get_color(), linestyle=":", linewidth=1)
        for ax in (rates_ax, pods_ax):
            ax.axvline(run["wall_s"], color=line.get_color(), linestyle="--", linewidth=0.8)
        for when, what in run["events"]:
            rates_ax.axvline(when, color=line.get_color(), linestyle=":", linewidth=1)
            rates_ax.annotate(what, (when, 0), rotation=90, fontsize=7, va="bottom", ha="right")
    rates_ax.set_ylabel("rows written per second")
    rates_ax.set_title(f"katyusha batch: {result['rows']} sentences, sentiment pods autoscaled on rps from zero "
                       f"(speedup 6 vs 1: {result.get('speedup_6_vs_1')}x)", fontsize=9)
    rates_ax.grid(True, alpha=0.3)
    rates_ax.legend(fontsize=8)
    pods_ax.set_ylabel("pods (dotted: serving + waking)")
    pods_ax.set_xlabel("seconds since the run started (dashed: the batch finished)")
    pods_ax.grid(True, alpha=0.3)
    pods_ax.legend(fontsize=8)
    return _save(fig, plt, path)


def step_timeline(path: str | Path, *, title: str, load: tuple[Sequence[float], Sequence[float]],
                  samples: Sequence[Mapping], latencies: Mapping[str, Sequence[tuple[float, float]]]) -> Path | None:
    """A load step over time (benchmarks.coldstart): requests sent per second, pods (``samples``: t, serving,
    desired, starting) and every request's latency (``latencies[label] = [(t, ms)]``, log scale)."""
    plt = _pyplot()
    if plt is None:
        return None
    fig, (ax_load, ax_pods, ax_lat) = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    ax_load.step(load[0], load[1], where="post", color=PEERS[0])
    ax_load.set_ylabel("requests/s sent")
    ax_load.set_title(title)
    ts = [s["t"] for s in samples]
    ax_pods.step(ts, [s["serving"] for s in samples], where="post", label="serving", color=PEERS[1])
    ax_pods.step(ts, [s["desired"] for s in samples], where="post", label="desired", color=PEERS[2], linestyle="--")
    ax_pods.step(ts, [s["starting"] for s in samples], where="post", label="starting", color=PEERS[3])
    ax_pods.set_ylabel("pods")
    ax_pods.legend(loc="upper right")
    styles = iter([(PEERS[0], "o", 3), (KATYUSHA[0], "o", 6), (PEERS[4], "x", 6)] * 2)
    for label, points in latencies.items():
        colour, marker, size = next(styles)
        if points:
            ax_lat.scatter([p[0] for p in points], [p[1] for p in points], s=size, marker=marker, label=label,
                           color=colour)
    ax_lat.set_yscale("log")
    ax_lat.set_ylabel("latency (ms, log scale)")
    ax_lat.set_xlabel("seconds")
    ax_lat.legend(loc="upper right")
    for ax in (ax_load, ax_pods, ax_lat):
        ax.grid(True, alpha=0.3)
    return _save(fig, plt, path)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.plots NAME FILE.json``: draw NAME's PNGs again from a JSON it wrote."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m benchmarks.plots", description=main.__doc__)
    parser.add_argument("benchmark", choices=sorted(PLOTTERS))
    parser.add_argument("json")
    args = parser.parse_args(argv)
    return 0 if write(args.benchmark, json.loads(Path(args.json).read_text()), args.json) else 1


if __name__ == "__main__":
    raise SystemExit(main())
