"""Run ASGI apps on uvicorn in one event loop: a data port and an admin port.

Shared by ``katyusha serve``, ``nonna`` and ``sim-backend``. Sockets are bound
before the servers start, so ``--port 0`` works: the ready line reports the
ports the kernel chose. The ready line is the one line a process logs when it
serves, on stderr, in the form::

    <role> ready data=http://HOST:PORT admin=http://HOST:PORT pid=N

Tools that start these processes (tests, the fleet runner) parse it with
:func:`parse_ready_line`; a data port serving TLS is announced as
``https://``. SIGTERM and SIGINT stop every server gracefully, in this order:

1. ``on_drain`` runs at once (the process's ``/healthz`` turns 503);
2. for ``drain_grace`` seconds the data port still accepts and serves new
   connections, so a balancer or Kubernetes in front stops sending first;
3. the data listener closes and idle kept-alive connections with it (one
   accepted but not yet sent on is served its first request); ``on_stop`` runs
   (katyusha answers what is queued) while requests in flight finish, up to
   ``graceful_timeout``. A data socket inherited from a supervisor
   (:func:`inherited_socket`) stays open in the supervisor: this process
   stops accepting, and new connections wait in the accept queue for the
   next process the supervisor starts on it;
4. the admin port stops last, so ``/healthz`` says 503 until the end.

A second signal skips what is left of the grace and stops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import uvicorn

READY_RE = re.compile(
    r"^(?P<role>\S+) ready data=(?P<data>https?://\S+) admin=(?P<admin>http://\S+) pid=(?P<pid>\d+)"
)


@dataclass(frozen=True)
class ReadyLine:
    role: str
    data_url: str
    admin_url: str
    pid: int


def parse_ready_line(line: str) -> ReadyLine | None:
    """Return the parsed ready line, or None when ``line`` is not one."""
    match = READY_RE.search(line.strip())
    if not match:
        return None
    return ReadyLine(match["role"], match["data"], match["admin"], int(match["pid"]))


def bind_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """Bind a listening TCP socket; port 0 lets the kernel choose. Raises OSError with the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets whose proto says TCP.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def inherited_socket(fd: int) -> socket.socket:
    """The listening TCP socket open on descriptor ``fd``, handed down by the process that started this one.

    A supervisor (``katyusha fleet up``) binds a data port once and passes the
    same socket to every process it starts there: while one process exits and
    the next starts, connections wait in the socket's accept queue instead of
    being refused. Raises OSError naming the descriptor when it is not a
    listening TCP socket.
    """
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise OSError(exc.errno, f"listen-fd {fd}: not an open socket ({exc.strerror})") from None
    if (sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6)
            or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)):
        sock.detach()
        raise OSError(0, f"listen-fd {fd}: not a listening TCP socket")
    sock.set_inheritable(True)
    return sock


def socket_url(sock: socket.socket, scheme: str = "http") -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}"


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by :func:`serve` for all servers at once,
    and that stops as soon as it is told to.

    uvicorn looks at ``should_exit`` every 0.1 s, then sleeps 0.1 s after asking
    its connections to close and polls them every 0.1 s: 0.2 to 0.3 s per
    stop with nothing in flight. A restart under a held socket (the fleet
    runner's ``--listen-fd``) is as long as the old process takes to exit plus
    the new one's start, and requests wait in the accept queue for all of it;
    so :meth:`stop` wakes the main loop at once and the shutdown polls every
    10 ms (same steps, same order, same ``timeout_graceful_shutdown``).
    """

    POLL_S = 0.01

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self._woken = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self):
        yield

    def stop(self) -> None:
        self.should_exit = True
        self._woken.set()

    async def main_loop(self) -> None:
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 1) % 864000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), 0.1)
            should_exit = await self.on_tick(counter)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        for connection in list(self.server_state.connections):
            connection.shutdown()
        try:
            async with asyncio.timeout(self.config.timeout_graceful_shutdown):
                while (self.server_state.connections or self.server_state.tasks) and not self.force_exit:
                    await asyncio.sleep(self.POLL_S)
                for server in self.servers:
                    await server.wait_closed()
        except TimeoutError:
            logging.getLogger("uvicorn.error").error(
                "Cancel %s running task(s), timeout graceful shutdown exceeded", len(self.server_state.tasks))
            for task in self.server_state.tasks:
                task.cancel(msg="Task cancelled, timeout graceful shutdown exceeded")
        if not self.force_exit:
            await self.lifespan.shutdown()


@dataclass
class App:
    """One ASGI app on one bound socket."""

    app: Callable
    sock: socket.socket
    http: object = "httptools"
    access_log: bool = False
    limit_concurrency: int | None = None
    backlog: int = 2048
    tls: ssl.SSLContext | None = None
    keepalive_timeout: float = 75.0


async def serve(
    apps: Sequence[App],
    *,
    role: str,
    on_drain: Callable[[], None] | None = None,
    drain_grace: float = 0.0,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = 30.0,
    log_level: str = "warning",
) -> None:
    """Serve ``apps`` until SIGTERM/SIGINT; the first app is the data port, the second admin.

    On a stop: ``on_drain()`` at once, ``drain_grace`` seconds of serving as
    usual, then the data port stops accepting while ``on_stop`` runs
    (katyusha answers what is queued) and requests finish (see the module
    docstring).
    """
    servers = []
    for spec in apps:
        config = uvicorn.Config(
            spec.app,
            http=spec.http,
            loop="none",
            lifespan="on",
            log_level=log_level,
            access_log=spec.access_log,
            limit_concurrency=spec.limit_concurrency,
            backlog=spec.backlog,
            timeout_graceful_shutdown=graceful_timeout,
            timeout_keep_alive=max(1, round(spec.keepalive_timeout)),
            server_header=False,
            proxy_headers=False,
            date_header=False,
        )
        if spec.tls is not None and getattr(spec.http, "tls", None) is None:
            config.load()
            # The context was built (and its files checked) from the settings.
            config.ssl = spec.tls
        servers.append(_Server(config))

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def ask_stop() -> None:
        if stopping.is_set():
            # A second signal: stop at once.
            for server in servers:
                server.force_exit = True
                server.stop()
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, ask_stop)

    tasks = [
        asyncio.create_task(server.serve(sockets=[spec.sock]))
        for server, spec in zip(servers, apps, strict=True)
    ]
    while not all(server.started for server in servers):
        if any(task.done() for task in tasks):
            break
        await asyncio.sleep(0.01)
    failed = [task for task in tasks if task.done()]
    if failed:
        for server in servers:
            server.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise SystemExit(f"{role}: a server failed to start")

    data_url = socket_url(apps[0].sock, "https" if apps[0].tls is not None else "http")
    admin_url = socket_url(apps[1].sock) if len(apps) > 1 else data_url
    logging.getLogger(role).info("%s ready", role)
    sys.stderr.write(f"{role} ready data={data_url} admin={admin_url} pid={os.getpid()}\n")
    sys.stderr.flush()

    stop_waiter = asyncio.create_task(stopping.wait())
    await asyncio.wait([stop_waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if on_drain is not None:
        on_drain()
    if drain_grace > 0 and not any(task.done() for task in tasks):
        # Still serving, /healthz says 503: whoever sends traffic here learns to stop.
        second = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, lambda: (second.set(), ask_stop()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(second.wait(), drain_grace)
    # The data port stops accepting; its connections close as their requests end.
    servers[0].stop()
    if on_stop is not None:
        await on_stop()
    for server in servers:
        server.stop()
    await asyncio.gather(*tasks, return_exceptions=True)
    stop_waiter.cancel()


def run(apps: Sequence[App], *, role: str, **kwargs) -> int:
    """Run :func:`serve` on uvloop (when installed) and return an exit status."""
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:  # pragma: no cover - uvloop ships with the project on Linux
        runner = asyncio.run
    try:
        runner(serve(apps, role=role, **kwargs))
    except KeyboardInterrupt:
        pass
    return 0
