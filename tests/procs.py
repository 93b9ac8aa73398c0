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
        full_env = dict(os.environ)
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
