"""The autoscaler running live beside a local fleet: admin server, control loop and fleet actuator together.

:class:`LiveAutoscaler` binds its admin port at construction, so its
``demand_url`` can be given to katyusha (``--demand-url``) before katyusha
starts; :meth:`LiveAutoscaler.start` then adopts the pods already serving and
begins ticking. Until then the admin port answers 503.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable, Sequence

from katyusha.control.actuator import FleetActuator, Slot
from katyusha.control.autoscaler import AutoscalerLoop, _respond
from katyusha.control.choose import PodChooser
from katyusha.control.metrics import ColdStarts
from katyusha.control.server import EmbeddedServer
from katyusha.control.settings import AutoscaleSettings


class LiveAutoscaler:
    """One fleet's autoscaler: ``start()``, ``stop()``, ``may_serve(name)`` for the runner, ``status()``."""

    def __init__(
        self,
        settings: AutoscaleSettings,
        slots: Callable[[], Sequence[Slot]],
        replicas: Callable[[], Sequence[str]],
        *,
        host: str = "127.0.0.1",
        pod_stats_urls: Callable[[], Iterable[str]] | None = None,
        guard: Callable[[str], contextlib.AbstractAsyncContextManager] | None = None,
        chooser: PodChooser | None = None,
    ):
        """Binds the admin port now (raises OSError when it cannot listen); see FleetActuator for ``guard`` and ``chooser``.

        A chooser with a ``status()`` method is served as ``GET /placement``.
        """
        self.settings = settings
        self.cold = ColdStarts()
        self.actuator = FleetActuator(
            slots, replicas, retire_to=settings.retire_to, cold=self.cold, guard=guard, chooser=chooser
        )
        self.chooser = chooser
        self.replicas = replicas
        self.pod_stats_urls = pod_stats_urls
        self.loop: AutoscalerLoop | None = None
        self._asgi: Callable | None = None
        self.server = EmbeddedServer(self._app, host, settings.admin_port)
        self._stop = asyncio.Event()
        self._task: asyncio.Task | None = None

    @property
    def admin_url(self) -> str:
        return self.server.url

    @property
    def demand_url(self) -> str:
        """Where katyusha POSTs its demand notices."""
        return self.server.url + "/demand"

    def may_serve(self, name: str) -> bool:
        """Whether pod ``name`` belongs in katyusha's sets now."""
        return self.actuator.may_serve(name)

    async def start(self) -> None:
        """Adopt the pods already serving, serve the admin port and start the control loop."""
        await self.actuator.adopt()
        self.loop = AutoscalerLoop(
            self.settings.kpa,
            self.actuator,
            demand_urls=lambda: [admin + "/demand" for admin in self.replicas()],
            pod_stats_urls=self.pod_stats_urls,
            cold=self.cold,
        )
        self._asgi = self.loop.asgi_app()
        await self.server.start()
        self._task = asyncio.get_running_loop().create_task(self.loop.run(self._stop))

    async def stop(self) -> None:
        """Stop deciding, stop pod moves in progress, close the admin port."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        await self.actuator.close()
        await self.server.stop()

    def status(self) -> dict | None:
        return self.loop.status() if self.loop is not None else None

    async def _app(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/placement" and hasattr(self.chooser, "status"):
            if scope["method"] != "GET":
                await _respond(send, 405, {"error": "use GET /placement"}, allow="GET")
            else:
                await _respond(send, 200, self.chooser.status())
        elif self._asgi is not None:
            await self._asgi(scope, receive, send)
        elif scope["type"] == "http":
            await _respond(send, 503, {"error": "the autoscaler is starting"})
