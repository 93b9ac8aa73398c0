"""The one writer of katyusha's pod sets: add, drain-then-remove, and moving a pod's state with drain first.

Everything that changes which pods katyusha's replicas balance over goes
through one :class:`MembershipWriter`: the control plane's reconciler (a pod
that became warm joins; one that stopped serving or whose processes died
leaves), the actuator (a woken pod joins, a retired pod is drained before it
goes down) and an operator's ``katyusha fleet pod NAME state STATE``.

Per pod, one change at a time: :meth:`MembershipWriter.hold` is a per-pod
lock, and a pod held by a move is left alone by :meth:`sync`. A move follows
the core's steps (katyusha.core.actuation): out of service it drains the pod
out of every replica before the pod leaves warm; into service it walks the
pod to warm before it joins. :meth:`sync` is level-triggered: it reads every
replica's pod set and writes only the difference from what is wanted, so a
replica that restarted empty is filled again on the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from katyusha.control.adminclient import AdminClient, AdminError, state_of
from katyusha.core import actuation
from katyusha.core.podstate import PodState

log = logging.getLogger("katyusha.control")


@dataclass(frozen=True)
class PodAddress:
    """One pod of the fleet and where its processes answer (None: not known, or down).

    ``service`` is its fleet service (placement); ``balancer_service`` the
    katyusha service whose set it joins (None: katyusha's default service).
    """

    name: str
    node: str
    service: str
    sim_admin: str | None
    nonna_url: str | None
    nonna_admin: str | None
    concurrency: int | None = None
    balancer_service: str | None = None

    def entry(self) -> dict:
        """The pod as katyusha's ``PUT /pods`` takes it, with nonna's container concurrency.

        The concurrency goes with it so katyusha caps what it sends the pod from the first request on.
        """
        entry = {"name": self.name, "url": self.nonna_url, "node": self.node}
        if self.nonna_admin is not None:
            entry["admin"] = self.nonna_admin
        if self.concurrency is not None:
            entry["concurrency"] = self.concurrency
        return entry


@dataclass(frozen=True)
class BalancerRef:
    """One katyusha replica: a name to report it by and its admin URL."""

    name: str
    admin: str


class MoveFailed(Exception):
    """A move did not reach its target; the message says why (the pod stays where it got to)."""


Say = Callable[[str], None]


class MembershipWriter:
    """Writes every katyusha replica's pod set; see the module doc."""

    def __init__(self, client: AdminClient, balancers: Callable[[], Sequence[BalancerRef]], *,
                 drain_s: float = 30.0, poll_s: float = 0.05, clock: Callable[[], float] = time.monotonic):
        """``balancers`` lists the replicas to write (read at every call: a replica that is down is left out).

        ``drain_s`` bounds how long a replica may take to finish its requests to a pod being removed.
        """
        self.client = client
        self.balancers = balancers
        self.drain_s = drain_s
        self.poll_s = poll_s
        self.clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._changes: dict[str, int] = {}
        # replica admin URL -> {pod name: nonna URL} as last read or written.
        self.placed: dict[str, dict[str, str | None]] = {}
        self._removing: set[tuple[str, str]] = set()
        self._tasks: set[asyncio.Task] = set()

    # -- one change at a time per pod ---------------------------------------------------

    @contextlib.asynccontextmanager
    async def hold(self, name: str) -> AsyncIterator[None]:
        """Hold pod ``name``: no other change to its membership runs meanwhile."""
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            try:
                yield
            finally:
                self._changes[name] = self._changes.get(name, 0) + 1

    def changes(self) -> dict[str, int]:
        """A mark per pod that moves on whenever a hold ends: pass it to :meth:`sync` taken before its reads."""
        return dict(self._changes)

    # -- writing every replica ------------------------------------------------------------

    async def join(self, pod: PodAddress, say: Say | None = None) -> None:
        """Add ``pod`` to every replica's set; a replica that fails is logged (the next sync retries it)."""
        refs = list(self.balancers())
        results = await asyncio.gather(
            *(self.client.put_pods(ref.admin, [pod.entry()], service=pod.balancer_service) for ref in refs),
            return_exceptions=True,
        )
        for ref, result in zip(refs, results, strict=True):
            if isinstance(result, BaseException):
                _tell(say, f"{pod.name}: could not add it to {ref.name}: {result} (the next sync retries)")
            else:
                self.placed.setdefault(ref.admin, {})[pod.name] = pod.nonna_url
                _tell(say, f"{pod.name}: added to {ref.name}")

    async def drain(self, pod: PodAddress, say: Say | None = None) -> None:
        """Take ``pod`` out of every replica's set; return once each answered that its requests finished.

        Raises MoveFailed naming the replicas that could not be drained: the
        pod must not stop serving while one of them may still send to it.
        """
        refs = list(self.balancers())
        results = await asyncio.gather(*(self._remove(ref, pod) for ref in refs), return_exceptions=True)
        failed = []
        for ref, result in zip(refs, results, strict=True):
            if isinstance(result, BaseException):
                failed.append(f"{ref.name}: {result}")
            else:
                _tell(say, f"{pod.name}: {'drained and removed from' if result else 'was not in'} {ref.name}")
        if failed:
            raise MoveFailed(f"{pod.name}: could not drain it from " + "; ".join(failed))

    async def _remove(self, ref: BalancerRef, pod: PodAddress) -> bool:
        answer = await self.client.delete_pod(ref.admin, pod.name, service=pod.balancer_service, drain_s=self.drain_s)
        self.placed.get(ref.admin, {}).pop(pod.name, None)
        return answer is not None

    # -- moving a pod ---------------------------------------------------------------------

    async def move(self, pod: PodAddress, target: PodState, *, timeout_s: float, say: Say | None = None,
                   then: Callable[[PodState | None], Awaitable[None] | None] | None = None) -> PodState:
        """Take ``pod`` to ``target`` by the core's steps, holding it; return the state it ended in.

        ``then(state)`` runs before the hold ends (the final state, or None
        after a failure), so whoever decides membership learns the outcome
        before the next sync looks. Raises MoveFailed.
        """
        async with self.hold(pod.name):
            final: PodState | None = None
            try:
                final = await self._run(pod, target, timeout_s, say)
                return final
            finally:
                if then is not None:
                    result = then(final)
                    if result is not None:
                        await result

    async def _run(self, pod: PodAddress, target: PodState, timeout_s: float, say: Say | None) -> PodState:
        move = actuation.PodMove(pod.name, target, self.clock(), timeout_s=timeout_s, poll_s=self.poll_s)
        told_start = False
        while True:
            command = move.next(self.clock())
            if isinstance(command, actuation.Finished):
                _tell(say, f"{pod.name}: now {command.state.value}")
                return command.state
            if isinstance(command, actuation.Failed):
                raise MoveFailed(f"{pod.name}: {command.reason}")
            if isinstance(command, actuation.Look):
                delay = command.at - self.clock()
                if delay > 0:
                    await asyncio.sleep(delay)
                state, heading = await self._look(pod)
                if not told_start and state is not None:
                    _tell(say, f"{pod.name}: {state.value} -> {target.value}")
                    told_start = True
                move.observed(self.clock(), state, heading is not None)
            elif isinstance(command, actuation.Walk):
                if pod.sim_admin is None:
                    move.fail("its sim-backend is down")
                    continue
                try:
                    answer, detail = await self.client.walk(pod.sim_admin, command.target)
                except AdminError as exc:
                    answer, detail = actuation.WalkAnswer.BUSY, str(exc)  # down or restarting: try again
                move.walked(self.clock(), answer, detail)
            elif isinstance(command, actuation.Drain):
                await self.drain(pod, say)  # raises MoveFailed: the pod stays where it is
                move.done(self.clock())
            elif isinstance(command, actuation.Join):
                await self.join(pod, say)
                move.done(self.clock())

    async def _look(self, pod: PodAddress) -> tuple[PodState | None, PodState | None]:
        if pod.sim_admin is None:
            return None, None
        try:
            return state_of(await self.client.pod_state(pod.sim_admin))
        except AdminError:
            return None, None

    # -- keeping the sets in step ---------------------------------------------------------

    async def sync(self, pods: Sequence[PodAddress], wanted: set[str], since: Mapping[str, int]) -> None:
        """Make every replica's set hold exactly the pods named in ``wanted`` (of ``pods``, the fleet's).

        Pods not in ``pods`` are never touched; a wanted pod with no nonna
        address counts as unwanted. A pod held now, or whose hold ended after
        ``since`` was taken (the caller's reads may be stale), is left for the
        next round. Removals drain in the background and are not awaited.
        """
        refs = list(self.balancers())
        services = {pod.balancer_service for pod in pods} | {None}
        tables = await asyncio.gather(*(self._read(ref, services) for ref in refs), return_exceptions=True)
        for ref, table in zip(refs, tables, strict=True):
            if isinstance(table, BaseException):
                log.debug("sync: cannot read %s: %s", ref.name, table)
                continue
            await self._sync_one(ref, table, pods, wanted, since)

    async def _read(self, ref: BalancerRef, services: set[str | None]) -> dict[str, str | None]:
        placed: dict[str, str | None] = {}
        for service in services:
            table = await self.client.pod_table(ref.admin, service=service)
            placed.update({row.get("name"): row.get("url") for row in table["pods"]})
        self.placed[ref.admin] = dict(placed)
        return placed

    async def _sync_one(self, ref: BalancerRef, placed: dict[str, str | None], pods: Sequence[PodAddress],
                        wanted: set[str], since: Mapping[str, int]) -> None:
        adding: list[PodAddress] = []
        locks: list[asyncio.Lock] = []
        for pod in pods:
            lock = self._locks.setdefault(pod.name, asyncio.Lock())
            if lock.locked() or self._changes.get(pod.name, 0) != since.get(pod.name, 0):
                continue
            if pod.name in wanted and pod.nonna_url is not None:
                if placed.get(pod.name, "") != pod.nonna_url:
                    await lock.acquire()  # free: returns at once, so nothing slips in between
                    locks.append(lock)
                    adding.append(pod)
            elif pod.name in placed:
                self._spawn_removal(ref, pod)
        try:
            by_service: dict[str | None, list[PodAddress]] = {}
            for pod in adding:
                by_service.setdefault(pod.balancer_service, []).append(pod)
            for service, group in by_service.items():
                try:
                    await self.client.put_pods(ref.admin, [pod.entry() for pod in group], service=service)
                except AdminError as exc:
                    log.warning("could not add %s to %s: %s", ", ".join(p.name for p in group), ref.name, exc)
                    continue
                for pod in group:
                    self.placed.setdefault(ref.admin, {})[pod.name] = pod.nonna_url
        finally:
            for lock in locks:
                lock.release()

    def _spawn_removal(self, ref: BalancerRef, pod: PodAddress) -> None:
        if (ref.admin, pod.name) in self._removing:
            return
        self._removing.add((ref.admin, pod.name))

        async def remove() -> None:
            try:
                async with self.hold(pod.name):
                    await self._remove(ref, pod)
            except AdminError as exc:
                log.warning("could not remove %s from %s: %s", pod.name, ref.name, exc)
            finally:
                self._removing.discard((ref.admin, pod.name))

        task = asyncio.get_running_loop().create_task(remove())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def count_in_sets(self, name: str) -> int:
        """In how many replicas' sets pod ``name`` was at the last read or write."""
        return sum(1 for ref in self.balancers() if name in self.placed.get(ref.admin, {}))

    async def close(self) -> None:
        """Stop removals in progress."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _tell(say: Say | None, line: str) -> None:
    if say is not None:
        say(line)
    log.info("%s", line)
