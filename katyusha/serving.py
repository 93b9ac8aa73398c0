"""Run ASGI apps on uvicorn in one event loop: a data port and an admin port.

Shared by ``katyusha serve``, ``nonna`` and ``sim-backend``. Sockets are bound
before the servers start, so ``--port 0`` works: the ready line reports the
ports the kernel chose. The ready line is the one line a process logs when it
serves, on stderr, in the form::

    <role> ready data=http://HOST:PORT admin=http://HOST:PORT pid=N

Tools that start these processes (tests, the fleet runner) parse it with
:func:`parse_ready_line`. SIGTERM and SIGINT stop every server gracefully: no
new connections, in-flight requests finish (up to ``graceful_timeout``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import uvicorn

READY_RE = re.compile(
    r"^(?P<role>\S+) ready data=(?P<data>http://\S+) admin=(?P<admin>http://\S+) pid=(?P<pid>\d+)"
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


def socket_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """A uvicorn server whose signals are handled by :func:`serve` for all servers at once."""

    @contextlib.contextmanager
    def capture_signals(self):
        yield


@dataclass
class App:
    """One ASGI app on one bound socket."""

    app: Callable
    sock: socket.socket
    http: str = "httptools"
    access_log: bool = False
    limit_concurrency: int | None = None
    backlog: int = 2048


async def serve(
    apps: Sequence[App],
    *,
    role: str,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    graceful_timeout: float = 30.0,
    log_level: str = "warning",
) -> None:
    """Serve ``apps`` until SIGTERM/SIGINT; the first app is the data port, the second admin.

    ``on_stop`` runs when a stop is asked, before the servers stop accepting
    (katyusha uses it to stop admitting and answer what is queued).
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
            timeout_keep_alive=75,
            server_header=False,
            proxy_headers=False,
            date_header=False,
        )
        servers.append(_Server(config))

    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()

    def ask_stop() -> None:
        if stopping.is_set():
            # A second signal: stop at once.
            for server in servers:
                server.force_exit = True
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
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
        raise SystemExit(f"{role}: a server failed to start")

    data_url = socket_url(apps[0].sock)
    admin_url = socket_url(apps[1].sock) if len(apps) > 1 else data_url
    logging.getLogger(role).info("%s ready", role)
    sys.stderr.write(f"{role} ready data={data_url} admin={admin_url} pid={os.getpid()}\n")
    sys.stderr.flush()

    stop_waiter = asyncio.create_task(stopping.wait())
    await asyncio.wait([stop_waiter, *tasks], return_when=asyncio.FIRST_COMPLETED)
    if on_stop is not None:
        await on_stop()
    for server in servers:
        server.should_exit = True
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
