"""Scaling through the API: a Deployment's ``scale`` subresource, and the KPA actuator built on it.

The autoscaler decides a pod count per service (katyusha.core.autoscaler);
on Kubernetes a service's pods are a Deployment's replicas, so carrying out
a decision is one ``PATCH .../deployments/NAME/scale`` setting
``spec.replicas``. Kubernetes then starts or stops pods; a terminating pod
turns up as a terminating endpoint, which every katyusha replica drains
(katyusha.kubernetes.discovery). The ``scale`` subresource is all the
control plane needs: RBAC grants ``get`` and ``patch`` on
``deployments/scale`` and nothing on the Deployments themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from kubernetes_asyncio import client as kclient

from katyusha.core.errors import ConfigError
from katyusha.kubernetes.connect import json_body

log = logging.getLogger("katyusha.kubernetes")


@dataclass(frozen=True)
class DeploymentRef:
    """A Deployment by ``namespace/name``."""

    namespace: str
    name: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> DeploymentRef:
        """``NAMESPACE/NAME``. Raises ConfigError naming the text."""
        namespace, slash, name = text.partition("/")
        if not slash or not namespace or not name or "/" in name:
            raise ConfigError(text, "a Deployment is NAMESPACE/NAME")
        return cls(namespace, name)


@dataclass(frozen=True)
class Scale:
    """A Deployment's scale: replicas asked for (``spec.replicas``) and replicas that exist (``status.replicas``)."""

    replicas: int
    current: int

    @classmethod
    def from_document(cls, document: Mapping) -> Scale:
        spec = document.get("spec") if isinstance(document.get("spec"), Mapping) else {}
        status = document.get("status") if isinstance(document.get("status"), Mapping) else {}
        replicas = spec.get("replicas")
        current = status.get("replicas")
        return cls(
            replicas=replicas if isinstance(replicas, int) else 0,
            current=current if isinstance(current, int) else 0,
        )


class DeploymentScaler:
    """Reads and patches one Deployment's ``scale`` subresource. Calls raise ApiException."""

    def __init__(self, api: kclient.ApiClient, ref: DeploymentRef):
        self.ref = ref
        self.apps = kclient.AppsV1Api(api)

    async def read(self) -> Scale:
        response = await self.apps.read_namespaced_deployment_scale(
            self.ref.name, self.ref.namespace, _preload_content=False, _request_timeout=(10.0, 30.0)
        )
        return Scale.from_document(await json_body(response))

    async def patch(self, replicas: int) -> Scale:
        """Set ``spec.replicas``; the scale as the server returned it."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        response = await self.apps.patch_namespaced_deployment_scale(
            self.ref.name, self.ref.namespace, {"spec": {"replicas": replicas}},
            _preload_content=False, _request_timeout=(10.0, 30.0),
        )  # fmt: skip
        return Scale.from_document(await json_body(response))


class KubernetesActuator:
    """The autoscaler's actuator on Kubernetes: a service's pod count is its Deployment's ``spec.replicas``.

    ``deployments`` maps each autoscaled service (its key in the autoscaler:
    a katyusha service name, None for the default one) to the Deployment
    that runs its pods. :meth:`current` answers from the last read or write
    (call :meth:`refresh` before deciding); :meth:`scale_to` patches when the
    count differs, and only while ``gate()`` is true (the control plane
    passes its Lease: a copy that stopped leading never scales). Calls raise
    ApiException.
    """

    def __init__(
        self,
        api: kclient.ApiClient,
        deployments: Mapping[str | None, DeploymentRef],
        *,
        gate: Callable[[], bool] | None = None,
    ):
        self.scalers = {key: DeploymentScaler(api, ref) for key, ref in deployments.items()}
        self.known: dict[str | None, Scale] = {}
        self.gate = gate
        self.refused = 0

    async def refresh(self) -> None:
        """Read every Deployment's scale."""
        for key, scaler in self.scalers.items():
            self.known[key] = await scaler.read()

    def current(self, service: str | None) -> int:
        """Replicas last asked for (``spec.replicas``) of ``service``'s Deployment; 0 before the first read."""
        scale = self.known.get(service)
        return scale.replicas if scale is not None else 0

    async def scale_to(self, service: str | None, count: int) -> None:
        """Ask for ``count`` replicas of ``service``'s Deployment (nothing while the gate is shut).

        Raises KeyError for a service with no Deployment.
        """
        scaler = self.scalers[service]
        if service in self.known and self.known[service].replicas == count:
            return
        if self.gate is not None and not self.gate():
            self.refused += 1
            log.warning("not scaling %s to %d: no longer the leader", scaler.ref.key, count)
            return
        self.known[service] = await scaler.patch(count)
