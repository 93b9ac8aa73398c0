"""The control plane on Kubernetes: while it holds the Lease, autoscale Deployments from katyusha's demand.

Several copies may run; the one holding the Lease (katyusha.kubernetes.leader)
acts. While it leads, each scaled service runs the live autoscaler loop
(katyusha.control.autoscaler) with:

- demand read from every katyusha replica's ``GET /demand``, the replicas
  found through the EndpointSlices of katyusha's admin Service;
- requests per second read from each app pod's nonna ``GET /stats``, the
  pods found through their Service's EndpointSlices (its nonna admin port);
- settings from ``config-autoscaler`` keys, overridden by the Service's and
  the Deployment's annotations (katyusha.kubernetes.settings), read each time
  leadership starts;
- as actuator, the Deployment's ``scale`` subresource
  (katyusha.kubernetes.scale), which refuses to act once leadership lapsed.

Losing the Lease stops the loops; winning it again starts them afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from kubernetes_asyncio import client as kclient

from katyusha.control.adminclient import AdminClient
from katyusha.control.autoscaler import AutoscalerLoop
from katyusha.core.autoscaler_config import KPAConfig
from katyusha.core.endpoints import ServiceEndpoints
from katyusha.core.errors import ConfigError
from katyusha.kubernetes.discovery import API_FAILURES, KubernetesDiscovery, ServiceRef
from katyusha.kubernetes.leader import LeaderElector
from katyusha.kubernetes.scale import DeploymentRef, KubernetesActuator
from katyusha.kubernetes.settings import read_kpa_config

log = logging.getLogger("katyusha.kubernetes")


@dataclass(frozen=True)
class ScaleTarget:
    """One autoscaled service: katyusha's name for it, its Deployment, and its Service (for pods and annotations)."""

    key: str
    deployment: DeploymentRef
    service: ServiceRef | None = None

    @classmethod
    def parse(cls, text: str, namespace: str) -> ScaleTarget:
        """``KEY=DEPLOYMENT[:SERVICE]`` in ``namespace``; SERVICE's pods answer on ports ``http``/``nonna-admin``.

        Raises ConfigError naming the text.
        """
        key, eq, rest = text.partition("=")
        deployment, _, service = rest.partition(":")
        if not eq or not key or not deployment:
            raise ConfigError(text, "a scale target is KEY=DEPLOYMENT[:SERVICE]")
        ref = ServiceRef(namespace, service, port="http", admin_port="nonna-admin") if service else None
        return cls(key, DeploymentRef(namespace, deployment), ref)


class _LeaderActuator:
    """One service's view of the Kubernetes actuator, acting only while this control plane leads."""

    def __init__(self, actuator: KubernetesActuator, key: str, elector: LeaderElector):
        self.actuator, self.key, self.elector = actuator, key, elector

    def current(self, service=None) -> int:
        return self.actuator.current(self.key)

    async def scale_to(self, service, count: int) -> None:
        if not self.elector.is_leader():
            log.warning("not scaling %s to %d: no longer the leader", self.key, count)
            return
        await self.actuator.scale_to(self.key, count)


class KubernetesControlPlane:
    """Leader election, discovery of katyusha and the app pods, and one autoscaler loop per target."""

    def __init__(
        self,
        api: kclient.ApiClient,
        elector: LeaderElector,
        katyusha: ServiceRef,
        targets: Sequence[ScaleTarget],
        base: KPAConfig,
        **watch_options,
    ):
        self.api = api
        self.elector = elector
        self.katyusha = katyusha
        self.targets = {t.key: t for t in targets}
        self.base = base
        self.actuator = KubernetesActuator(api, {t.key: t.deployment for t in targets})
        self.pods: dict[str, ServiceEndpoints] = {}
        refs = [katyusha] + [t.service for t in targets if t.service is not None]
        self.discovery = KubernetesDiscovery(api, refs, self._changed, **watch_options)
        self.loops: dict[str, AutoscalerLoop] = {}
        self.client = AdminClient(timeout=2.0)

    def _changed(self, key: str, endpoints: ServiceEndpoints) -> None:
        self.pods[key] = endpoints

    def demand_urls(self, target: str) -> list[str]:
        """Every ready katyusha replica's ``/demand`` for ``target`` (the default service: no parameter)."""
        query = "" if target == "default" else f"?service={target}"
        found = self.pods.get(self.katyusha.key)
        return [f"{pod.url}/demand{query}" for pod in found.ready] if found else []

    def service_key(self, target: str) -> str | None:
        """The autoscaler's key of ``target``: a ``?service=`` demand answers at top level, as the default does."""
        return None

    def stats_urls(self, target: str) -> list[str]:
        """The nonna ``/stats`` URLs of ``target``'s ready pods."""
        service = self.targets[target].service
        found = self.pods.get(service.key) if service is not None else None
        return [f"{pod.admin}/stats" for pod in found.ready if pod.admin] if found else []

    async def run(self) -> None:
        """Campaign, discover, and autoscale while leading; until cancelled (the Lease is released then)."""
        background = [
            asyncio.create_task(self.elector.run(), name="lease"),
            asyncio.create_task(self.discovery.run(), name="discovery"),
        ]
        try:
            while True:
                await self.elector.leading.wait()
                try:
                    await self._lead()
                except (ConfigError, *API_FAILURES) as exc:
                    log.error("cannot autoscale: %s; trying again", exc)
                    await asyncio.sleep(self.elector.core.retry_period)
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self.client.aclose()

    async def _lead(self) -> None:
        await self.actuator.refresh()
        self.loops = {}
        for key, target in self.targets.items():
            config = await read_kpa_config(
                self.api, self.base, target.deployment, target.service.name if target.service else None
            )
            self.loops[key] = AutoscalerLoop(
                {self.service_key(key): config}, _LeaderActuator(self.actuator, key, self.elector),
                demand_urls=lambda key=key: self.demand_urls(key),
                stats_urls=lambda _service, key=key: self.stats_urls(key),
                fetch_json=self.client.get_json,
            )  # fmt: skip
        stop = asyncio.Event()
        tasks = [asyncio.create_task(loop.run(stop), name=f"autoscaler {key}") for key, loop in self.loops.items()]
        try:
            while self.elector.is_leader() and not any(task.done() for task in tasks):
                await asyncio.sleep(self.elector.core.retry_period / 2)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 5)
            for task in tasks:
                task.cancel()
        for task in tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                log.error("autoscaler stopped: %r", task.exception())

