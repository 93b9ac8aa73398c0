"""Serve the autoscaler's ASGI app on a bound socket inside a process that already runs an event loop.

The fleet runner owns its loop and its signals; this server installs no
signal handlers and stops when asked. Binding happens first, so the URL
(``demand-url`` for katyusha) is known before katyusha starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable

import uvicorn

from katyusha.serving import bind_socket, socket_url


class _QuietServer(uvicorn.Server):
    """A uvicorn server whose signals stay with the host process."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


class EmbeddedServer:
    """One ASGI app on one socket, started and stopped from a running event loop."""

    def __init__(self, app: Callable, host: str = "127.0.0.1", port: int = 0):
        """Binds at once. Raises OSError naming the address when it cannot listen."""
        self.sock: socket.socket = bind_socket(host, port)
        self.url = socket_url(self.sock)
        config = uvicorn.Config(
            app,
            loop="none",
            interface="asgi3",
            lifespan="off",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
        )
        self._server = _QuietServer(config)
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """Start serving; returns once the server accepts connections."""
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self.sock]))
        while not self._server.started:
            if self._task.done():
                await self._task
                raise OSError(f"autoscaler admin server on {self.url} did not start")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        """Stop accepting and close; safe to call when never started."""
        if self._task is None:
            self.sock.close()
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task
        self.sock.close()
