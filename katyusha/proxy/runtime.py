"""One katyusha process assembled: services, discovery, data and admin apps, background work, shutdown.

Graceful shutdown (SIGTERM, see :func:`katyusha.serving.serve`): ``/healthz``
answers 503 at once; for ``drain-grace`` seconds new connections are still
accepted and served (so a balancer or Kubernetes in front stops sending
first); then the data listener closes, idle connections close, and what is
queued is answered (dispatched while pods remain, 503 once none is ready)
and requests in flight finish, within ``shutdown-timeout``; then the servers
stop and the process exits 0.
"""

from __future__ import annotations

import random
import sys

from katyusha import serving
from katyusha.dashboard.feed import DashboardFeed
from katyusha.http import PoolSet, tls
from katyusha.http.server import LeanHTTPProtocol
from katyusha.proxy.admin import AdminApp
from katyusha.proxy.app import DataApp
from katyusha.proxy.background import DemandNotifier, HealthChecker, Prober
from katyusha.proxy.config import ProxyConfig
from katyusha.proxy.discovery import (
    Membership,
    PushSource,
    Source,
    StaticSource,
    configured_sources,
)
from katyusha.proxy.metrics import make_registry
from katyusha.proxy.service import LiveService

ROLE = "katyusha"

# The data port's HTTP/1.1 protocol inside uvicorn.Server: "lean" is
# katyusha.http.server (head and body in one write, no per-request timer;
# about 1.35x the requests a second, see docs/performance.md), "uvicorn" is
# uvicorn's own httptools protocol. The admin port always uses uvicorn's.
DATA_HTTP = {"lean": LeanHTTPProtocol, "uvicorn": "httptools"}


def data_http(config: ProxyConfig, context=None, sock=None):
    """The ``http`` argument of uvicorn for the data port, from ``http-server``, the limits, TLS.

    ``sock``: the listening socket, from which the lean protocol accepts bursts of
    connections (smaller ones when ``katyusha-threads`` workers share it).
    """
    if config.http_server == "lean":
        return LeanHTTPProtocol.with_limits(config.limits, context, sock, sharing=config.threads)
    return DATA_HTTP[config.http_server]


def data_app(config: ProxyConfig, app, sock) -> serving.App:
    """The data port's :class:`serving.App`: protocol, limits and TLS from ``config``."""
    context = tls.server_context(config.tls_cert, config.tls_key)
    return serving.App(app, sock, http=data_http(config, context, sock), tls=context,
                       keepalive_timeout=config.keepalive_timeout,
                       limit_concurrency=(config.max_connections or None
                                          if config.http_server == "uvicorn" else None))


class Proxy:
    """Everything one katyusha process runs; ``data`` and ``admin`` are the two ASGI apps."""

    def __init__(self, config: ProxyConfig, *, admin_notes: dict | None = None):
        self.config = config
        self.pools = PoolSet(
            max_idle=config.upstream_connections, connect_timeout=config.connect_timeout,
            max_head=config.max_response_head_bytes,
            tls=tls.upstream_context(config.upstream_ca, config.upstream_tls_verify),
        )
        self.side_pools = PoolSet(max_idle=4, connect_timeout=config.connect_timeout)
        self.services = [
            LiveService(config.service_settings(spec), rng=_rng(config.seed, index, spec.name),
                        hosts=spec.hosts, path_prefix=spec.path_prefix)
            for index, spec in enumerate(config.service_specs)
        ]
        self.membership = Membership(self.services, config.default_service)
        self.push = PushSource()
        self.sources: list[Source] = [StaticSource(config.service_specs), self.push,
                                      *configured_sources(config)]
        for source in self.sources:
            source.start(self.membership)
        self.notifiers: list[DemandNotifier] = []
        if config.demand_url:
            for live in self.services:
                notifier = DemandNotifier(config.demand_url, self._demand_view(live), self.side_pools,
                                          token=config.admin_token)
                live.on_demand = notifier
                self.notifiers.append(notifier)
        self.prober = Prober(self.services, self.side_pools, rate=config.probe_rate)
        self.health = HealthChecker(self.services, self.side_pools, timeout=config.health_timeout)
        self.draining = False
        self.data = DataApp(
            config, self.services, self.pools, on_startup=self.startup, on_shutdown=self.close,
        )
        self.registry = make_registry(self._metric_views)
        self.dashboard = DashboardFeed(self.services)
        self.admin = AdminApp(config, self.membership, self.push, self.registry, admin_notes,
                              draining=lambda: self.draining, dashboard=self.dashboard)

    def _demand_view(self, live: LiveService):
        def view() -> dict:
            live.stats.demand_posts += 1
            return {"service": live.name, **live.demand()}

        return view

    def _metric_views(self):
        for live in self.services:
            yield live.name, live.stats, live.state()
        yield "", self.data.unrouted, None

    async def startup(self) -> None:
        self.prober.start()
        self.health.start()
        self.dashboard.start()
        for source in self.sources:
            await source.open()

    def drain(self) -> None:
        """Shutdown began: ``/healthz`` answers 503 from now on."""
        self.draining = True

    async def stop(self) -> None:
        """Answer what is queued and let in-flight requests finish, within ``shutdown-timeout``.

        Requests waiting for a service with no ready pod get 503 at once (and
        so do those of a service that loses its last pod meanwhile); the rest
        are served while pods remain.
        """
        self.draining = True
        for live in self.services:
            live.stopping = True
            if not live.core.table.ready():
                live.fail_waiting("katyusha is shutting down and no pod is ready")
        if not await self.data.wait_idle(self.config.shutdown_timeout):
            for live in self.services:
                live.fail_waiting("katyusha is shutting down")

    async def close(self) -> None:
        await self.dashboard.close()
        await self.prober.close()
        await self.health.close()
        for notifier in self.notifiers:
            await notifier.close()
        for source in self.sources:
            await source.close()
        await self.pools.close_all()
        await self.side_pools.close_all()


def _rng(seed: int | None, index: int, name: str) -> random.Random:
    """The policy's random source: ``seed`` itself for the first service, one derived from it for others."""
    if seed is None or index == 0:
        return random.Random(seed)
    return random.Random(f"{seed}:{name}")


def bind(config: ProxyConfig, *, reuse_port: bool = False):
    """Bind the data and admin sockets. Raises OSError naming the address.

    With ``listen-fd`` the data socket is the one inherited on that descriptor
    (a supervisor holds it across restarts, see katyusha.fleet.runner); only
    the admin port is bound here.
    """
    if config.listen_fd is not None:
        data = serving.inherited_socket(config.listen_fd)
    else:
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
        [data_app(config, proxy.data, data_sock), serving.App(proxy.admin, admin_sock)],
        role=ROLE,
        on_drain=proxy.drain,
        drain_grace=config.drain_grace,
        on_stop=proxy.stop,
        graceful_timeout=config.shutdown_timeout,
        log_level=config.log_level,
    )
