"""Real processes and servers for the batch tests: a throwaway PostgreSQL, a scripted pod,
``katyusha batch`` as a child process, and readers of what a run wrote."""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from tests.procs import script


def pg_bindir() -> str | None:
    """The directory of initdb and pg_ctl (Debian keeps them off PATH), or None."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return str(Path(os.path.realpath(found)).parent)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return str(Path(candidates[-1]).parent) if candidates else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Postgres:
    """A PostgreSQL server on loopback with its data in a fresh temporary directory.

    PostgreSQL refuses to run as root; as root the server runs as ``nobody``.
    """

    def __init__(self, bindir: str):
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="katyusha-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._user = {"user": "nobody", "group": "nogroup"} if os.geteuid() == 0 else {}
        if self._user:
            shutil.chown(self.dir, "nobody", "nogroup")
        self._run("initdb", "-D", str(self.data), "-U", "batch", "--auth=trust", "-E", "UTF8",
                  "--no-sync", "--locale=C")
        self.start()
        self.dsn = f"postgresql://batch@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"), "-w", "-t", "60",
                  "-o", f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off", "start")

    def halt(self) -> None:
        """Stop the server at once (as a crash would), keeping its data."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([str(Path(self.bindir) / tool), *args], capture_output=True, text=True,
                              timeout=120, **self._user)
        if done.returncode != 0:
            log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
            raise RuntimeError(f"{tool} failed:\n{done.stdout}{done.stderr}{log}")

    def execute(self, *statements: str, rows: list | None = None, fetch: str | None = None):
        """Run SQL through asyncpg (rows: executemany of the last statement); fetch: a query."""
        import asyncio

        import asyncpg

        async def go():
            conn = await asyncpg.connect(self.dsn)
            try:
                for sql in statements[:-1] if rows is not None else statements:
                    await conn.execute(sql)
                if rows is not None:
                    await conn.executemany(statements[-1], rows)
                if fetch:
                    return [tuple(r) for r in await conn.fetch(fetch)]
                return None
            finally:
                await conn.close()

        return asyncio.run(go())

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)


class ScriptedPod:
    """A plain HTTP server standing in for a misbehaving pod, no third-party code.

    ``answer(text, attempt)`` returns (status, JSON document) for the attempt-th
    request (1-based) carrying ``text``.
    """

    def __init__(self, answer: Callable[[str, int], tuple[int, object]]):
        self.attempts: dict[str, int] = {}
        lock = threading.Lock()
        pod = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                text = json.loads(body)["text"]
                with lock:
                    pod.attempts[text] = pod.attempts.get(text, 0) + 1
                    attempt = pod.attempts[text]
                status, document = answer(text, attempt)
                payload = json.dumps(document).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def tweets(n: int, start: int = 1) -> list[tuple[int, str]]:
    words = ["great", "awful", "fine", "terrible", "lovely", "late", "happy", "rude"]
    return [(i, f"tweet {i}: the flight was {words[i % len(words)]}") for i in range(start, start + n)]


def sqlite_table(path: Path, rows: list[tuple], table: str = "tweets") -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, text TEXT)")
        conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", rows)


def csv_file(path: Path, rows: list[tuple]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows(rows)


def sqlite_rows(path: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


def csv_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class Driver:
    """``katyusha batch`` as a child process; output kept; ``summary`` read from --summary-json."""

    def __init__(self, config: Path, *args: str):
        self.summary_path = config.with_suffix(".summary.json")
        self.summary_path.unlink(missing_ok=True)
        self.popen = subprocess.Popen(
            [script("katyusha"), "batch", str(config), "--summary-json", str(self.summary_path), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
        self.lines: list[str] = []
        self.metrics_url: str | None = None
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            if "metrics at " in line:
                self.metrics_url = line.split("metrics at ")[1].split()[0]
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("katyusha batch did not finish:\n" + self.output) from None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)

    @property
    def summary(self) -> dict:
        return json.loads(self.summary_path.read_text())

    def metric(self, name: str) -> float:
        """The sum of a metric's samples on the driver's admin port (0 before it is up)."""
        return self.metrics(name)[0]

    def metrics(self, *names: str) -> tuple[float, ...]:
        """Each metric's sum of samples, all from one scrape (so they are read at one moment)."""
        import urllib.request

        if self.popen.poll() is not None:
            raise AssertionError(f"katyusha batch exited ({self.popen.returncode}):\n{self.output}")
        if self.metrics_url is None:
            return tuple(0.0 for _ in names)
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:
            text = response.read().decode()
        lines = text.splitlines()
        return tuple(sum(float(line.split()[-1]) for line in lines if line.startswith((name + " ", name + "{")))
                     for name in names)


SENTIMENT = ("--app", "sentiment", "--image-size-mb", "0", "--start-s", "0.3")


@contextlib.contextmanager
def sentiment_service(pods: int = 2, *katyusha_args: str):
    """``pods`` sentiment pods behind nonna behind one ``katyusha serve``; yields katyusha's Proc."""
    from tests.katyusha_fleet import katyusha, start_pods

    started = start_pods([1.0] * pods, extra=SENTIMENT)
    try:
        args = [arg for pod in started for arg in ("--pod", pod.spec)]
        with katyusha(*args, *katyusha_args) as proxy:
            yield proxy
    finally:
        for pod in started:
            pod.stop()


def batch_file(path: Path, url: str, input_block: dict, output_block: dict,
               request: dict | None = None, **extra) -> Path:
    """Write a batch file posting ``{"text": ...}`` to ``url``/post; ``request``: more request
    fields; ``extra``: more top-level keys."""
    import yaml

    document = {"input": input_block,
                "request": {"url": url + "/post", "body": {"text": "{text}"}, **(request or {})},
                "output": output_block, "progress": "off", **extra}
    path.write_text(yaml.safe_dump(document))
    return path


SCORES = {"compound": "response.Compound", "negative": "response.Negative",
          "neutral": "response.Neutral", "positive": "response.Positive"}
