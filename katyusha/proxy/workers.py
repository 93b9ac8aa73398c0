"""``katyusha-threads`` > 1: several worker processes sharing one data port.

The data socket is bound once, before forking, and every worker accepts on
it (the kernel spreads connections). The first process is worker 0: it also
serves the public admin port. Each other worker serves a private admin port
on 127.0.0.1 that only worker 0 talks to. Every worker has its own L1 queue,
load table and policy; worker 0's admin fans changes out and gathers views:

* ``PUT /pods`` and ``DELETE /pods/{name}`` are applied by every worker
  (``drained`` is true when all drained; ``in_flight`` is the sum);
* ``GET /pods`` lists each worker's table under ``workers``;
* ``GET /demand`` sums ``waiting`` and ``in_flight`` (``ready_pods`` is the most any worker has),
  per service too;
* ``GET /trace`` merges every worker's picks (each marked with its ``worker``);
  ``GET /services`` is worker 0's, with every worker's under ``workers``;
* ``GET /metrics`` is every worker's metrics with a ``worker`` label;
* ``GET /dashboard/data`` is every worker's services as one katyusha: counts, rates, in flight and the
  L1 queue summed, p50/p99 from the summed latency sketches (katyusha.dashboard.view).

SIGTERM to worker 0 stops the others; a worker whose parent died stops itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from katyusha import serving
from katyusha.dashboard.view import Group
from katyusha.http import PoolSet, UpstreamError
from katyusha.proxy.admin import METRICS_TYPE, AdminApp
from katyusha.proxy.asgi import read_body, respond, respond_json
from katyusha.proxy.config import ProxyConfig
from katyusha.proxy.runtime import ROLE, Proxy, bind, data_app


class _HideReadyLine:
    """stderr of a non-first worker: its ready line is dropped so only worker 0 announces the process."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        if serving.parse_ready_line(text):
            return len(text)
        return self._stream.write(text)

    def __getattr__(self, name):
        return getattr(self._stream, name)


async def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(0.5)
    os.kill(os.getpid(), signal.SIGTERM)


def _run_child(config: ProxyConfig, index: int, data_sock, admin_sock) -> int:
    sys.stderr = _HideReadyLine(sys.stderr)
    proxy = Proxy(config, admin_notes={"worker": index, "workers": config.threads})
    parent = os.getppid()
    startup = proxy.data.on_startup

    async def on_startup() -> None:
        await startup()
        asyncio.get_running_loop().create_task(_watch_parent(parent))

    proxy.data.on_startup = on_startup
    return serving.run(
        [data_app(config, proxy.data, data_sock), serving.App(proxy.admin, admin_sock)],
        role=f"{ROLE}-worker",
        on_drain=proxy.drain,
        drain_grace=config.drain_grace,
        on_stop=proxy.stop,
        graceful_timeout=config.shutdown_timeout,
        log_level=config.log_level,
    )


def run_workers(config: ProxyConfig) -> int:
    """Fork ``config.threads`` workers on one data port; returns worker 0's exit status."""
    try:
        data_sock, admin_sock = bind(config)
        private = [serving.bind_socket("127.0.0.1", 0) for _ in range(config.threads - 1)]
    except OSError as exc:
        sys.stderr.write(f"katyusha: {exc.strerror}\n")
        return 1
    children: list[int] = []
    for index, sock in enumerate(private, start=1):
        pid = os.fork()
        if pid == 0:
            admin_sock.close()
            for other in private:
                if other is not sock:
                    other.close()
            code = 1
            try:
                code = _run_child(config, index, data_sock, sock)
            finally:
                os._exit(code)
        children.append(pid)
    peers = [serving.socket_url(sock) for sock in private]
    for sock in private:
        sock.close()
    proxy = Proxy(config, admin_notes={"worker": 0, "workers": config.threads})
    admin = FanOutAdmin(proxy.admin, peers, proxy.side_pools)

    def on_drain() -> None:
        # The workers drain alongside: each counts its own drain-grace from now.
        proxy.drain()
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    async def on_stop() -> None:
        await proxy.stop()
        await asyncio.to_thread(_reap, children, config.shutdown_timeout + 5)

    status = serving.run(
        [data_app(config, proxy.data, data_sock), serving.App(admin, admin_sock)],
        role=ROLE,
        on_drain=on_drain,
        drain_grace=config.drain_grace,
        on_stop=on_stop,
        graceful_timeout=config.shutdown_timeout,
        log_level=config.log_level,
    )
    _reap(children, 1.0)
    return status


def _reap(children: list[int], timeout: float) -> None:
    import time

    deadline = time.monotonic() + timeout
    pending = set(children)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                done = pid
            if done:
                pending.discard(pid)
        time.sleep(0.05)
    for pid in pending:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


class FanOutAdmin:
    """Worker 0's admin app: its own routes, with pod changes and views spread over every worker."""

    def __init__(self, local: AdminApp, peers: list[str], pools: PoolSet, timeout: float = 35.0):
        self.local = local
        self.peers = peers
        self.pools = pools
        self.timeout = timeout
        self._group: Group | None = None  # the dashboard's copy of every worker's points

    async def _peer(self, url: str, method: bytes, target: bytes, body: bytes | None = None,
                    auth: list | None = None):
        """(status, body bytes) from one worker's private admin; (502, message) when it fails."""
        try:
            response = await self.pools.get(url).request(
                method, target, ([(b"content-type", b"application/json")] if body else []) + (auth or []),
                body, timeout=self.timeout,
            )
            async with response:
                return response.status, await response.read()
        except (UpstreamError, OSError) as exc:
            return 502, json.dumps({"error": f"worker at {url}: {exc}"}).encode()

    async def _local(self, scope, body: bytes = b""):
        """Run the local admin app on a request and capture (status, body)."""
        sent = {"status": 500, "body": []}
        messages = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive():
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message):
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
            else:
                sent["body"].append(message.get("body", b""))

        await self.local(scope, receive, send)
        return sent["status"], b"".join(sent["body"])

    async def _everywhere(self, scope, body: bytes = b""):
        target = scope.get("raw_path") or scope["path"].encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        method = scope["method"].encode()
        # The admin token goes on to the workers, which check it too.
        auth = [item for item in scope["headers"] if item[0] == b"authorization"]
        results = await asyncio.gather(
            self._local(scope, body),
            *(self._peer(url, method, target, body or None, auth) for url in self.peers),
        )
        return [(status, _json(data)) for status, data in results]

    async def _dashboard(self, scope) -> tuple[int, dict]:
        """``/dashboard/data`` of every worker as one katyusha (katyusha.dashboard.view.Group)."""
        if self._group is None:
            self._group = Group(1 + len(self.peers))
        group = self._group
        only = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("service", [None])[-1]

        def target(worker: int) -> bytes:
            since = group.since(worker)
            return b"/dashboard/raw" + (b"" if since is None else f"?since={since!r}".encode())

        local = {**scope, "path": "/dashboard/raw", "raw_path": b"/dashboard/raw",
                 "query_string": target(0).partition(b"?")[2]}
        results = await asyncio.gather(
            self._local(local), *(self._peer(url, b"GET", target(index)) for index, url in enumerate(self.peers, 1)))
        if results[0][0] != 200:
            return results[0][0], _json(results[0][1])
        raws = [_json(body) if status == 200 else None for status, body in results]
        if only is not None and only not in {s["name"] for s in raws[0].get("services", [])}:
            return 404, {"error": f"no service {only!r}"}
        return 200, group.data(raws, only)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or not self.peers:
            await self.local(scope, receive, send)
            return
        method, path = scope["method"], scope["path"]
        if path == "/pods" and method in ("PUT", "POST"):
            results = await self._everywhere(scope, await read_body(receive))
            status, first = results[0]
            await respond_json(send, status, {**first, "workers": [r[1] for r in results]})
        elif path.startswith("/pods/") and method == "DELETE":
            results = await self._everywhere(scope)
            known = [r for r in results if r[0] == 200]
            if not known:
                await respond_json(send, results[0][0], results[0][1])
                return
            await respond_json(send, 200, {
                "name": known[0][1].get("name"),
                "drained": all(r[1].get("drained") for r in known),
                "in_flight": sum(r[1].get("in_flight", 0) for r in known),
                "workers": len(results),
            })
        elif path == "/pods" and method == "GET":
            results = await self._everywhere(scope)
            first = results[0][1]
            await respond_json(send, 200, {
                "policy": first.get("policy"),
                "ready_pods": first.get("ready_pods"),
                "pods": first.get("pods"),
                "workers": [r[1] for r in results],
            })
        elif path == "/demand" and method == "GET":
            results = await self._everywhere(scope)
            rows = [r[1] for r in results if r[0] == 200]
            if not rows:
                await respond_json(send, results[0][0], results[0][1])
                return
            await respond_json(send, 200, merge_demand(rows))
        elif path in ("/trace", "/services") and method == "GET":
            results = await self._everywhere(scope)
            status, first = results[0]
            if path == "/trace" and status == 200:
                picks = [dict(pick, worker=index) for index, (code, doc) in enumerate(results)
                         if code == 200 for pick in doc.get("picks", [])]
                first = {**first, "picks": sorted(picks, key=lambda pick: pick["at"])}
            await respond_json(send, status, {**first, "workers": [r[1] for r in results]}
                               if path == "/services" else first)
        elif path == "/dashboard/data" and method == "GET" and self.local.dashboard is not None:
            status, doc = await self._dashboard(scope)
            await respond_json(send, status, doc)
        elif path == "/metrics" and method == "GET":
            texts = [self.local.registry]
            peers = await asyncio.gather(
                *(self._peer(url, b"GET", b"/metrics") for url in self.peers)
            )
            await respond(send, 200, merge_metrics(texts[0], [p[1] for p in peers]), METRICS_TYPE)
        else:
            await self.local(scope, receive, send)


def merge_demand(rows: list[dict]) -> dict:
    """Every worker's demand as one: waiting and in flight summed, the most ready pods any has.

    Per service too, under ``services`` when the workers' documents have it.
    """
    def one(docs: list[dict]) -> dict:
        return {"waiting": sum(d["waiting"] for d in docs),
                "in_flight": sum(d["in_flight"] for d in docs),
                "ready_pods": max(d["ready_pods"] for d in docs)}

    merged = one(rows)
    if "service" in rows[0]:
        merged = {"service": rows[0]["service"], **merged}
    if "services" in rows[0]:
        names = rows[0]["services"]
        merged["services"] = {name: one([r["services"][name] for r in rows if name in r.get("services", {})])
                              for name in names}
    return merged


def _json(data: bytes) -> dict:
    try:
        value = json.loads(data or b"{}")
    except ValueError:
        return {"error": data[:200].decode("latin-1")}
    return value if isinstance(value, dict) else {"value": value}


def merge_metrics(local: CollectorRegistry, peers: list[bytes]) -> bytes:
    """One exposition of worker 0's registry and the workers' texts, each sample labelled ``worker``."""
    families: dict[str, Metric] = {}
    texts = [generate_latest(local).decode(), *(p.decode("utf-8", "replace") for p in peers)]
    for index, text in enumerate(texts):
        try:
            parsed = list(text_string_to_metric_families(text))
        except ValueError:
            continue
        for family in parsed:
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
            for sample in family.samples:
                labels = {**sample.labels, "worker": str(index)}
                merged.samples.append(Sample(sample.name, labels, sample.value, sample.timestamp))

    class _Merged:
        def collect(self):
            return list(families.values())

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())
    return generate_latest(registry)
