"""``katyusha batch CONFIG.yaml``: run a batch file to the end, then print a summary.

Exit status: 0 every record is in the output; 3 done, but some records are
in the dead letter; 1 a store could not be opened, read or written, or the
metrics port could not be bound (the message names the field); 2 a bad
batch file or flag (the message names the field's path); 128 + N when
stopped by signal N (SIGINT, SIGTERM) before the end: what was written
stays written, and the same command resumes.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import signal
import sys

from katyusha.batch import config as batch_config
from katyusha.batch.config import BatchConfig
from katyusha.batch.metrics import Metrics
from katyusha.batch.opening import open_sink, open_source
from katyusha.batch.pipeline import Pipeline
from katyusha.batch.sender import Sender
from katyusha.batch.stores import DEAD_LETTER_COLUMNS, StoreError
from katyusha.batch.template import Body, check_fields
from katyusha.config_values import int_in_range
from katyusha.core.errors import ConfigError

PROG = "katyusha batch"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read records from a table or CSV file, send each through katyusha to a "
                    "service, and write the answers to a table or CSV file (docs/batch.md).")
    parser.add_argument("config", metavar="CONFIG.yaml", help="the batch file")
    parser.add_argument("--max-in-flight", metavar="N", help="override max-in-flight")
    parser.add_argument("--metrics-port", metavar="PORT", help="override metrics.port (0: kernel picks)")
    parser.add_argument("--progress", choices=("auto", "on", "off"), help="override progress")
    parser.add_argument("--summary-json", metavar="PATH", help="also write the summary as JSON here")
    parser.add_argument("--retry-dead-letters", action="store_true",
                        help="empty the dead letter first, so its records are tried again")
    return parser


def _say(message: str) -> None:
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = batch_config.load(args.config)
        if args.max_in_flight is not None:
            n = int_in_range(1, 10_000)("--max-in-flight", args.max_in_flight)
            config = dataclasses.replace(config, max_in_flight=n)
        if args.metrics_port is not None:
            port = int_in_range(0, 65535)("--metrics-port", args.metrics_port)
            config = dataclasses.replace(config, metrics_port=port)
        if args.progress is not None:
            config = dataclasses.replace(config, progress=args.progress)
    except ConfigError as exc:
        _say(f"error: {exc}")
        return 2
    try:
        return asyncio.run(_run(config, args))
    except ConfigError as exc:
        _say(f"error: {exc}")
        return 2
    except StoreError as exc:
        _say(f"error: {exc}")
        return 1


def _check_against(config: BatchConfig, fields: list[str]) -> Body:
    """The request body, checked against the input's fields; raises ConfigError."""
    body = config.request.body
    if body is None:
        body = Body.of_fields([f for f in fields if f != config.input.id], "request.fields")
    check_fields(body.fields, fields)
    where = f"{config.output.store.where}.columns"
    check_fields({col.path[0]: f"{where}.{name}" for name, col in config.output.columns
                  if col.source == "record"}, fields)
    return body


async def _run(config: BatchConfig, args: argparse.Namespace) -> int:
    out = config.output
    source = open_source(config.input.store, config.input.id, config.input.columns,
                         config.input.page_size)
    output = open_sink(out.store, out.id, [name for name, _ in out.columns])
    dead = open_sink(config.dead_letter, out.id, DEAD_LETTER_COLUMNS)
    server = None
    progress = None
    try:
        await source.open()
        body = _check_against(config, source.fields)
        await output.open()
        await dead.open()
        if args.retry_dead_letters:
            await dead.clear()
        total = await source.count()
        metrics = Metrics()
        try:
            server, url = metrics.serve(config.metrics_host, config.metrics_port)
        except OSError as exc:
            raise StoreError("metrics.port", f"cannot listen on {config.metrics_host}:"
                             f"{config.metrics_port}: {exc.strerror or exc}") from None
        _say(f"metrics at {url}/metrics pid={os.getpid()}")
        progress = _progress(config.progress, total)
        stop = asyncio.Event()
        stopped_by = _on_signals(stop)
        pipeline = Pipeline(config, source, output, dead, body, metrics, progress=progress)
        pipeline.tally.rows_total = total
        async with Sender(config.request.method, config.request.url, config.request.headers,
                          config.request.timeout, config.max_in_flight) as sender:
            tally = await pipeline.run(stop, sender)
    finally:
        if progress is not None:
            progress.close()
        if server is not None:
            server.shutdown()
        for store in (source, output, dead):
            await store.close()
    _say(tally.text().removeprefix(f"{PROG}: "))
    if args.summary_json:
        with open(args.summary_json, "w", encoding="utf-8") as handle:
            json.dump(tally.as_dict(), handle, indent=2)
    if stopped_by:
        return 128 + stopped_by[0]
    return 3 if tally.dead_letters else 0


def _on_signals(stop: asyncio.Event) -> list[int]:
    """SIGINT/SIGTERM: stop taking records, write what is done. A second one: exit at once."""
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def handle(signum: int) -> None:
        if received:
            os._exit(128 + signum)  # safe: every written row is complete and upserted
        received.append(signum)
        _say(f"{signal.Signals(signum).name}: writing what is finished, then stopping")
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, handle, signum)
    return received


def _progress(mode: str, total: int):
    from tqdm import tqdm

    # disable=None: tqdm shows the bar only when stderr is a terminal.
    disable = {"auto": None, "on": False, "off": True}[mode]
    return tqdm(total=total, unit="row", disable=disable, file=sys.stderr, smoothing=0.1,
                mininterval=0.5, dynamic_ncols=True, desc="batch")
