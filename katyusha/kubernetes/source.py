"""``katyusha serve --discovery kubernetes``: the pod sets of katyusha's services from EndpointSlices.

:class:`KubernetesSource` is a discovery source (katyusha.proxy.discovery's
:class:`~katyusha.proxy.discovery.Source`): once the process's event loop
runs it connects to the cluster (an explicit ``kubeconfig``, else the pod's
service account, else ``$KUBECONFIG`` or ``~/.kube/config``), follows every
Service a katyusha service names (katyusha.kubernetes.discovery: list, watch
with bookmarks, re-list on 410, back off on failures) and turns each change
of a Service's pod set into one ``replace`` change of the service's set
(katyusha.core.endpoints.pod_change): ready endpoints in, every other pod
(terminating, deleted, no longer ready) drained. Node names come with the
pods into the load table.

With ``kubernetes-subset`` it also follows katyusha's own admin Service and
keeps only this replica's share of each Service whose pods have a container
concurrency (katyusha.core.subset).

With ``katyusha-threads`` > 1, every worker process runs its own source
(its own watches): each worker's table follows the API server by itself,
with no hand-over between workers that could fail or lag, and all workers of
a replica compute the same subset (it depends only on names). The cost is
one watch per Service per worker, which the API server serves from its watch
cache. Until the first list arrives a service has no pod, so its requests
wait in the L1 queue (``request-timeout``) as at a scale from zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from typing import Any

from katyusha.core.endpoints import ServiceEndpoints, pod_change
from katyusha.kubernetes.connect import ConnectError, api_client, configuration
from katyusha.kubernetes.discovery import KubernetesDiscovery
from katyusha.kubernetes.refs import ServiceRef

log = logging.getLogger("katyusha.kubernetes")


class KubernetesSource:
    """Pod sets from EndpointSlices, one followed Service per katyusha service; see the module doc."""

    name = "kubernetes"

    def __init__(
        self,
        targets: Mapping[str, ServiceRef],
        *,
        kubeconfig: str | None = None,
        replicas: tuple[ServiceRef, str] | None = None,
        **watch_options: Any,
    ):
        """``targets``: katyusha service name -> the Service it follows (with its namespace).

        ``replicas``: (katyusha's admin Service, this replica's pod name) to
        subset the pods. ``watch_options`` go to each EndpointSliceWatcher.
        """
        self.targets = dict(targets)
        self.services = {ref.key: name for name, ref in self.targets.items()}
        self.kubeconfig = kubeconfig
        self.replicas = replicas
        self.watch_options = watch_options
        self.membership = None
        self.api = None
        self.discovery: KubernetesDiscovery | None = None
        self.task: asyncio.Task | None = None
        self.changes = 0

    @classmethod
    def from_config(cls, config) -> KubernetesSource:
        """The source a ProxyConfig with ``discovery: kubernetes`` describes."""
        return cls(config.kubernetes_targets, kubeconfig=config.kubeconfig, replicas=config.kubernetes_replicas)

    def start(self, membership) -> None:
        self.membership = membership

    async def open(self) -> None:
        """Connect and start following. Raises ConnectError when no cluster configuration works."""
        self.api = await api_client(self.kubeconfig)
        peers, me = self.replicas if self.replicas is not None else (None, None)
        self.discovery = KubernetesDiscovery(
            self.api, list(self.targets.values()), self._changed, peers=peers, me=me, **self.watch_options
        )
        self.task = asyncio.get_running_loop().create_task(self.discovery.run(), name="kubernetes discovery")

    def _changed(self, key: str, endpoints: ServiceEndpoints) -> None:
        if self.membership is None:
            raise RuntimeError("KubernetesSource used before start()")
        name = self.services[key]
        try:
            result = self.membership.apply(name, pod_change(endpoints, self.name))
        except Exception:  # a bug here must not end the watch: the next change tries again
            log.exception("%s <- %s: the change could not be applied", name, key)
            return
        self.changes += 1
        log.info("%s <- %s: %d ready, %d draining, %d removed", name, key, len(endpoints.ready),
                 len(endpoints.draining), len(result.removed))  # fmt: skip

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        if self.api is not None:
            await self.api.close()


def check_connection(kubeconfig: str | None) -> str | None:
    """Why the cluster configuration cannot be loaded (None: it can). Call with no event loop running."""
    try:
        asyncio.run(configuration(kubeconfig))
    except ConnectError as exc:
        return str(exc)
    return None
