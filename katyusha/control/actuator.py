"""The fleet actuator: turns the autoscaler's pod count into pod state moves and katyusha pod-set changes.

Each pod of the fleet is a slot. A slot is free (null, cold or warmdisk),
waking (walking to warm through sim-backend's states, with their real
delays), serving (warm or active, in every katyusha replica's set) or
retiring (drained, then walked down). ``scale_to(n)`` starts wakes or
retirements in the background and returns at once, so the control loop never
waits for a cold start.

Order matters both ways. A pod joins katyusha's set only once it is warm, so
no request meets a pod that cannot serve. A pod leaves the set *before* it
leaves warm: ``DELETE /pods/NAME`` on every replica answers once katyusha's
requests to it have finished, and only then is it walked down (sim-backend
refuses to leave warm while requests execute anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from katyusha.control import adminhttp
from katyusha.control.choose import FleetOrder, PodChooser
from katyusha.control.metrics import ColdStarts
from katyusha.core.errors import ConfigError

log = logging.getLogger("katyusha.autoscaler")

SERVING_STATES = frozenset({"warm", "active"})
RETIRE_STATES = ("warmdisk", "cold", "null")

WAKING, SERVING, RETIRING = "waking", "serving", "retiring"


@dataclass(frozen=True)
class Slot:
    """One pod the actuator may move: its sim-backend admin URL and its nonna (what katyusha forwards to)."""

    name: str
    node: str
    sim_admin: str
    nonna_url: str
    nonna_admin: str
    concurrency: int | None = None  # nonna's container concurrency: katyusha's per-pod cap

    def entry(self) -> dict:
        """The pod as katyusha's ``PUT /pods`` expects it."""
        entry = {"name": self.name, "url": self.nonna_url, "node": self.node, "admin": self.nonna_admin}
        if self.concurrency is not None:
            entry["concurrency"] = self.concurrency
        return entry


def check_retire_to(value: str, key: str = "retire-to") -> str:
    """``value`` when it is a state pods may retire to (warmdisk, cold, null). Raises ConfigError naming ``key``."""
    if value not in RETIRE_STATES:
        raise ConfigError(key, f"must be one of {', '.join(RETIRE_STATES)}, got {value!r}")
    return value


class FleetActuator:
    """Moves the fleet's pods so that ``current()`` pods are serving or on their way (see the module doc)."""

    def __init__(
        self,
        slots: Callable[[], Sequence[Slot]],
        replicas: Callable[[], Sequence[str]],
        *,
        retire_to: str = "warmdisk",
        cold: ColdStarts | None = None,
        poll_s: float = 0.05,
        wake_timeout_s: float = 300.0,
        drain_timeout_s: float = 60.0,
        on_change: Callable[[str], Awaitable[None] | None] | None = None,
        guard: Callable[[str], contextlib.AbstractAsyncContextManager] | None = None,
        clock: Callable[[], float] = time.monotonic,
        chooser: PodChooser | None = None,
    ):
        """``slots`` lists the fleet's pods in fleet order; ``replicas`` katyusha's admin URLs (both read each time).

        ``on_change(name)`` is called after a pod joined or left katyusha's
        sets. ``guard(name)`` is held while a pod is drained: whoever else
        adds pods to katyusha (the fleet runner) holds the same guard, so no
        add can land after the drain. ``chooser`` picks which slots move
        (default: fleet order, see katyusha.control.choose).
        """
        self.slots = slots
        self.replicas = replicas
        self.retire_to = check_retire_to(retire_to)
        self.cold = cold if cold is not None else ColdStarts()
        self.poll_s = poll_s
        self.wake_timeout_s = wake_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.on_change = on_change
        self.guard = guard
        self.clock = clock
        self.chooser: PodChooser = chooser if chooser is not None else FleetOrder()
        # A chooser may await (it reads slot states): one choice at a time, so two never pick the same slot.
        self._choosing = asyncio.Lock()
        self.phase: dict[str, str] = {}
        self._tasks: set[asyncio.Task] = set()

    # -- the Actuator interface ----------------------------------------------------------

    def current(self) -> int:
        """Pods asked for: serving or waking (retiring ones are on their way out)."""
        return sum(1 for phase in self.phase.values() if phase in (WAKING, SERVING))

    async def scale_to(self, count: int) -> None:
        """Start waking or retiring pods so ``count`` are asked for; returns without waiting for them.

        When fewer pods are free than needed, as many as are free are woken;
        the next decision asks again. Only serving pods are retired: a pod in
        its cold start finishes it first.
        """
        async with self._choosing:
            slots = self.slots()
            difference = count - self.current()
            if difference > 0:
                free = [slot for slot in slots if slot.name not in self.phase]
                busy = [slot for slot in slots if slot.name in self.phase]
                names = {slot.name for slot in free}
                for name in await self.chooser.wake(free, busy, difference):
                    if name in names and name not in self.phase:
                        self.phase[name] = WAKING
                        self._spawn(self._wake(name))
            elif difference < 0:
                serving = [slot for slot in slots if self.phase.get(slot.name) == SERVING]
                names = {slot.name for slot in serving}
                for name in await self.chooser.retire(serving, -difference):
                    if name in names and self.phase.get(name) == SERVING:
                        self.phase[name] = RETIRING
                        self._spawn(self._retire(name))

    # -- views ---------------------------------------------------------------------------

    def may_serve(self, name: str) -> bool:
        """Whether pod ``name`` belongs in katyusha's sets (the fleet runner must not re-add the others)."""
        return self.phase.get(name) == SERVING

    def counts(self) -> dict:
        """How many pods are in each phase, plus free ones and the slot total."""
        total = len(self.slots())
        out = {WAKING: 0, SERVING: 0, RETIRING: 0}
        for phase in self.phase.values():
            out[phase] += 1
        out["free"] = total - sum(out.values())
        out["slots"] = total
        return out

    async def adopt(self) -> None:
        """Take the pods already warm or active as serving (a fleet started with some pods up)."""
        states = await asyncio.gather(*(self._state(slot) for slot in self.slots()), return_exceptions=True)
        for slot, state in zip(self.slots(), states, strict=True):
            if isinstance(state, dict) and state.get("state") in SERVING_STATES:
                self.phase[slot.name] = SERVING

    async def close(self) -> None:
        """Stop every wake and retirement in progress (pods stay where they are)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- moving one pod ------------------------------------------------------------------

    def _spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _slot(self, name: str) -> Slot | None:
        return next((slot for slot in self.slots() if slot.name == name), None)

    async def _state(self, slot: Slot) -> dict:
        return await adminhttp.get_json(slot.sim_admin + "/state")

    async def _wake(self, name: str) -> None:
        started = self.clock()
        try:
            slot = await self._walk_to_warm(name, started + self.wake_timeout_s)
            await self._add_everywhere(slot)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.cold.failed += 1
            log.warning("autoscaler: could not wake %s: %s", name, exc)
            self.phase.pop(name, None)
            return
        self.cold.observe(self.clock() - started)
        self.phase[name] = SERVING
        log.info("autoscaler: %s serving after %.2fs", name, self.clock() - started)
        await self._changed(name)

    async def _walk_to_warm(self, name: str, deadline: float) -> Slot:
        asked = False
        while True:
            slot = self._slot(name)
            if slot is None:
                raise LookupError(f"pod {name} is no longer in the fleet")
            try:
                document = await self._state(slot)
            except adminhttp.AdminCallError:
                document = None  # down or restarting: the runner brings it back; keep trying
            if document is not None:
                state = document.get("state")
                moving = _moving(document)
                if state in SERVING_STATES and not moving:
                    return slot
                if not moving and not asked:
                    status, payload = await adminhttp.call(
                        "PUT", slot.sim_admin + "/state", {"state": "warm", "path": "auto"}
                    )
                    # 409: a move is already running (it ends by itself); look again shortly.
                    if status in (200, 202):
                        asked = True
                    elif status != 409:
                        raise adminhttp.AdminCallError(f"PUT {slot.sim_admin}/state: HTTP {status}: {payload}", status)
                elif not moving and asked and state not in SERVING_STATES:
                    asked = False  # the walk ended short of warm (a restart): ask again
            if self.clock() > deadline:
                raise TimeoutError(f"pod {name} not warm after {self.wake_timeout_s:g}s")
            await asyncio.sleep(self.poll_s)

    async def _add_everywhere(self, slot: Slot) -> None:
        results = await asyncio.gather(
            *(
                adminhttp.expect("PUT", admin + "/pods", {"pods": [slot.entry()], "replace": False})
                for admin in self.replicas()
            ),
            return_exceptions=True,
        )
        for admin, result in zip(self.replicas(), results, strict=False):
            if isinstance(result, BaseException):
                # The runner's own sync adds it later (the pod may serve); one replica down is not fatal.
                log.warning("autoscaler: could not add %s to %s: %s", slot.name, admin, result)

    async def _retire(self, name: str) -> None:
        try:
            slot = self._slot(name)
            if slot is not None:
                async with self.guard(name) if self.guard is not None else contextlib.nullcontext():
                    await self._drain_everywhere(slot)
                await self._walk_down(slot)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("autoscaler: retiring %s: %s", name, exc)
        finally:
            if self.phase.get(name) == RETIRING:
                self.phase.pop(name, None)
        await self._changed(name)

    async def _drain_everywhere(self, slot: Slot) -> None:
        timeout = self.drain_timeout_s
        path = f"/pods/{quote(slot.name, safe='')}?timeout={timeout:g}"
        results = await asyncio.gather(
            *(adminhttp.call("DELETE", admin + path, timeout=timeout + 5) for admin in self.replicas()),
            return_exceptions=True,
        )
        for admin, result in zip(self.replicas(), results, strict=False):
            if isinstance(result, BaseException):
                log.warning("autoscaler: draining %s from %s: %s", slot.name, admin, result)

    async def _walk_down(self, slot: Slot) -> None:
        deadline = self.clock() + self.drain_timeout_s
        while True:
            status, payload = await adminhttp.call(
                "PUT", slot.sim_admin + "/state", {"state": self.retire_to, "path": "auto"}
            )
            if status in (200, 202):
                return
            # 409: requests from outside katyusha still execute, or a move runs; it ends by itself.
            if status != 409 or self.clock() > deadline:
                raise adminhttp.AdminCallError(f"PUT {slot.sim_admin}/state: HTTP {status}: {payload}", status)
            await asyncio.sleep(self.poll_s)

    async def _changed(self, name: str) -> None:
        if self.on_change is not None:
            result = self.on_change(name)
            if result is not None:
                with contextlib.suppress(Exception):
                    await result



def _moving(document: dict) -> bool:
    """True while sim-backend runs a timed transition or a walk."""
    return bool(document.get("transition")) or bool(document.get("walk"))
