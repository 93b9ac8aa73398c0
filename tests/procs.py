"""Start the project's real processes for tests and stop them: no mocks, real sockets.

Every process is started with ``--port 0 --admin-port 0`` where the caller
wants, and its URLs are read from its ready line (see katyusha.serving).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from katyusha.serving import ReadyLine, parse_ready_line

BIN = Path(sys.executable).parent

# On SIGTERM katyusha and nonna keep accepting for drain-grace (5 s by default)
# so a balancer in front can stop sending first. Tests that do not test
# shutdown stop them at once; tests/test_edge_shutdown.py runs the default.
NO_DRAIN_GRACE = {"KATYUSHA_DRAIN_GRACE": "0", "NONNA_DRAIN_GRACE": "0"}


def script(name: str) -> str:
    """Path to one of the project's console scripts in this environment."""
    path = BIN / name
    return str(path) if path.exists() else name


class Proc:
    """A child process started from a console script, with its ready line parsed."""

    def __init__(self, argv: list[str], *, ready_timeout: float = 20.0, env: dict | None = None):
        self.argv = argv
        self.lines: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        full_env = {**NO_DRAIN_GRACE, **os.environ}
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        if env:
            full_env.update(env)
        self.popen = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=full_env,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ready: ReadyLine | None = None
        if ready_timeout:
            self.wait_ready(ready_timeout)

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)
            self._lines.put(line)
        self._lines.put(None)

    def wait_ready(self, timeout: float) -> ReadyLine:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise TimeoutError(f"{self.argv[0]} not ready in {timeout}s:\n{self.output}")
            try:
                line = self._lines.get(timeout=remaining)
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError(f"{self.argv} exited before ready:\n{self.output}")
            parsed = parse_ready_line(line)
            if parsed:
                self.ready = parsed
                return parsed

    @property
    def output(self) -> str:
        return "".join(self.lines)

    @property
    def url(self) -> str:
        assert self.ready is not None
        return self.ready.data_url

    @property
    def admin(self) -> str:
        assert self.ready is not None
        return self.ready.admin_url

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait, and return the exit status (SIGKILL if it does not stop)."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.popen.wait(5)

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.terminate()
        finally:
            self.kill()


def get_json(url: str, timeout: float = 5.0):
    """GET ``url`` and decode its JSON body."""
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for(predicate, timeout: float, what: str):
    """Poll ``predicate`` every 0.1 s until it returns something true; return that value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class FleetUp:
    """``katyusha fleet up`` as a child process on a fleet file; its output kept for failure messages."""

    def __init__(self, tmp: Path, fleet_yaml: str, *args: str):
        import threading as _threading

        fleet_file = tmp / "fleet.yaml"
        fleet_file.write_text(fleet_yaml)
        self.state_file = tmp / "state.json"
        self.popen = subprocess.Popen(
            [script("katyusha"), "fleet", "up", *args, "--fleet", str(fleet_file),
             "--state-file", str(self.state_file)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**NO_DRAIN_GRACE, **os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
        )  # fmt: skip
        self.lines: list[str] = []
        self.pids: set[int] = set()
        self.doc: dict = {}
        self.pods: dict[str, dict] = {}
        _threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float) -> dict:
        """Wait for the ready table; return the fleet's state file."""
        wait_for(lambda: any(line.startswith("send traffic to: ") for line in self.lines)
                 or self.popen.poll() is not None, timeout, "the fleet's ready table")  # fmt: skip
        assert self.popen.poll() is None, "fleet exited:\n" + self.output
        import json

        self.doc = json.loads(self.state_file.read_text())
        self.pods = {pod["name"]: pod for pod in self.doc["pods"]}
        for proc in [*self.doc["katyusha"], *(p["sim"] for p in self.doc["pods"]),
                     *(p["nonna"] for p in self.doc["pods"])]:  # fmt: skip
            self.pids.add(proc["pid"])
        return self.doc

    def state(self, pod: str) -> dict:
        """The sim-backend ``GET /state`` of ``pod``."""
        return get_json(self.pods[pod]["sim"]["admin"] + "/state")

    def stop(self) -> int | None:
        """SIGTERM the runner, then make sure no process it started is left; its exit status."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(30)
            except subprocess.TimeoutExpired:
                pass
        status = self.popen.poll()
        for pid in [self.popen.pid, *self.pids]:
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return status
