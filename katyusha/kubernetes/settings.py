"""Per-service KPA settings from the cluster: the Service's and the Deployment's annotations.

The control plane reads both objects and lets katyusha.core.kube_annotations
decide: ``autoscaling.knative.dev/*`` from the Service, overridden by the
Deployment's, plus ``katyusha.dev/container-concurrency``. Read them again to
pick up an edited annotation (the control plane does at each start of
leadership).
"""

from __future__ import annotations

from kubernetes_asyncio import client as kclient
from kubernetes_asyncio.client.exceptions import ApiException

from katyusha.core.autoscaler_config import KPAConfig
from katyusha.core.kube_annotations import kpa_config
from katyusha.kubernetes.connect import json_body
from katyusha.kubernetes.scale import DeploymentRef


async def _read(call, name: str, namespace: str) -> dict | None:
    try:
        response = await call(name, namespace, _preload_content=False, _request_timeout=(10.0, 30.0))
        return await json_body(response)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise


async def read_kpa_config(
    api: kclient.ApiClient, base: KPAConfig, deployment: DeploymentRef, service: str | None = None
) -> KPAConfig:
    """``base`` with the annotations of ``deployment`` and of the Service ``service`` (a name in its namespace).

    A missing Service counts as one with no annotations; a missing Deployment
    too (the autoscaler can run before it exists). Raises ConfigError naming
    the object and annotation for a bad one, ApiException when the API fails.
    """
    apps = kclient.AppsV1Api(api)
    core = kclient.CoreV1Api(api)
    service_doc = await _read(core.read_namespaced_service, service, deployment.namespace) if service else None
    deployment_doc = await _read(apps.read_namespaced_deployment, deployment.name, deployment.namespace)
    return kpa_config(base, service_doc, deployment_doc)
