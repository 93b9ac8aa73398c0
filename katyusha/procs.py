"""Start the project's processes from Python and stop them: for tests, benchmarks and tools.

Every process is started in a session of its own, so Ctrl-C at the caller's
terminal reaches only the caller, which then stops it, and one signal to its
group stops whatever it started. Its ready line (see katyusha.serving) gives
its URLs; start it with ``--port 0 --admin-port 0`` to let the kernel choose.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time

from katyusha.fleet.children import console_script as script
from katyusha.serving import ReadyLine, parse_ready_line

__all__ = ["Proc", "exit_on_signals", "script", "stop_all"]


class Proc:
    """A child process started from a console script, with its ready line parsed."""

    def __init__(self, argv: list[str], *, ready_timeout: float = 20.0, env: dict | None = None):
        """Start ``argv``; wait up to ``ready_timeout`` s for its ready line (0: do not wait).

        Raises TimeoutError (after killing it) when no ready line came in
        time, RuntimeError when it exited first; both quote its output.
        """
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
        """SIGKILL its whole process group, if it still runs."""
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


def stop_all(procs, timeout: float = 15.0) -> None:
    """Stop each of ``procs`` in turn: SIGTERM, up to ``timeout`` seconds, then SIGKILL of its group.

    Every one is stopped even when a signal's ``SystemExit`` (:func:`exit_on_signals`) or a
    Ctrl-C comes while one of them is being stopped: it is raised again after the last, so
    the processes after that one in the list are not left running.
    """
    interrupted: BaseException | None = None
    for proc in procs:
        try:
            try:
                proc.terminate(timeout)
            except Exception:
                pass  # it did not stop in time (killed below), or it was gone
            finally:
                proc.kill()
        except BaseException as exc:  # the signal's exit: stop the rest first
            interrupted = interrupted or exc
            proc.kill()
    if interrupted is not None:
        raise interrupted


def exit_on_signals() -> None:
    """Make SIGTERM and SIGINT raise ``SystemExit(128 + signal)`` in the main thread.

    ``with`` and ``finally`` blocks then run, so every child process started
    through them is stopped (the children run in sessions of their own: no
    signal reaches them otherwise). Once one came, further SIGTERM and SIGINT
    are ignored, so a second Ctrl-C cannot cut the cleanup short; each stop
    is bounded by its own timeout.
    """

    def unwind(signum, frame):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, unwind)
