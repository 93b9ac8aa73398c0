"""The seed's batch demo: 14,640 sentences from SQLite through katyusha to sentiment pods autoscaled from zero.

Run as ``python -m benchmarks.batch [--quick] [--rows N] [--fleet FILE] [--one-pod] [--json PATH]
[--plot PATH]``. Installs nothing; generates its data (no download).

The seed's KnativeCon demo sent 14,640 airline tweets through Benthos
(``sql_select`` -> ``http`` -> ``sql_insert``) to a VADER service autoscaled
on requests per second (window 6 s, target 200, max-scale 10) and showed that
raising the pipeline's threads from 1 to 6 scaled the service out further and
finished sooner. Here the same number of generated English sentences goes from
a SQLite table through ``katyusha batch`` to the sentiment service of
``examples/sentiment-fleet.yaml`` (the seed's settings; ``katyusha fleet up``,
katyusha on kernel-chosen ports), a fresh fleet at zero pods for each run:

* ``mif1``: ``max-in-flight: 1``;
* ``mif6``: ``max-in-flight: 6`` (the peer figure: ``speedup_6_vs_1`` is mif1's
  wall time over mif6's);
* ``mif6_chaos``: ``max-in-flight: 6`` with one serving pod SIGKILLed (its app
  and its nonna, pids from the fleet's state file; the runner restarts them) a
  third of the way in, and the driver itself SIGKILLed two thirds of the way in
  and started again, which resumes;
* with ``--one-pod``, ``mif1_max1`` and ``mif6_max1``: the same batches with
  the service's max-scale set to 1, to see what scaling out buys.

For each: wall time (the driver's start to its end, the first cold start
included), rows/s, the most pods serving at once and the cold starts (from
the control plane's ``GET /autoscaler``, read every 0.5 s), the time from the
batch's end until no pod serves or wakes, rows lost (input ids in neither the
output nor the dead letter; must be 0) and rows written twice (must be 0). A
trigger on the output table logs every update (the upsert's second write of an
id), so a row written twice is counted even though the table keeps one row per
id. The PNG shows rows written per second and pods over time. JSON keys:
``runs[name]`` with ``rows_in``, ``rows_out``, ``lost``, ``duplicated``,
``dead_letters``, ``wall_s``, ``rows_per_s``, ``max_pods``, ``cold_starts``,
``cold_start_mean_s``, ``back_to_zero_s``, ``retries``, ``statuses``,
``timeline`` ([seconds, rows written, pods serving, pods waking]); and
``speedup_6_vs_1``.

``--make-input PATH`` only writes the sentences to a SQLite table ``tweets``
(docs/batch.md uses it). ``--clients`` instead compares the driver's HTTP
client, aiohttp, with httpx (the ``bench`` extra installs it): 6,000 POSTs, 6
at a time, through katyusha to ``--pods`` warm sentiment pods, two rounds
each; wall time and the client process's own CPU time per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from benchmarks import peers
from benchmarks.checkout import use_tests

use_tests()  # tests.procs and friends, from any working folder

ROWS = 14_640  # the seed's demo: Twitter US airline sentiment
FLEET_FILE = Path(__file__).resolve().parent.parent / "examples" / "sentiment-fleet.yaml"
# (name, max-in-flight, chaos: a pod and the driver SIGKILLed mid-run, max-scale: None for the file's).
PLAN = [("mif1", 1, False, None), ("mif6", 6, False, None), ("mif6_chaos", 6, True, None)]
# With --one-pod: the same batches with the service held to one pod, to see what scaling out buys.
ONE_POD = [("mif1_max1", 1, False, 1), ("mif6_max1", 6, False, 1)]

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
    """The table ``tweets (id, text)`` in the SQLite file ``path``; SystemExit when it cannot be made."""
    try:
        with sqlite3.connect(path) as conn:
            conn.execute("CREATE TABLE tweets (id INTEGER PRIMARY KEY, text TEXT NOT NULL)")
            conn.executemany("INSERT INTO tweets VALUES (?, ?)", rows)
    except sqlite3.Error as exc:
        raise SystemExit(f"cannot write the table tweets in {path}: {exc}") from None


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


class Watch:
    """Every ``period`` s, in a thread: the output table's rows and the autoscaler's pods.

    ``points`` holds (seconds since start, rows written, pods serving, pods
    waking). The pods come from the control plane's ``GET /autoscaler``.
    """

    def __init__(self, db: Path, table: str, control: str, period: float = 0.5):
        self.db, self.table, self.control, self.period = db, table, control, period
        self.points: list[tuple[float, int, int, int]] = []
        self._stop = threading.Event()
        self.start = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sample()
        self._thread.start()

    def _rows(self) -> int:
        try:
            with sqlite3.connect(self.db, timeout=5) as conn:
                return conn.execute(f'SELECT count(*) FROM "{self.table}"').fetchone()[0]
        except sqlite3.OperationalError:
            return 0  # the table is created with the first batch

    def pods(self) -> dict:
        """The autoscaler's phase counts (``serving``, ``waking``, ``retiring``, ``free``, ``slots``)."""
        from tests.procs import get_json

        return get_json(self.control + "/autoscaler")["pods"]

    def sample(self) -> tuple[float, int, int, int]:
        pods = self.pods()
        point = (round(time.monotonic() - self.start, 2), self._rows(), pods["serving"], pods["waking"])
        self.points.append(point)
        return point

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self.sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def fleet_text(fleet_file: Path, max_scale: int | None) -> str:
    """The fleet file's text; with ``max_scale``, its first service's max-scale annotation set to that."""
    if max_scale is None:
        return fleet_file.read_text()
    document = yaml.safe_load(fleet_file.read_text())
    document["services"][0].setdefault("annotations", {})["autoscaling.knative.dev/max-scale"] = str(max_scale)
    return yaml.safe_dump(document, sort_keys=False)


def fleet_up(workdir: Path, fleet_yaml: str):
    """``katyusha fleet up`` on ``fleet_yaml`` with kernel-chosen katyusha ports; waits for its table."""
    from tests.procs import FleetUp

    workdir.mkdir()
    up = FleetUp(workdir, fleet_yaml, "--port", "0", "--admin-port", "0")
    try:
        up.wait_ready(300)
    except BaseException:
        up.stop()
        raise
    return up


def kill_a_serving_pod(up) -> str:
    """SIGKILL both processes (app and nonna) of one serving pod, pids from the state file; its name."""
    from tests.procs import get_json

    doc = json.loads(up.state_file.read_text())
    for pod in doc["pods"]:
        if get_json(pod["sim"]["admin"] + "/state")["state"] in ("warm", "active"):
            for proc in (pod["sim"], pod["nonna"]):
                os.kill(proc["pid"], signal.SIGKILL)
            return pod["name"]
    raise AssertionError("no serving pod to kill")


def cpu_by_role(up) -> dict[str, float]:
    """CPU seconds (user + system) each role's processes have used so far, pids from the state file.

    ``control plane`` is the runner's process, where the control plane runs.
    A process that died meanwhile is left out.
    """
    doc = json.loads(up.state_file.read_text())
    roles: dict[str, list[int]] = {"control plane": [up.popen.pid],
                                   "katyusha": [p["pid"] for p in doc["katyusha"]],
                                   "nonna": [p["nonna"]["pid"] for p in doc["pods"]],
                                   "sim-backend": [p["sim"]["pid"] for p in doc["pods"]]}  # fmt: skip
    out = {}
    for role, pids in roles.items():
        total = 0.0
        for pid in pids:
            try:
                total += sum(peers.cpu_seconds(pid))
            except OSError:
                continue
        out[role] = total
    return out


def children_cpu() -> float:
    """CPU seconds of this process's children that have been waited for (the drivers that ended)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(name: str, fleet_yaml: str, db: Path, workdir: Path, rows_in: int, max_in_flight: int,
            chaos: bool) -> dict:
    """One batch through a fresh autoscaled fleet at zero pods; then the wait back to zero."""
    from tests.batch_stack import Driver
    from tests.procs import get_json, wait_for

    up = fleet_up(workdir / name, fleet_yaml)
    try:
        control = up.doc["control"]["admin"]
        table = f"out_{name}"
        config = batch_config(workdir / f"{name}.yaml", up.doc["url"], db, table, max_in_flight)
        prepare_output(db, table)
        watch = Watch(db, table, control)
        if watch.points[0][2:] != (0, 0):
            raise SystemExit(f"{name}: the fleet did not start at zero pods: {watch.pods()}")
        events: list[tuple[float, str]] = []
        retries = 0
        cpu_before = {**cpu_by_role(up), "driver": children_cpu()}
        driver = Driver(config)
        if chaos:
            wait_for(lambda: driver.metric("batch_output_sent_total") >= rows_in // 3, 600, "a third")
            victim = kill_a_serving_pod(up)
            events.append((time.monotonic() - watch.start, f"SIGKILL {victim}"))
            wait_for(lambda: driver.metric("batch_output_sent_total") >= 2 * rows_in // 3, 600, "two thirds")
            retries += int(driver.metric("batch_retries_total"))
            driver.kill()
            events.append((time.monotonic() - watch.start, "SIGKILL driver"))
            driver = Driver(config)
        status = driver.wait(timeout=1800)
        cpu_after = {**cpu_by_role(up), "driver": children_cpu()}
        wall = time.monotonic() - watch.start
        if status != 0:
            raise SystemExit(f"{name}: katyusha batch exited {status}:\n{driver.output}")
        summary = driver.summary
        retries += summary["retries"]
        wait_for(lambda: sum(watch.pods()[phase] for phase in ("serving", "waking", "retiring")) == 0,
                 600, "the fleet back at zero pods")
        back_to_zero = time.monotonic() - watch.start - wall
        watch.stop()
        cold = get_json(control + "/autoscaler")["cold_starts"]
    finally:
        up.stop()
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
        "max_pods": max(point[2] for point in watch.points),
        "cold_starts": cold["total"],
        "cold_start_mean_s": None if cold["mean_s"] is None else round(cold["mean_s"], 2),
        "back_to_zero_s": round(back_to_zero, 1),
        "max_in_flight": max_in_flight,
        "retries": retries,
        "statuses": summary["statuses"],
        "latency_ms": summary["latency_ms"],
        "events": events,
        # While the batch ran; the killed pod's processes are not counted.
        "cpu_s": {role: round(cpu_after[role] - cpu_before[role], 2) for role in cpu_after},
        "timeline": watch.points,
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batch", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2,000 rows instead of 14,640")
    parser.add_argument("--rows", type=int, default=None, help="how many rows (default 14,640)")
    parser.add_argument("--fleet", metavar="FILE", type=Path, default=FLEET_FILE,
                        help="the fleet file (default examples/sentiment-fleet.yaml)")
    parser.add_argument("--one-pod", action="store_true",
                        help="also run mif1_max1 and mif6_max1: the service held to one pod (max-scale 1)")
    parser.add_argument("--only", metavar="NAME", action="append",
                        choices=[name for name, *_ in PLAN + ONE_POD], help="run only this run (repeatable)")
    parser.add_argument("--make-input", metavar="PATH",
                        help="only write the generated sentences to a SQLite table `tweets` in PATH")
    parser.add_argument("--json", metavar="PATH", help="write the results here")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of rows/s and pods over time here")
    parser.add_argument("--clients", action="store_true",
                        help="only compare HTTP clients (aiohttp, httpx) through katyusha")
    parser.add_argument("--pods", type=int, default=4, help="with --clients: warm sentiment pods (default 4)")
    args = parser.parse_args(argv)
    rows_in = args.rows or (2_000 if args.quick else ROWS)
    if args.make_input:
        make_input(Path(args.make_input), sentences(rows_in))
        print(f"{rows_in} rows in {args.make_input}, table tweets (id, text)")
        return 0

    if args.clients:
        from tests.batch_stack import sentiment_service

        with sentiment_service(args.pods) as proxy:
            result = compare_clients(proxy.url + "/post", 2_000 if args.quick else 6_000, 6)
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="katyusha-batch-bench-"))
    db = workdir / "tweets.db"
    make_input(db, sentences(rows_in))
    result: dict = {"rows": rows_in, "fleet_file": str(args.fleet), "cpus": os.cpu_count(), "runs": {}}
    try:
        for name, mif, chaos, max_scale in PLAN + (ONE_POD if args.one_pod or args.only else []):
            if args.only and name not in args.only:
                continue
            fleet_yaml = fleet_text(args.fleet, max_scale)
            run = result["runs"][name] = one_run(name, fleet_yaml, db, workdir, rows_in, mif, chaos)
            print(f"{name:11s} max-in-flight {mif}: {run['wall_s']:7.2f} s  {run['rows_per_s']:7.1f} rows/s  "
                  f"max pods {run['max_pods']}  cold starts {run['cold_starts']} "
                  f"(mean {run['cold_start_mean_s']} s)  back to 0 in {run['back_to_zero_s']} s  "
                  f"out {run['rows_out']}/{run['rows_in']}  lost {run['lost']}  "
                  f"duplicated {run['duplicated']}  dead {run['dead_letters']}  retries {run['retries']}  "
                  f"events {[(round(t, 1), what) for t, what in run['events']]}", flush=True)
            print(f"{'':11s} CPU seconds while it ran: "
                  + ", ".join(f"{role} {seconds:.1f}" for role, seconds in run["cpu_s"].items()), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    one, six = result["runs"].get("mif1"), result["runs"].get("mif6")
    result["speedup_6_vs_1"] = round(one["wall_s"] / six["wall_s"], 2) if one and six else None
    if one and six:
        print(f"speedup max-in-flight 6 vs 1: {result['speedup_6_vs_1']}x "
              f"({six['rows_per_s']} vs {one['rows_per_s']} rows/s; "
              f"most pods {six['max_pods']} vs {one['max_pods']})")
    failed = [name for name, run in result["runs"].items() if run["lost"] or run["duplicated"]]
    from benchmarks import plots

    plots.save("batch", result, args.json)
    if args.plot:
        plots.batch_timeline(args.plot, result)
    if failed:
        print(f"rows lost or duplicated in: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    sys.exit(main())
