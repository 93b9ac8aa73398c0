"""Follow a Service's EndpointSlices and report its pod set whenever it changes.

:class:`EndpointSliceWatcher` keeps one Service's slices in memory the way
client-go's reflector does: it lists them (``labelSelector
kubernetes.io/service-name=NAME``), then watches from the list's
``resourceVersion`` with ``allowWatchBookmarks``; every event, bookmark
included, moves the version on, and when the server ends a watch (its
``timeoutSeconds``) the next one starts from there. A ``410 Gone`` (the
version is too old) makes it list again; any other failure (connection
refused or dropped, a 5xx, a timeout) waits a jittered exponential backoff
and watches again from the last version (listing again if that fails with
410). After each change it computes the pod set with
:func:`katyusha.core.endpoints.service_endpoints` and, when the set differs
from the last one reported, calls ``on_change`` with it.

:class:`KubernetesDiscovery` runs one watcher per Service, and optionally
one on katyusha's own Service to subset the pods between the replicas
(katyusha.core.subset); its callback gets ``(service key, ServiceEndpoints)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

import aiohttp
from kubernetes_asyncio import client as kclient
from kubernetes_asyncio import watch as kwatch
from kubernetes_asyncio.client.exceptions import ApiException

from katyusha.core.backoff import Backoff
from katyusha.core.endpoints import SERVICE_NAME_LABEL, ServiceEndpoints, service_endpoints
from katyusha.core.errors import ConfigError
from katyusha.core.kube_annotations import container_concurrency
from katyusha.core.subset import subset_endpoints
from katyusha.kubernetes.connect import json_body
from katyusha.kubernetes.refs import ServiceRef

log = logging.getLogger("katyusha.kubernetes")

# What a failed call to the API server can raise: its answer, or no answer.
API_FAILURES = (ApiException, aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError)

OnChange = Callable[[ServiceEndpoints], Awaitable[None] | None]


class EndpointSliceWatcher:
    """Lists and watches one Service's EndpointSlices; see the module doc. Run it with :meth:`run`."""

    def __init__(
        self,
        api: kclient.ApiClient,
        service: ServiceRef,
        on_change: OnChange,
        *,
        watch_timeout: int = 300,
        backoff: Backoff | None = None,
        read_timeout: float | None = None,
    ):
        """``watch_timeout``: seconds the server keeps one watch open; ``read_timeout``: longest silence
        on a watch before the connection counts as dropped (default ``watch_timeout`` + 30)."""
        self.api = api
        self.service = service
        self.on_change = on_change
        self.watch_timeout = watch_timeout
        self.read_timeout = read_timeout if read_timeout is not None else watch_timeout + 30.0
        self.backoff = backoff if backoff is not None else Backoff(0.5, 30.0, random.Random())
        self.discovery = kclient.DiscoveryV1Api(api)
        self.core = kclient.CoreV1Api(api)
        self.slices: dict[str, dict] = {}
        self.resource_version: str | None = None
        self.concurrency: int | None = service.concurrency
        self.snapshot: ServiceEndpoints | None = None
        self.synced = asyncio.Event()  # set once the first list was reported
        self.counts = {"lists": 0, "watches": 0, "events": 0, "bookmarks": 0, "gone": 0, "errors": 0}

    @property
    def selector(self) -> str:
        return f"{SERVICE_NAME_LABEL}={self.service.name}"

    async def run(self) -> None:
        """List, watch, re-list on 410, back off on failures; returns only when cancelled."""
        need_list = True
        while True:
            try:
                if need_list:
                    await self.relist()
                    need_list = False
                await self.watch_once()
                self.backoff.reset()
            except ApiException as exc:
                if exc.status == 410:
                    self.counts["gone"] += 1
                    log.info("%s: resourceVersion %s is gone; listing again", self.service.key, self.resource_version)
                    need_list = True
                    continue
                await self._failed(exc)
            except API_FAILURES as exc:
                await self._failed(exc)

    async def _failed(self, exc: BaseException) -> None:
        self.counts["errors"] += 1
        delay = self.backoff.next()
        log.warning("%s: %s: %s; again in %.2fs", self.service.key, type(exc).__name__, exc, delay)
        await asyncio.sleep(delay)

    async def relist(self) -> None:
        """Replace the slices held with a fresh list (and the Service's concurrency annotation); report."""
        response = await self.discovery.list_namespaced_endpoint_slice(
            self.service.namespace, label_selector=self.selector, _preload_content=False,
            _request_timeout=(10.0, 30.0),
        )  # fmt: skip
        document = await json_body(response)
        self.counts["lists"] += 1
        if self.service.concurrency is None:
            self.concurrency = await self._service_concurrency()
        self.slices = {
            item["metadata"]["name"]: item
            for item in document.get("items") or []
            if isinstance(item, dict) and isinstance(item.get("metadata"), dict) and "name" in item["metadata"]
        }
        self.resource_version = (document.get("metadata") or {}).get("resourceVersion")
        await self._report()
        self.synced.set()

    async def _service_concurrency(self) -> int | None:
        try:
            response = await self.core.read_namespaced_service(
                self.service.name, self.service.namespace, _preload_content=False, _request_timeout=(10.0, 30.0)
            )
            document = await json_body(response)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("%s: cannot read the Service (%s); container concurrency unknown", self.service.key, exc.status)
            return None
        try:
            return container_concurrency(document)
        except ConfigError as exc:
            log.warning("%s: %s; container concurrency unknown", self.service.key, exc)
            return None

    async def watch_once(self) -> None:
        """One watch from the held resourceVersion until the server ends it. Raises ApiException (410 too)."""
        self.counts["watches"] += 1
        watcher = kwatch.Watch(return_type="object")
        kwargs: dict[str, Any] = {
            "label_selector": self.selector,
            "allow_watch_bookmarks": True,
            "timeout_seconds": self.watch_timeout,
            "_request_timeout": (10.0, self.read_timeout),
        }
        if self.resource_version:
            kwargs["resource_version"] = self.resource_version
        try:
            async for event in watcher.stream(
                self.discovery.list_namespaced_endpoint_slice, self.service.namespace, **kwargs
            ):
                await self._event(event)
        finally:
            await watcher.close()

    async def _event(self, event: dict) -> None:
        kind = event.get("type")
        document = event.get("raw_object")
        meta = document.get("metadata") if isinstance(document, dict) else None
        if not isinstance(meta, dict):
            return
        if meta.get("resourceVersion"):
            self.resource_version = meta["resourceVersion"]
        if kind == "BOOKMARK":
            self.counts["bookmarks"] += 1
            return
        self.counts["events"] += 1
        self.backoff.reset()  # the connection works: the next failure starts from the shortest delay
        name = meta.get("name")
        if not isinstance(name, str):
            return
        if kind == "DELETED":
            self.slices.pop(name, None)
        elif kind in ("ADDED", "MODIFIED"):
            self.slices[name] = document
        await self._report()

    async def _report(self) -> None:
        service = self.service
        current = service_endpoints(
            service.key, self.slices.values(), port=service.port, admin_port=service.admin_port,
            concurrency=self.concurrency,
        )  # fmt: skip
        if self.snapshot is not None and current == self.snapshot:
            return
        if current.problems and (self.snapshot is None or current.problems != self.snapshot.problems):
            log.warning("%s: %s", service.key, "; ".join(current.problems))
        self.snapshot = current
        await _call(self.on_change, current)


async def _call(callback: Callable[..., Any], *args: Any) -> None:
    result = callback(*args)
    if inspect.isawaitable(result):
        await result


class KubernetesDiscovery:
    """Several Services' pod sets, each optionally cut down to this replica's subset.

    ``on_change(key, endpoints)`` gets each Service's pod set (``key`` is
    ``namespace/name``) when it changes. With ``peers`` (katyusha's own
    Service) and ``me`` (this replica's pod name), a Service whose pods have a
    container concurrency above 0 is subset between the peers' ready pods
    (katyusha.core.subset); its draining pods are always reported.
    """

    def __init__(
        self,
        api: kclient.ApiClient,
        services: Sequence[ServiceRef],
        on_change: Callable[[str, ServiceEndpoints], Awaitable[None] | None],
        *,
        peers: ServiceRef | None = None,
        me: str | None = None,
        **watch_options: Any,
    ):
        if (peers is None) != (me is None):
            raise ConfigError("subset", "needs both the replicas' Service and this replica's name")
        self.on_change = on_change
        self.me = me
        self.full: dict[str, ServiceEndpoints] = {}
        self.reported: dict[str, ServiceEndpoints] = {}
        self.peer_names: tuple[str, ...] | None = None
        self.watchers = [
            EndpointSliceWatcher(api, ref, self._changed(ref.key), **watch_options) for ref in services
        ]
        if peers is not None:
            self.watchers.append(EndpointSliceWatcher(api, replace(peers, concurrency=0), self._peers_changed, **watch_options))

    def _changed(self, key: str) -> Callable[[ServiceEndpoints], Awaitable[None]]:
        async def changed(endpoints: ServiceEndpoints) -> None:
            self.full[key] = endpoints
            await self._report(key)

        return changed

    async def _peers_changed(self, endpoints: ServiceEndpoints) -> None:
        self.peer_names = endpoints.ready_names()
        for key in list(self.full):
            await self._report(key)

    async def _report(self, key: str) -> None:
        endpoints = self.full[key]
        if self.me is not None and self.peer_names is not None:
            endpoints = subset_endpoints(endpoints, self.me, self.peer_names)
        if self.reported.get(key) == endpoints:
            return
        self.reported[key] = endpoints
        await _call(self.on_change, key, endpoints)

    async def run(self) -> None:
        """Run every watcher until cancelled."""
        tasks = [asyncio.create_task(w.run(), name=f"endpoints {w.service.key}") for w in self.watchers]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)
