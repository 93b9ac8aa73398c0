"""The control plane on Kubernetes: while it holds the Lease, autoscale Deployments from katyusha's demand.

Several copies may run; the one holding the Lease (katyusha.kubernetes.leader)
acts. While it leads, one service-keyed autoscaler loop
(katyusha.control.autoscaler.AutoscalerLoop) decides every scaled service,
with:

- demand read from every ready katyusha replica's ``GET /demand`` (the
  replicas found through the EndpointSlices of katyusha's admin Service); one
  answer carries the default service at its top level and every service
  under ``services``, and the replicas' answers are added up;
- requests per second read from each app pod's nonna ``GET /stats``, the
  pods found through their Service's EndpointSlices (its nonna admin port);
- settings from ``config-autoscaler`` keys, overridden by the Service's and
  the Deployment's ``autoscaling.knative.dev/*`` annotations
  (katyusha.kubernetes.settings), read each time leadership starts;
- as actuator the :class:`~katyusha.kubernetes.scale.KubernetesActuator`
  itself, gated by the Lease: it patches a Deployment's ``scale``
  subresource only while this copy leads.

Losing the Lease stops the loop; winning it again starts a new one (fresh
settings, the Deployments' replicas read again). :meth:`KubernetesControlPlane.status`
is the JSON view the admin port serves (katyusha.kubernetes.controlapi).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from kubernetes_asyncio import client as kclient

from katyusha.control.adminclient import AdminClient
from katyusha.control.autoscaler import AutoscalerLoop
from katyusha.control.metrics import ColdStarts
from katyusha.core.autoscaler_config import KPAConfig
from katyusha.core.endpoints import ServiceEndpoints
from katyusha.core.errors import ConfigError
from katyusha.core.scaling import DEFAULT_NAME, ServiceKey
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

    @property
    def service_key(self) -> ServiceKey:
        """The autoscaler's key: None for katyusha's default service (``default``), else the name."""
        return None if self.key == DEFAULT_NAME else self.key

    @classmethod
    def parse(cls, text: str, namespace: str) -> ScaleTarget:
        """``KEY=DEPLOYMENT[:SERVICE]`` in ``namespace``; SERVICE's pods answer on ports ``http``/``nonna-admin``.

        Raises ConfigError naming the text.
        """
        key, eq, rest = text.partition("=")
        deployment, _, service = rest.partition(":")
        if not eq or not key or not deployment:
            raise ConfigError(text, "a scale target is KEY=DEPLOYMENT[:SERVICE]")
        ref = None
        if service:
            ref = dataclasses.replace(ServiceRef.parse(service, namespace), port="http", admin_port="nonna-admin")
        return cls(key, DeploymentRef(namespace, deployment), ref)


class KubernetesControlPlane:
    """Leader election, discovery of katyusha and the app pods, and the autoscaler loop while leading."""

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
        self.targets = {t.service_key: t for t in targets}
        self.base = base
        self.actuator = KubernetesActuator(
            api, {key: t.deployment for key, t in self.targets.items()}, gate=elector.is_leader
        )
        self.pods: dict[str, ServiceEndpoints] = {}
        refs = [katyusha] + [t.service for t in targets if t.service is not None]
        self.discovery = KubernetesDiscovery(api, refs, self._changed, **watch_options)
        self.loop: AutoscalerLoop | None = None
        self.cold = ColdStarts()
        self.client = AdminClient(timeout=2.0)
        self.tasks: list[asyncio.Task] = []
        self.lead_errors = 0

    def _changed(self, key: str, endpoints: ServiceEndpoints) -> None:
        self.pods[key] = endpoints

    def demand_urls(self) -> list[str]:
        """Every ready katyusha replica's ``/demand`` (the default service at top level, all under ``services``)."""
        found = self.pods.get(self.katyusha.key)
        return [f"{pod.url}/demand" for pod in found.ready] if found else []

    def stats_urls(self, key: ServiceKey) -> list[str]:
        """The nonna ``/stats`` URLs of the ready pods of the service ``key``."""
        target = self.targets.get(key)
        found = self.pods.get(target.service.key) if target is not None and target.service is not None else None
        return [f"{pod.admin}/stats" for pod in found.ready if pod.admin] if found else []

    def healthy(self) -> tuple[bool, str]:
        """Whether the Lease and discovery tasks still run (the liveness and readiness answer), and why not."""
        if not self.tasks:
            return False, "not started"
        for task in self.tasks:
            if task.done():
                return False, f"{task.get_name()} stopped"
        return True, "ok"

    def status(self) -> dict:
        """The JSON view: leadership, Lease and watch counters, the pods seen, the autoscaler's decisions."""
        return {
            "identity": self.elector.identity,
            "leader": self.elector.is_leader(),
            "lease": dict(self.elector.counts),
            "watches": {w.service.key: dict(w.counts) for w in self.discovery.watchers},
            "katyusha_replicas": len(self.pods[self.katyusha.key].ready) if self.katyusha.key in self.pods else 0,
            "targets": {t.key: {"deployment": t.deployment.key, "service": t.service.key if t.service else None,
                                "replicas": self.actuator.current(key)}
                        for key, t in self.targets.items()},
            "lead_errors": self.lead_errors,
            "autoscaler": self.loop.status() if self.loop is not None else None,
        }  # fmt: skip

    async def run(self) -> None:
        """Campaign, discover, and autoscale while leading; until cancelled (the Lease is released then)."""
        self.tasks = [
            asyncio.create_task(self.elector.run(), name="lease"),
            asyncio.create_task(self.discovery.run(), name="discovery"),
        ]
        try:
            while True:
                await self.elector.leading.wait()
                try:
                    await self._lead()
                except (ConfigError, *API_FAILURES) as exc:
                    self.lead_errors += 1
                    log.error("cannot autoscale: %s; trying again", exc)
                    await asyncio.sleep(self.elector.core.retry_period)
        finally:
            for task in self.tasks:
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.client.aclose()

    async def _lead(self) -> None:
        await self.actuator.refresh()
        configs = {}
        for key, target in self.targets.items():
            configs[key] = await read_kpa_config(
                self.api, self.base, target.deployment, target.service.name if target.service else None
            )
        self.loop = AutoscalerLoop(
            configs, self.actuator, demand_urls=self.demand_urls, stats_urls=self.stats_urls,
            fetch_json=self.client.get_json, cold=self.cold,
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(self.loop.run(stop), name="autoscaler")
        try:
            while self.elector.is_leader() and not task.done():
                await asyncio.sleep(self.elector.core.retry_period / 2)
        finally:
            stop.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), 5)
            task.cancel()
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.error("autoscaler stopped: %r", task.exception())
