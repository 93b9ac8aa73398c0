"""One acting control plane: leader election over a ``coordination.k8s.io`` Lease.

The decisions (when to create, renew, take over, give up) are
katyusha.core.lease's; this module reads and writes the Lease. A write of an
existing Lease is a PATCH carrying the ``resourceVersion`` that was read, so
the API server refuses it with 409 Conflict when another candidate wrote in
between (optimistic concurrency); the loser sees the winner at its next read.

Use::

    elector = LeaderElector(api, "katyusha", "katyusha-control", identity=pod_name)
    task = asyncio.create_task(elector.run())
    ...
    if elector.is_leader():   # check before every action
        await actuator.scale_to(service, n)

Cancelling :meth:`LeaderElector.run` gives the lease up when held, so a
successor takes over at its next try instead of after ``lease_duration``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
import time
from collections.abc import Callable

from kubernetes_asyncio import client as kclient
from kubernetes_asyncio.client.exceptions import ApiException

from katyusha.core.lease import Create, LeaseElector, LeaseRecord, Update
from katyusha.kubernetes.connect import json_body
from katyusha.kubernetes.discovery import API_FAILURES

log = logging.getLogger("katyusha.kubernetes")


def micro_time(epoch: float) -> str:
    """An RFC 3339 MicroTime, as Lease timestamps are written."""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Campaigns for one Lease; :meth:`is_leader` says whether to act. See the module doc."""

    def __init__(
        self,
        api: kclient.ApiClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ):
        """Raises ConfigError (from the core) for an empty identity or timings out of order."""
        self.core = LeaseElector(
            identity, lease_duration=lease_duration, renew_deadline=renew_deadline, retry_period=retry_period
        )
        self.namespace = namespace
        self.name = name
        self.coordination = kclient.CoordinationV1Api(api)
        self.clock = clock
        self.wall = wall
        self.rng = rng if rng is not None else random.Random()
        self.leading = asyncio.Event()  # set while this candidate leads (as of its last round)
        self.counts = {"rounds": 0, "acquired": 0, "conflicts": 0, "errors": 0}

    @property
    def identity(self) -> str:
        return self.core.identity

    def is_leader(self) -> bool:
        """Whether to act now: the lease is ours and was renewed within the renew deadline."""
        return self.core.is_leader(self.clock())

    async def run(self) -> None:
        """Campaign and renew until cancelled; then give the lease up if held."""
        try:
            while True:
                await self.round()
                period = self.core.retry_period
                await asyncio.sleep(period if self.is_leader() else period * self.rng.uniform(1.0, 1.2))
        finally:
            self.leading.clear()
            try:
                await asyncio.shield(self.release())
            except API_FAILURES as exc:
                log.warning("lease %s/%s: not released: %s: %s", self.namespace, self.name, type(exc).__name__, exc)
            except asyncio.CancelledError:
                pass

    async def round(self) -> bool:
        """One read, and the write the core asks for; whether this candidate leads afterwards."""
        self.counts["rounds"] += 1
        was = self.is_leader()
        try:
            async with asyncio.timeout(self.core.renew_deadline - self.core.retry_period):
                await self._round()
        except ApiException as exc:
            if exc.status == 409:
                self.counts["conflicts"] += 1
            else:
                self.counts["errors"] += 1
                log.warning("lease %s/%s: %s %s", self.namespace, self.name, exc.status, exc.reason)
        except API_FAILURES as exc:
            self.counts["errors"] += 1
            log.warning("lease %s/%s: %s: %s", self.namespace, self.name, type(exc).__name__, exc)
        now = self.is_leader()
        if now and not was:
            self.counts["acquired"] += 1
            log.info("lease %s/%s: %s is the leader", self.namespace, self.name, self.identity)
        elif was and not now:
            log.warning("lease %s/%s: %s stopped leading", self.namespace, self.name, self.identity)
        (self.leading.set if now else self.leading.clear)()
        return now

    async def _round(self) -> None:
        self.core.observe(self.clock(), await self._read())
        action = self.core.step(self.clock(), micro_time(self.wall()))
        if action is not None:
            await self._write(action)

    async def release(self) -> None:
        """Give the lease up (holder cleared) if this candidate holds it."""
        action = self.core.release(micro_time(self.wall()))
        self.leading.clear()
        if action is not None:
            await self._write(action)

    async def _read(self) -> LeaseRecord | None:
        try:
            response = await self.coordination.read_namespaced_lease(
                self.name, self.namespace, _preload_content=False, _request_timeout=self._timeout()
            )
            return LeaseRecord.from_document(await json_body(response))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def _write(self, action: Create | Update) -> None:
        record = action.record
        if isinstance(action, Create):
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": record.spec(),
            }
            response = await self.coordination.create_namespaced_lease(
                self.namespace, body, _preload_content=False, _request_timeout=self._timeout()
            )
        else:
            body = {"spec": record.spec()}
            if record.resource_version:
                body["metadata"] = {"resourceVersion": record.resource_version}
            response = await self.coordination.patch_namespaced_lease(
                self.name, self.namespace, body, _preload_content=False, _request_timeout=self._timeout()
            )
        self.core.written(self.clock(), LeaseRecord.from_document(await json_body(response)))

    def _timeout(self) -> tuple[float, float]:
        period = self.core.retry_period
        return (period, period * 2)
