"""Where katyusha's pod sets come from: discovery sources feeding one writer per process.

Every source turns what it learns into :class:`~katyusha.core.membership.PodChange`
values and hands them to :meth:`Membership.apply`, the only code that changes a
service's pod set (through its core balancer's ``change_pods``). Sources now:

* :class:`StaticSource`: the pods in the settings (``--pod``, ``pods``,
  ``services[i].pods``), applied once at start;
* :class:`PushSource`: the admin API (``PUT /pods``, ``DELETE /pods/{name}``),
  which the local fleet and its control plane call.

* :class:`katyusha.kubernetes.source.KubernetesSource` (``discovery:
  kubernetes``): each followed Service's EndpointSlices, watched; every change
  of its pod set is one ``replace`` change (ready pods in, the rest drained).

A source implements :class:`Source`: ``start`` when the process is built,
``open`` once its event loop runs (for sources with background work),
``close`` on shutdown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from katyusha.core.errors import NotFound
from katyusha.core.membership import ChangeResult, PodChange, PodSpec
from katyusha.proxy.service import LiveService
from katyusha.proxy.services_config import ServiceSpec

if TYPE_CHECKING:
    from katyusha.proxy.config import ProxyConfig


class Membership:
    """The services of one process by name, and the one writer of their pod sets."""

    def __init__(self, services: Sequence[LiveService], default: str):
        self.services: dict[str, LiveService] = {live.name: live for live in services}
        self.default = default

    def service(self, name: str | None) -> LiveService:
        """The service called ``name`` (the default one for None). Raises NotFound (404) naming it."""
        live = self.services.get(self.default if name is None else name)
        if live is None:
            raise NotFound(f"unknown service {name!r} (known: {', '.join(self.services)})")
        return live

    def apply(self, name: str | None, change: PodChange) -> ChangeResult:
        """Apply ``change`` to service ``name``; the requests it lets in are woken. Raises NotFound."""
        return self.service(name).apply(change)


class Source(Protocol):
    """A source of membership changes: started once with the writer, closed on shutdown."""

    name: str

    def start(self, membership: Membership) -> None: ...

    async def open(self) -> None: ...

    async def close(self) -> None: ...


class StaticSource:
    """The pods given in the settings, applied once at start (each service's set made exactly them)."""

    name = "static"

    def __init__(self, specs: Sequence[ServiceSpec]):
        self.specs = tuple(specs)

    def start(self, membership: Membership) -> None:
        for spec in self.specs:
            membership.apply(spec.name, PodChange(upsert=spec.pods, replace=True, source=self.name))

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


class PushSource:
    """Changes pushed through the admin API: upserts, replaces and drained removals."""

    name = "push"

    def __init__(self) -> None:
        self.membership: Membership | None = None

    def start(self, membership: Membership) -> None:
        self.membership = membership

    def _writer(self) -> Membership:
        if self.membership is None:
            raise RuntimeError("PushSource used before start()")
        return self.membership

    def put(self, service: str | None, pods: Sequence[PodSpec], replace: bool) -> ChangeResult:
        """Upsert ``pods`` into ``service`` (the set becomes exactly them with ``replace``). Raises NotFound."""
        return self._writer().apply(service, PodChange(upsert=tuple(pods), replace=replace, source=self.name))

    async def delete(self, service: str | None, pod: str, timeout: float) -> dict:
        """Take ``pod`` out of picking, then wait (up to ``timeout``) until its requests ended.

        Returns ``{"name", "drained", "in_flight"}``. Raises NotFound for an
        unknown service or pod.
        """
        live = self._writer().service(service)
        result = live.apply(PodChange(remove=(pod,), source=self.name))
        if not result.removed:
            raise NotFound(f"unknown pod {pod!r} in service {live.name!r}")
        entry = result.removed[0]
        drained = await live.drained(entry, timeout)
        return {"name": pod, "drained": drained, "in_flight": entry.in_flight}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None


def configured_sources(config: ProxyConfig) -> list[Source]:
    """The sources beyond static and push that ``config`` asks for (``discovery``)."""
    if config.discovery != "kubernetes":
        return []
    from katyusha.kubernetes.source import KubernetesSource

    return [KubernetesSource.from_config(config)]
