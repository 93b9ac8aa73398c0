"""Peers for the benchmarks: nginx and HAProxy as real processes on loopback.

Each peer runs with one worker and keep-alive to its upstreams, from a config
written into a temporary directory. Nothing here installs anything: a missing
binary raises :class:`MissingTool` naming it and the command that installs it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "run `make bench-deps` (apt-get install -y nginx haproxy wrk hey)"


class MissingTool(SystemExit):
    def __init__(self, tool: str):
        super().__init__(f"benchmark needs `{tool}`, which is not on PATH: {INSTALL_HINT}")


def require(*tools: str) -> dict[str, str]:
    """Return {tool: path} for each tool, or raise MissingTool for the first one absent."""
    found = {}
    for tool in tools:
        path = shutil.which(tool) or next(
            (p for p in (f"/usr/sbin/{tool}", f"/usr/local/sbin/{tool}") if os.path.exists(p)), None
        )
        if not path:
            raise MissingTool(tool)
        found[tool] = path
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Running:
    name: str
    url: str
    popen: subprocess.Popen

    @property
    def pid(self) -> int:
        return self.popen.pid


def _stop(popen: subprocess.Popen) -> None:
    if popen.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(popen.pid, signal.SIGTERM)
        try:
            popen.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(popen.pid, signal.SIGKILL)
            popen.wait(5)


@contextlib.contextmanager
def _process(name: str, argv: list[str], port: int) -> Iterator[Running]:
    popen = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        try:
            wait_port(port)
        except TimeoutError:
            _stop(popen)
            err = popen.stderr.read().decode(errors="replace") if popen.stderr else ""
            raise RuntimeError(f"{name} did not start: {err.strip()}") from None
        yield Running(name, f"http://127.0.0.1:{port}", popen)
    finally:
        _stop(popen)


def _nginx_main(body: str, workdir: Path) -> str:
    return f"""
worker_processes 1;
daemon off;
master_process off;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log error;
worker_rlimit_nofile 65536;
events {{ worker_connections 20000; }}
http {{
  access_log off;
  client_body_temp_path {workdir}/body;
  proxy_temp_path {workdir}/proxy;
  fastcgi_temp_path {workdir}/fastcgi;
  uwsgi_temp_path {workdir}/uwsgi;
  scgi_temp_path {workdir}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
{body}
}}
"""


@contextlib.contextmanager
def nginx_static(body: bytes = b"hello from the backend\n", *, files: dict | None = None,
                 port: int | None = None) -> Iterator[Running]:
    """nginx serving ``body`` at every path, and ``files`` (name -> path on disk) under /files/."""
    nginx = require("nginx")["nginx"]
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="bench-nginx-") as tmp:
        workdir = Path(tmp)
        filesdir = workdir / "files"
        filesdir.mkdir()
        for name, path in (files or {}).items():
            os.symlink(path, filesdir / name)
        server = f"""
  server {{
    listen 127.0.0.1:{port} reuseport backlog=4096;
    location /files/ {{ alias {filesdir}/; disable_symlinks off; }}
    location / {{ default_type text/plain; return 200 "{body.decode().encode('unicode_escape').decode()}"; }}
  }}"""
        (workdir / "nginx.conf").write_text(_nginx_main(server, workdir))
        with _process("nginx-backend", [nginx, "-c", str(workdir / "nginx.conf"), "-p", tmp], port) as run:
            yield run


@contextlib.contextmanager
def nginx_proxy(upstreams: Sequence[str], *, balance: str = "", port: int | None = None,
                read_timeout_s: int = 60) -> Iterator[Running]:
    """nginx as a reverse proxy with one worker; ``balance`` is an upstream directive
    such as ``least_conn`` or ``random two least_conn`` ("" = round robin)."""
    nginx = require("nginx")["nginx"]
    port = port or free_port()
    servers = "\n".join(f"    server {u.removeprefix('http://')} max_fails=0;" for u in upstreams)
    directive = f"    {balance};" if balance else ""
    with tempfile.TemporaryDirectory(prefix="bench-nginx-proxy-") as tmp:
        workdir = Path(tmp)
        body = f"""
  upstream pods {{
{directive}
{servers}
    keepalive 256;
  }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://pods;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
      proxy_request_buffering off;
      proxy_read_timeout {read_timeout_s}s;
      proxy_next_upstream error timeout;
    }}
  }}"""
        (workdir / "nginx.conf").write_text(_nginx_main(body, workdir))
        with _process(f"nginx({balance or 'round-robin'})",
                      [nginx, "-c", str(workdir / "nginx.conf"), "-p", tmp], port) as run:
            yield run


@contextlib.contextmanager
def haproxy_proxy(upstreams: Sequence[str], *, balance: str = "roundrobin",
                  port: int | None = None, timeout_s: int = 60,
                  maxconn: int | None = None) -> Iterator[Running]:
    """HAProxy with one thread, HTTP mode, connection reuse; ``balance`` as in its
    ``balance`` keyword (``leastconn``, ``random(2)``, ``roundrobin``); ``maxconn``:
    each server's ``maxconn`` (HAProxy queues the rest, as its docs advise for
    servers of a fixed concurrency)."""
    haproxy = require("haproxy")["haproxy"]
    port = port or free_port()
    servers = "\n".join(
        f"    server s{i} {u.removeprefix('http://')}{f' maxconn {maxconn}' if maxconn else ''}"
        for i, u in enumerate(upstreams)
    )
    config = f"""
global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client {timeout_s}s
    timeout server {timeout_s}s
    http-reuse always
    option http-keep-alive
frontend fe
    bind 127.0.0.1:{port}
    default_backend pods
backend pods
    balance {balance}
{servers}
"""
    with tempfile.TemporaryDirectory(prefix="bench-haproxy-") as tmp:
        path = Path(tmp) / "haproxy.cfg"
        path.write_text(config)
        with _process(f"haproxy({balance})", [haproxy, "-db", "-f", str(path)], port) as run:
            yield run


def cpu_seconds(pid: int) -> tuple[float, float]:
    """User and kernel CPU seconds ``pid`` has used, all its threads (utime and stime, fields
    14 and 15 of /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def rss_kb(pid: int, *, children: bool = True) -> int:
    """Resident memory of ``pid`` (plus its descendants) in KiB, from /proc."""
    total = 0
    pids = [pid]
    while pids:
        current = pids.pop()
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
            if children:
                with contextlib.suppress(FileNotFoundError):
                    for task in Path(f"/proc/{current}/task").iterdir():
                        kids = (task / "children").read_text().split()
                        pids.extend(int(k) for k in kids)
    return total
