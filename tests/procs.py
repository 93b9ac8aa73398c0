"""Start the project's real processes for tests and stop them: no mocks, real sockets.

Every process is started with ``--port 0 --admin-port 0`` where the caller
wants, and its URLs are read from its ready line (see katyusha.serving).
``Proc`` and ``script`` live in katyusha.procs (the benchmarks use them too).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

from katyusha.procs import Proc as _Proc
from katyusha.procs import script

__all__ = ["LEAN_SERVER", "NO_DRAIN_GRACE", "FleetUp", "Proc", "get_json", "script", "wait_for"]

# On SIGTERM katyusha and nonna keep accepting for drain-grace (5 s by default)
# so a balancer in front can stop sending first. Tests that do not test
# shutdown stop them at once; tests/test_edge_shutdown.py passes the flag.
NO_DRAIN_GRACE = {"KATYUSHA_DRAIN_GRACE": "0", "NONNA_DRAIN_GRACE": "0"}

# `make test-uvicorn` runs the data-path tests again with the ASGI app on uvicorn's own
# protocol (KATYUSHA_HTTP_SERVER=uvicorn). What only katyusha's lean server does (the
# head limits' 431, its 400 wording, a small chunked answer sent with a Content-Length;
# docs/katyusha.md, `http-server`) is asserted where this is true.
LEAN_SERVER = os.environ.get("KATYUSHA_HTTP_SERVER", "lean").strip().lower() == "lean"


class Proc(_Proc):
    """:class:`katyusha.procs.Proc` with drain-grace 0 unless the environment or ``env`` sets one."""

    def __init__(self, argv: list[str], *, ready_timeout: float = 20.0, env: dict | None = None):
        given = {**os.environ, **(env or {})}
        defaults = {key: value for key, value in NO_DRAIN_GRACE.items() if key not in given}
        super().__init__(argv, ready_timeout=ready_timeout, env={**defaults, **(env or {})})


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
