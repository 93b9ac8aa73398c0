"""The seed's batch demo: 14,640 sentences from SQLite through katyusha to sentiment pods.

Run as ``python -m benchmarks.batch [--quick] [--rows N] [--pods N] [--json PATH] [--plot PATH]``.
Installs nothing; generates its data (no download).

The seed's KnativeCon demo sent 14,640 airline tweets through Benthos
(``sql_select`` -> ``http`` -> ``sql_insert``) to a VADER service and showed
that raising the pipeline's threads from 1 to 6 finished sooner. Here the same
number of generated English sentences goes from a SQLite table through
``katyusha batch`` and ``katyusha serve`` to a fixed set of sentiment pods
(``sim-backend --app sentiment`` behind ``nonna``), three times:

* ``mif1``: ``max-in-flight: 1``;
* ``mif6``: ``max-in-flight: 6`` (the peer figure: ``speedup_6_vs_1`` is mif1's
  wall time over mif6's);
* ``mif6_chaos``: ``max-in-flight: 6`` with one pod SIGKILLed (its app and its
  nonna) a third of the way in, and the driver itself SIGKILLed two thirds of
  the way in and started again, which resumes.

For each: wall time, rows/s, rows lost (input ids in neither the output nor the
dead letter; must be 0) and rows written twice (must be 0). A PNG shows
rows/s over time, read from the output table every 0.5 s. A trigger on the
output table logs every update (the upsert's second write of an id), so a
row written twice is counted even though the table keeps one row per id. JSON keys:
``runs[name]`` with ``rows_in``, ``rows_out``, ``lost``, ``duplicated``,
``dead_letters``, ``wall_s``, ``rows_per_s``, ``max_pods``, ``retries``,
``statuses``; and ``speedup_6_vs_1``.

``--clients`` instead compares the driver's HTTP client, aiohttp, with httpx
(the ``bench`` extra installs it): 6,000 POSTs, 6 at a time, through katyusha
to the same pods, two rounds each; wall time and the client process's own CPU
time per request.

Scale from zero (the pods autoscaled on RPS) is not measured yet: the pods are
started warm and stay up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

ROWS = 14_640  # the seed's demo: Twitter US airline sentiment
SENTIMENT = ("--app", "sentiment", "--image-size-mb", "0", "--start-s", "0.3")

_AIRLINES = ["@united", "@AmericanAir", "@SouthwestAir", "@JetBlue", "@USAirways", "@VirginAmerica"]
_OPENERS = ["", "honestly ", "so ", "wow ", "again ", "just landed and ", "thanks, "]
_SUBJECTS = ["the crew", "my flight", "the gate agent", "customer service", "the seat", "the app",
             "boarding", "the wifi", "my luggage", "the pilot", "the lounge", "the snack"]
_GOOD = ["was amazing", "was great", "made my day", "was so friendly", "was on time",
         "was wonderful", "is the best", "was really helpful", "was perfect"]
_BAD = ["was terrible", "was late again", "was rude", "is the worst", "was a disaster",
        "was cancelled", "lost my bag", "was awful", "made me miss my connection"]
_FLAT = ["was fine", "left at 6pm", "is in terminal B", "was a 737", "took two hours",
         "is at gate 12", "was ok I guess"]
_ENDS = ["", "!", "!!", ".", " :)", " :(", " #fail", " #love", " lol", "?"]


def sentences(count: int, seed: int = 14_640) -> list[tuple[int, str]]:
    """``count`` (id, text) rows of tweet-like English, the same for the same seed."""
    rng = random.Random(seed)
    rows = []
    for i in range(1, count + 1):
        mood = rng.choice((_GOOD, _BAD, _BAD, _FLAT))  # the seed's data set was mostly negative
        text = (f"{rng.choice(_AIRLINES)} {rng.choice(_OPENERS)}{rng.choice(_SUBJECTS)} "
                f"{rng.choice(mood)}{rng.choice(_ENDS)}")
        if rng.random() < 0.3:
            text += f" and {rng.choice(_SUBJECTS)} {rng.choice(rng.choice((_GOOD, _BAD, _FLAT)))}"
        rows.append((i, text))
    return rows


def make_input(path: Path, rows: list[tuple[int, str]]) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE tweets (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
        conn.executemany("INSERT INTO tweets VALUES (?, ?)", rows)


def batch_config(path: Path, url: str, db: Path, table: str, max_in_flight: int) -> Path:
    document = {
        "input": {"sqlite": {"path": str(db), "table": "tweets"}},
        "request": {"url": url + "/post", "body": {"text": "{text}"}},
        "max-in-flight": max_in_flight,
        "output": {"sqlite": {
            "path": str(db), "table": table,
            "columns": {"compound": "response.Compound", "negative": "response.Negative",
                        "neutral": "response.Neutral", "positive": "response.Positive"},
            "batch": {"count": 40, "period": "500ms"},  # the seed's Benthos batching
        }},
        "progress": "off",
    }
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def prepare_output(db: Path, table: str) -> None:
    """The output table made in advance, with a trigger that logs every row written twice.

    The driver upserts, so a second write of an id would not show as a second
    row; the trigger on UPDATE (what the upsert's DO UPDATE does) counts it.
    """
    with sqlite3.connect(db) as conn:
        conn.execute(f'CREATE TABLE "{table}" (id INTEGER PRIMARY KEY, compound REAL, negative REAL, '
                     "neutral REAL, positive REAL)")
        conn.execute(f'CREATE TABLE "{table}_rewrites" (id INTEGER)')
        conn.execute(f'CREATE TRIGGER "{table}_rewritten" AFTER UPDATE ON "{table}" '
                     f'BEGIN INSERT INTO "{table}_rewrites" VALUES (NEW.id); END')


class Sampler:
    """Counts the output table's rows every ``period`` s in a thread: (seconds since start, rows)."""

    def __init__(self, db: Path, table: str, period: float = 0.5):
        self.db, self.table, self.period = db, table, period
        self.points: list[tuple[float, int]] = [(0.0, 0)]
        self._stop = threading.Event()
        self.start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _count(self) -> int:
        try:
            with sqlite3.connect(self.db, timeout=5) as conn:
                return conn.execute(f'SELECT count(*) FROM "{self.table}"').fetchone()[0]
        except sqlite3.OperationalError:
            return 0  # the table is created with the first batch

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.points.append((time.monotonic() - self.start, self._count()))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.points.append((time.monotonic() - self.start, self._count()))


def one_run(name: str, url: str, db: Path, workdir: Path, rows_in: int, max_in_flight: int,
            pods: list, chaos: bool) -> dict:
    from tests.batch_stack import Driver
    from tests.procs import wait_for

    table = f"out_{name}"
    config = batch_config(workdir / f"{name}.yaml", url, db, table, max_in_flight)
    prepare_output(db, table)
    sampler = Sampler(db, table)
    events: list[tuple[float, str]] = []
    summaries = []
    started = time.monotonic()
    driver = Driver(config)
    if chaos:
        wait_for(lambda: driver.metric("batch_output_sent_total") >= rows_in // 3, 600, "a third")
        victim = pods[-1]
        for proc in (victim.backend, victim.nonna):
            proc.kill()
        events.append((time.monotonic() - started, f"SIGKILL {victim.name}"))
        wait_for(lambda: driver.metric("batch_output_sent_total") >= 2 * rows_in // 3, 600, "two thirds")
        driver.kill()
        events.append((time.monotonic() - started, "SIGKILL driver"))
        driver = Driver(config)
    status = driver.wait(timeout=1800)
    wall = time.monotonic() - started
    sampler.stop()
    if status != 0:
        raise SystemExit(f"{name}: katyusha batch exited {status}:\n{driver.output}")
    summaries.append(driver.summary)
    with sqlite3.connect(db) as conn:
        rows_out, distinct = conn.execute(f'SELECT count(*), count(DISTINCT id) FROM "{table}"').fetchone()
        dead_table = f"{table}_dead_letter"
        has_dead = conn.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (dead_table,)).fetchone()
        dead = conn.execute(f'SELECT count(*) FROM "{dead_table}"').fetchone()[0] if has_dead else 0
        done = f'SELECT id FROM "{table}"' + (f' UNION SELECT id FROM "{dead_table}"' if has_dead else "")
        lost = conn.execute(f"SELECT count(*) FROM tweets WHERE id NOT IN ({done})").fetchone()[0]
        rewritten = conn.execute(f'SELECT count(*) FROM "{table}_rewrites"').fetchone()[0]
    return {
        "rows_in": rows_in,
        "rows_out": distinct,
        "lost": lost,
        "duplicated": (rows_out - distinct) + rewritten,
        "dead_letters": dead,
        "wall_s": round(wall, 2),
        "rows_per_s": round(distinct / wall, 1),
        "max_pods": len(pods),
        "max_in_flight": max_in_flight,
        "retries": sum(s["retries"] for s in summaries),
        "statuses": summaries[-1]["statuses"],
        "latency_ms": summaries[-1]["latency_ms"],
        "events": events,
        "timeline": sampler.points,
    }


async def _post_all(client: str, url: str, bodies: list[bytes], concurrency: int) -> None:
    """POST every body, ``concurrency`` at a time, with one pool of that many connections."""
    remaining = iter(bodies)
    headers = {"content-type": "application/json"}
    if client == "aiohttp":
        import aiohttp

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

            async def worker() -> None:
                for body in remaining:
                    async with session.post(url, data=body, headers=headers) as response:
                        await response.read()
                        assert response.status == 200, response.status

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        return
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as session:

        async def worker() -> None:
            for body in remaining:
                response = await session.post(url, content=body, headers=headers)
                assert response.status_code == 200, response.status_code

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def compare_clients(url: str, requests: int, concurrency: int, rounds: int = 2) -> dict:
    """aiohttp (the driver's client) beside httpx: wall time and the client's own CPU time."""
    bodies = [json.dumps({"text": text}).encode() for _, text in sentences(requests)]
    result: dict = {}
    for round_ in range(rounds):
        for client in ("aiohttp", "httpx"):
            cpu0, wall0 = time.process_time(), time.perf_counter()
            asyncio.run(_post_all(client, url, bodies, concurrency))
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            run = {"wall_s": round(wall, 2), "req_per_s": round(requests / wall, 1),
                   "client_cpu_ms_per_request": round(cpu / requests * 1e3, 3)}
            result.setdefault(client, []).append(run)
            print(f"round {round_} {client:8s} {requests} POSTs, {concurrency} at a time: "
                  f"{run['wall_s']:6.2f} s  {run['req_per_s']:7.1f} req/s  "
                  f"client CPU {run['client_cpu_ms_per_request']:.3f} ms/request", flush=True)
    best = {client: min(r["wall_s"] for r in runs) for client, runs in result.items()}
    result["httpx_over_aiohttp_wall"] = round(best["httpx"] / best["aiohttp"], 2)
    print(f"httpx takes {result['httpx_over_aiohttp_wall']}x aiohttp's wall time (best of {rounds})")
    return result


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5))
    for name, run in result["runs"].items():
        points = run["timeline"]
        times = [t for t, _ in points[1:]]
        rates = [(b - a) / (tb - ta) for (ta, a), (tb, b) in zip(points, points[1:], strict=False)]
        line, = ax.plot(times, rates, label=f"{name} ({run['rows_per_s']} rows/s, {run['wall_s']} s)")
        for when, what in run["events"]:
            ax.axvline(when, color=line.get_color(), linestyle=":", linewidth=1)
            ax.annotate(what, (when, 0), rotation=90, fontsize=7, va="bottom", ha="right")
    ax.set_xlabel("seconds since the run started")
    ax.set_ylabel("rows written per second")
    ax.set_title(f"katyusha batch: {result['rows']} sentences, {result['pods']} sentiment pods "
                 f"(speedup 6 vs 1: {result['speedup_6_vs_1']}x)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 rows instead of 14,640")
    parser.add_argument("--rows", type=int, default=None, help="how many rows (default 14,640)")
    parser.add_argument("--pods", type=int, default=4, help="sentiment pods (default 4)")
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of rows/s over time here")
    parser.add_argument("--clients", action="store_true",
                        help="only compare HTTP clients (aiohttp, httpx) through katyusha")
    args = parser.parse_args(argv)
    rows_in = args.rows or (2_000 if args.quick else ROWS)

    from tests.batch_stack import sentiment_service
    from tests.katyusha_fleet import katyusha, start_pods

    if args.clients:
        with sentiment_service(args.pods) as proxy:
            result = compare_clients(proxy.url + "/post", 2_000 if args.quick else 6_000, 6)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="katyusha-batch-bench-"))
    db = workdir / "tweets.db"
    make_input(db, sentences(rows_in))
    result: dict = {"rows": rows_in, "pods": args.pods, "cpus": os.cpu_count(), "runs": {}}
    plan = [("mif1", 1, False), ("mif6", 6, False), ("mif6_chaos", 6, True)]
    try:
        for name, mif, chaos in plan:
            # Fresh pods and katyusha for each run, so the killed pod of the last run harms no other.
            pods = start_pods([1.0] * args.pods, extra=SENTIMENT)
            try:
                specs = [arg for pod in pods for arg in ("--pod", pod.spec)]
                with katyusha(*specs) as proxy:
                    result["runs"][name] = one_run(name, proxy.url, db, workdir, rows_in, mif, pods, chaos)
            finally:
                for pod in pods:
                    pod.stop()
            run = result["runs"][name]
            print(f"{name:11s} max-in-flight {mif}: {run['wall_s']:7.2f} s  {run['rows_per_s']:7.1f} rows/s  "
                  f"out {run['rows_out']}/{run['rows_in']}  lost {run['lost']}  "
                  f"duplicated {run['duplicated']}  dead {run['dead_letters']}  retries {run['retries']}  "
                  f"events {run['events']}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    one, six = result["runs"]["mif1"], result["runs"]["mif6"]
    result["speedup_6_vs_1"] = round(one["wall_s"] / six["wall_s"], 2)
    print(f"speedup max-in-flight 6 vs 1: {result['speedup_6_vs_1']}x "
          f"({six['rows_per_s']} vs {one['rows_per_s']} rows/s)")
    failed = [name for name, run in result["runs"].items() if run["lost"] or run["duplicated"]]
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.plot:
        plot(result, args.plot)
    if failed:
        print(f"rows lost or duplicated in: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
