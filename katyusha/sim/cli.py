"""``katyusha sim SCENARIO.yaml``: run a scenario under simulated time; ``--policies`` compares several."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from katyusha.core.errors import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="katyusha sim",
        description="Run a scenario (nodes, services, workloads, katyusha, KPA, placement) on simulated time.",
    )
    parser.add_argument("scenario", help="the scenario file (YAML; docs/simulator.md)")
    parser.add_argument("--out", default="sim-out", help="folder for the CSV tables, summary.json and plots "
                                                        "(default: sim-out)")
    parser.add_argument("--seed", type=int, default=None, help="override the scenario's seed")
    parser.add_argument("--policies", default=None,
                        help="comparison mode: comma-separated policies run on the same arrivals, "
                             "each into OUT/<policy>/, with one table and one CDF plot")
    parser.add_argument("--no-plots", action="store_true", help="write no PNG plots")
    parser.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                        help="progress bar (auto: only when stderr is a terminal)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from katyusha.sim.compare import compare, table
    from katyusha.sim.engine import run_scenario
    from katyusha.sim.scenario import load

    progress = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    out = Path(args.out)
    try:
        scenario = load(args.scenario, seed=args.seed)
        started = time.perf_counter()
        if args.policies:
            policies = [p.strip() for p in args.policies.split(",") if p.strip()]
            rows = compare(scenario, policies, out, progress=progress, plots=not args.no_plots)
            sys.stdout.write(table(rows))
        else:
            summary, sim = run_scenario(scenario, out, progress=progress)
            if not args.no_plots:
                from katyusha.sim.plots import plot_run

                plot_run(out, summary)
            sys.stdout.write(json.dumps(summary["services"], indent=2, sort_keys=True) + "\n")
        sys.stderr.write(f"katyusha sim: wrote {out}/ in {time.perf_counter() - started:.2f}s of wall time\n")
    except ConfigError as exc:
        sys.stderr.write(f"katyusha sim: {args.scenario}: {exc}\n")
        return 2
    except OSError as exc:
        sys.stderr.write(f"katyusha sim: {exc}\n")
        return 2
    return 0
