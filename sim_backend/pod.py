"""The emulated pod at run time: the state machine on a real clock, service, counters, request log.

One :class:`Pod` per process, shared by the data app (which serves requests)
and the admin app (which reads and moves the state). All of it runs on one
event loop, so no locks: state changes happen between awaits.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from dataclasses import dataclass

from katyusha.core.errors import IllegalTransition
from katyusha.core.podstate import PodMachine, PodState, Step, plan
from sim_backend.config import Settings

# CPU burning yields to the event loop at least this often, so other requests,
# the admin port and the monitor keep running while one request burns.
BURN_SLICE_S = 0.005


@dataclass
class Counters:
    requests: int = 0
    served: int = 0
    rejected: int = 0
    bytes_in: int = 0
    service_s: float = 0.0


class Pod:
    """The pod's state and behaviour; methods raise IllegalTransition (409) on refused changes."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.name = settings.pod
        self.node = settings.node
        self.machine = PodMachine(settings.state, settings.costs)
        self.distribution = settings.service_time
        self.rng = random.Random(settings.seed)
        self.speed = settings.speed
        self.slow_schedule = settings.slow_schedule
        self.started_mono = time.monotonic()
        self.counters = Counters()
        self.requests: deque[dict] = deque(maxlen=settings.requests_buffer)
        self._request_seq = 0
        self._walk: asyncio.Task | None = None
        self._walk_plan: list[Step] = []

    # -- clocks ---------------------------------------------------------------

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def wall(self, mono: float) -> float:
        """Epoch seconds for a monotonic instant (what the admin API reports)."""
        return time.time() - (time.monotonic() - mono)

    # -- state ----------------------------------------------------------------

    @property
    def state(self) -> PodState:
        self.machine.complete(self.now())
        return self.machine.state

    @property
    def serving(self) -> bool:
        self.machine.complete(self.now())
        return self.machine.serving

    @property
    def walking(self) -> bool:
        return self._walk is not None and not self._walk.done()

    def effective_speed(self, mono: float | None = None) -> float:
        """The speed now: the base speed times the slow schedule's factor, if any."""
        if self.slow_schedule is None:
            return self.speed
        elapsed = (self.now() if mono is None else mono) - self.started_mono
        return self.speed * self.slow_schedule.factor_at(elapsed)

    def set_speed(self, speed: float) -> None:
        self.speed = speed

    def transition_doc(self) -> dict | None:
        t = self.machine.transition
        if t is None:
            return None
        return {
            "from": t.src.value,
            "to": t.dst.value,
            "started_at": self.wall(t.started_at),
            "ends_at": self.wall(t.ends_at),
            "remaining_s": t.remaining(self.now()),
        }

    def state_doc(self) -> dict:
        state = self.state
        c = self.counters
        return {
            "state": state.value,
            "pod": self.name,
            "node": self.node,
            "serving": self.machine.serving,
            "transition": self.transition_doc(),
            "walk": [s.to_dict() for s in self._walk_plan] if self.walking else None,
            "in_flight": self.machine.in_flight,
            "speed": self.speed,
            "effective_speed": self.effective_speed(),
            "counters": {
                "requests": c.requests,
                "served": c.served,
                "rejected": c.rejected,
                "bytes_in": c.bytes_in,
                "cold_starts": self.machine.cold_starts,
                "image_pulls": self.machine.image_pulls,
                "transitions": self.machine.transitions,
            },
        }

    def _refuse_if_walking(self, target: PodState) -> None:
        if self.walking:
            steps = " -> ".join([self._walk_plan[0].src.value, *(s.dst.value for s in self._walk_plan)])
            raise IllegalTransition(
                f"a walk {steps} is in progress; cannot start {self.state.value} -> {target.value}"
            )

    def step(self, target: PodState) -> Step:
        """Begin one allowed step to ``target``; timed steps finish by themselves (GET /state shows them)."""
        self._refuse_if_walking(target)
        src = self.state
        now = self.now()
        ends_at = self.machine.begin(target, now)
        return Step(src, target, ends_at - now)

    def walk(self, target: PodState) -> list[Step]:
        """Start walking the shortest legal path to ``target`` in the background; return the plan.

        Raises IllegalTransition when a transition or walk is running, when the
        pod is active and must leave warm, or when ``target`` is active.
        """
        self._refuse_if_walking(target)
        src = self.state
        if self.machine.in_transition:
            # Let the machine word the refusal: it names the running transition.
            self.machine.begin(target, self.now())
        if src is PodState.ACTIVE and target is PodState.WARM:
            return []  # the container is running already; requests decide warm or active
        steps = plan(src, target, self.machine.costs)
        if steps and src is PodState.ACTIVE:
            self.machine.begin(steps[0].dst, self.now())  # raises: requests are executing
        self._walk_plan = steps
        pending = list(steps)
        # Instant steps and the start of the first timed one happen before
        # returning, so the caller's next GET /state already shows the walk.
        self._advance(pending)
        if pending or self.machine.in_transition:
            self._walk = asyncio.get_running_loop().create_task(self._run_walk(pending))
        return steps

    def _advance(self, pending: list[Step]) -> None:
        """Begin pending steps until one is timed (and running) or none is left."""
        while pending and not self.machine.in_transition:
            self.machine.begin(pending.pop(0).dst, self.now())

    async def _run_walk(self, pending: list[Step]) -> None:
        while True:
            t = self.machine.transition
            if t is not None:
                await asyncio.sleep(max(t.ends_at - self.now(), 0.001))
                self.machine.complete(self.now())
                continue
            if not pending:
                return
            self._advance(pending)

    async def wait_walk(self) -> None:
        if self._walk is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._walk)

    async def wait_transition(self) -> None:
        """Return when no timed transition or walk runs."""
        await self.wait_walk()
        while self.machine.in_transition:
            remaining = self.machine.transition.remaining(self.now())
            await asyncio.sleep(max(remaining, 0.001))
            self.machine.complete(self.now())

    async def close(self) -> None:
        if self._walk is not None:
            self._walk.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._walk

    # -- requests -------------------------------------------------------------

    def admit(self, method: str, path: str) -> dict:
        """Record an arriving request and make the pod active; raises IllegalTransition when not serving."""
        self.counters.requests += 1
        self._request_seq += 1
        record = {
            "id": self._request_seq,
            "method": method,
            "path": path,
            "arrival": time.time(),
            "service_start": None,
            "service_end": None,
            "service_ms": None,
            "bytes_in": 0,
            "status": None,
        }
        self.requests.append(record)
        state = self.state
        if not self.machine.serving:
            self.counters.rejected += 1
            record["status"] = 503
            detail = ""
            if self.machine.transition is not None:
                detail = f" (moving to {self.machine.transition.dst.value})"
            raise IllegalTransition(f"pod {self.name} is {state.value}{detail}, not serving")
        self.machine.request_started()
        return record

    async def serve(self, record: dict, bytes_in: int) -> float:
        """Execute the admitted request: sleep or burn its service time; return the seconds it took."""
        record["bytes_in"] = bytes_in
        self.counters.bytes_in += bytes_in
        start = self.now()
        record["service_start"] = time.time()
        try:
            target = self.distribution.sample(self.rng) / self.effective_speed(start)
            if self.settings.cpu_burn:
                await burn(target)
            else:
                await asyncio.sleep(target)
        finally:
            self.machine.request_finished()
        elapsed = self.now() - start
        record["service_end"] = time.time()
        record["service_ms"] = elapsed * 1e3
        record["status"] = 200
        self.counters.served += 1
        self.counters.service_s += elapsed
        return elapsed


async def burn(seconds: float) -> None:
    """Spend ``seconds`` of CPU time on this request, in slices that yield to the event loop.

    CPU time, not wall time, is what is counted: under contention (other
    requests burning, other processes) the request takes longer on the wall
    clock, as a CPU-bound application would. Between slices the loop serves
    other requests, the admin port and the monitor, so N requests burning at
    once share one core and each takes about N times its service time.
    """
    remaining = seconds
    while remaining > 0:
        chunk = min(remaining, BURN_SLICE_S)
        started = time.thread_time()
        while time.thread_time() - started < chunk:
            pass
        remaining -= time.thread_time() - started
        await asyncio.sleep(0)
