"""One katyusha process assembled: balancer, data and admin apps, background work, shutdown.

Graceful shutdown (SIGTERM): the proxy stops admitting nothing new on its
own, answers what is queued (dispatched while pods remain, 503 once none is
ready), lets requests in flight finish within ``shutdown-timeout``, then the
servers stop and the process exits 0.
"""

from __future__ import annotations

import asyncio
import sys

from katyusha import serving
from katyusha.core.errors import NoReadyPod
from katyusha.http import PoolSet
from katyusha.http.server import LeanHTTPProtocol
from katyusha.proxy.admin import AdminApp
from katyusha.proxy.app import DataApp
from katyusha.proxy.background import DemandNotifier, Prober
from katyusha.proxy.balancer import Balancer
from katyusha.proxy.config import ProxyConfig
from katyusha.proxy.metrics import ProxyStats, make_registry

ROLE = "katyusha"

# The data port's HTTP/1.1 protocol inside uvicorn.Server: "lean" is
# katyusha.http.server (head and body in one write, no per-request timer;
# about 1.35x the requests a second, see docs/performance.md), "uvicorn" is
# uvicorn's own httptools protocol. The admin port always uses uvicorn's.
DATA_HTTP = {"lean": LeanHTTPProtocol, "uvicorn": "httptools"}


def data_http(config: ProxyConfig):
    """The ``http`` argument of uvicorn for the data port, from the ``http-server`` setting."""
    return DATA_HTTP[config.http_server]


class Proxy:
    """Everything one katyusha process runs; ``data`` and ``admin`` are the two ASGI apps."""

    def __init__(self, config: ProxyConfig, *, admin_notes: dict | None = None):
        self.config = config
        self.stats = ProxyStats()
        self.pools = PoolSet(
            max_idle=config.upstream_connections, connect_timeout=config.connect_timeout
        )
        self.side_pools = PoolSet(max_idle=4, connect_timeout=config.connect_timeout)
        self.balancer = Balancer(config)
        self.demand: DemandNotifier | None = None
        if config.demand_url:
            self.demand = DemandNotifier(config.demand_url, self._demand_view, self.side_pools)
            self.balancer.on_demand = self.demand
        self.prober = Prober(self.balancer, self.side_pools, rate=config.probe_rate)
        self.registry = make_registry(self.stats, self.balancer.state)
        self.data = DataApp(
            config, self.balancer, self.stats, self.pools,
            on_startup=self.startup, on_shutdown=self.close,
        )
        self.admin = AdminApp(config, self.balancer, self.registry, admin_notes)

    def _demand_view(self) -> dict:
        self.stats.demand_posts += 1
        return self.balancer.demand()

    async def startup(self) -> None:
        self.prober.start()

    async def stop(self) -> None:
        """Answer what is queued and let in-flight requests finish, within ``shutdown-timeout``."""
        balancer = self.balancer
        balancer.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.shutdown_timeout
        while loop.time() < deadline:
            if balancer.queue.waiting and not balancer.table.ready():
                balancer.fail_waiting(NoReadyPod("katyusha is shutting down and no pod is ready"))
            if not balancer.queue.waiting and not self.data.in_progress:
                return
            await asyncio.sleep(0.02)
        balancer.fail_waiting(NoReadyPod("katyusha is shutting down"))

    async def close(self) -> None:
        await self.prober.close()
        if self.demand is not None:
            await self.demand.close()
        await self.pools.close_all()
        await self.side_pools.close_all()


def bind(config: ProxyConfig, *, reuse_port: bool = False):
    """Bind the data and admin sockets. Raises OSError naming the address."""
    data = serving.bind_socket(config.host, config.port, reuse_port=reuse_port)
    try:
        admin = serving.bind_socket(config.host, config.admin_port)
    except OSError:
        data.close()
        raise
    return data, admin


def run_single(config: ProxyConfig) -> int:
    """Serve one katyusha process until SIGTERM; returns the exit status."""
    try:
        data_sock, admin_sock = bind(config)
    except OSError as exc:
        sys.stderr.write(f"katyusha: {exc.strerror}\n")
        return 1
    proxy = Proxy(config)
    return serving.run(
        [serving.App(proxy.data, data_sock, http=data_http(config)),
         serving.App(proxy.admin, admin_sock)],
        role=ROLE,
        on_stop=proxy.stop,
        graceful_timeout=config.shutdown_timeout,
        log_level=config.log_level,
    )
