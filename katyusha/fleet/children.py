"""One child process of the fleet: started in its own process group, its ready line read.

Each child runs in a session of its own, so Ctrl-C at the terminal reaches
only the runner, which then stops the children in order; and a child that
left helpers behind is cleaned up with one signal to its group.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from katyusha.serving import ReadyLine, parse_ready_line


class ChildFailed(Exception):
    """A child exited or stayed silent before printing its ready line; the message quotes its output."""


def console_script(name: str) -> str:
    """Path of one of the project's console scripts, preferring this interpreter's environment."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name) or name


class Child:
    """A process the runner starts, watches and restarts.

    ``make_argv(data_port, admin_port)`` builds the command line; ports are
    the fixed ones from the fleet spec, or 0 for kernel-chosen ones.
    """

    def __init__(
        self,
        name: str,
        role: str,
        make_argv: Callable[[int, int], list[str]],
        ports: tuple[int, int] = (0, 0),
        *,
        log: Callable[[str], None] | None = None,
        pass_fds: tuple[int, ...] = (),
    ):
        """``pass_fds``: descriptors every incarnation inherits (a listening socket the runner holds)."""
        self.name = name
        self.pass_fds = pass_fds
        self.role = role
        self.make_argv = make_argv
        self.ports = ports
        self.ready: ReadyLine | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self._log = log or (lambda line: sys.stderr.write(line + "\n"))
        self._pump: asyncio.Task | None = None
        self._pgid: int | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def up(self) -> bool:
        """Running and past its ready line."""
        return self.running and self.ready is not None

    @property
    def data_url(self) -> str | None:
        return self.ready.data_url if self.ready else None

    @property
    def admin_url(self) -> str | None:
        return self.ready.admin_url if self.ready else None

    def last_ports(self) -> tuple[int, int]:
        """The ports it listened on last (from its ready line), else the configured ones."""
        if self.ready is None:
            return self.ports
        return _port(self.ready.data_url), _port(self.ready.admin_url)

    async def start(self, timeout: float, ports: tuple[int, int] | None = None) -> ReadyLine:
        """Start it and wait for its ready line. Raises ChildFailed (after killing it) on failure."""
        data_port, admin_port = ports if ports is not None else self.ports
        argv = self.make_argv(data_port, admin_port)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # Whatever the last incarnation left in its group goes before a new one starts.
        self.kill_now()
        self.ready = None
        self.tail.clear()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
                pass_fds=self.pass_fds,
            )
        except OSError as exc:
            raise ChildFailed(f"{self.name}: cannot run {argv[0]}: {exc}") from None
        self._pgid = self.proc.pid
        try:
            self.ready = await asyncio.wait_for(self._read_until_ready(), timeout)
        except (TimeoutError, ChildFailed) as exc:
            await self.kill()
            why = "exited" if not isinstance(exc, TimeoutError) else f"not ready in {timeout:g}s"
            output = "\n".join(f"  | {line}" for line in self.tail) or "  | (no output)"
            raise ChildFailed(f"{self.name} ({' '.join(argv)}) {why}:\n{output}") from None
        self._pump = asyncio.create_task(self._forward_output())
        return self.ready

    async def _read_until_ready(self) -> ReadyLine:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            raw = await self.proc.stdout.readline()
            if not raw:
                await self.proc.wait()
                raise ChildFailed(self.name)
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            parsed = parse_ready_line(line)
            if parsed is not None:
                return parsed

    async def _forward_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            line = raw.decode("utf-8", "replace").rstrip()
            self.tail.append(line)
            self._log(f"[{self.name}] {line}")

    async def wait(self) -> int:
        """Wait for the process to exit and return its status (negative: killed by that signal)."""
        assert self.proc is not None
        status = await self.proc.wait()
        if self._pump is not None:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(self._pump, 1.0)
        return status

    async def stop(self, timeout: float) -> int | None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL its group; return the exit status."""
        if self.proc is None:
            return None
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self._log(f"katyusha fleet: {self.name} (pid {self.proc.pid}) did not stop in {timeout:g}s; killing it")
        await self.kill()
        return self.proc.returncode

    async def kill(self) -> None:
        """SIGKILL the process and everything left in its process group."""
        self.kill_now()
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, TimeoutError):
                await asyncio.wait_for(self.proc.wait(), 5.0)

    def kill_now(self) -> None:
        """SIGKILL its process group at once (a no-op when the group is gone)."""
        if self._pgid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pgid, signal.SIGKILL)
        if self.proc is not None and self.proc.returncode is not None:
            # Reaped and its group emptied: forget the id, which the kernel may hand out again.
            self._pgid = None


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])
