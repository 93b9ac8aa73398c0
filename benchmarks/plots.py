"""PNG plots every benchmark shares (matplotlib, the `bench` extra): one look, units on every axis.

``beside(json_path, name)`` is where a benchmark writes a PNG next to its
JSON (``overhead.json`` -> ``overhead-throughput.png``). Each plot function
takes plain data and a path, and returns the path written, or None (with a
message) when matplotlib is not installed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

# katyusha in one colour family, peers in another, so a reader finds us at a glance.
KATYUSHA = ("#c0262d", "#e0656a", "#8a1a20", "#f0a0a3")
PEERS = ("#2563eb", "#1f9d55", "#c98a00", "#6b7280", "#7c3aed")


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


def colours(names: Sequence[str]) -> dict[str, str]:
    """A colour per system: katyusha's variants red, peers blue/green/..."""
    ours = iter(KATYUSHA * 4)
    theirs = iter(PEERS * 4)
    return {name: next(ours) if name.startswith("katyusha") else next(theirs) for name in names}


def _save(fig, plt, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def bars(path: str | Path, groups: Mapping[str, Mapping[str, float]], *, title: str, ylabel: str,
         xlabel: str = "") -> Path | None:
    """Grouped bars: ``groups[group][system] = value`` (e.g. req/s per system per connection count)."""
    plt = _pyplot()
    if plt is None:
        return None
    systems = list(dict.fromkeys(name for values in groups.values() for name in values))
    colour = colours(systems)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(groups) * len(systems) / 2), 4.2))
    width = 0.8 / max(1, len(systems))
    for index, system in enumerate(systems):
        xs = [g + index * width for g in range(len(groups))]
        ys = [values.get(system, 0.0) for values in groups.values()]
        ax.bar(xs, ys, width, label=system, color=colour[system])
    ax.set_xticks([g + width * (len(systems) - 1) / 2 for g in range(len(groups))], list(groups))
    ax.set_ylabel(ylabel)
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
