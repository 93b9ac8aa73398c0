"""The emulated pod at run time: the core's Lifecycle on a real clock, service, counters, request log.

One :class:`Pod` per process, shared by the data app (which serves requests)
and the admin app (which reads and moves the state). All of it runs on one
event loop, so no locks: state changes happen between awaits.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass

from katyusha.core.errors import IllegalTransition
from katyusha.core.lifecycle import Lifecycle
from katyusha.core.podstate import PodMachine, PodState, Step
from katyusha.deadline_timer import SLACK_S, DeadlineTimer
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
        self.lifecycle = Lifecycle(settings.state, settings.costs)
        self.distribution = settings.service_time
        self.rng = random.Random(settings.seed)
        self.speed = settings.speed
        self.slow_schedule = settings.slow_schedule
        self.started_mono = time.monotonic()
        self.counters = Counters()
        self.requests: deque[dict] = deque(maxlen=settings.requests_buffer)
        self._request_seq = 0
        # One timer at the end of the running step: a walk goes on by itself.
        self._timer = DeadlineTimer(self.lifecycle.next_deadline, self.lifecycle.advance,
                                    clock=self.now)

    # -- clocks ---------------------------------------------------------------

    @staticmethod
    def now() -> float:
        return time.monotonic()

    def wall(self, mono: float) -> float:
        """Epoch seconds for a monotonic instant (what the admin API reports)."""
        return time.time() - (time.monotonic() - mono)

    # -- state (the core's Lifecycle, on a real clock) ------------------------------

    @property
    def machine(self) -> PodMachine:
        """The core's state machine: counters, the running transition, executing requests."""
        return self.lifecycle.machine

    @property
    def state(self) -> PodState:
        return self.lifecycle.state(self.now())

    @property
    def serving(self) -> bool:
        return self.lifecycle.serving(self.now())

    @property
    def walking(self) -> bool:
        return self.lifecycle.walk_in_progress(self.now()) is not None

    @property
    def moving(self) -> bool:
        """True while a timed step or a walk is under way."""
        return self.lifecycle.moving(self.now())

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
        now = self.now()
        state = self.lifecycle.state(now)
        walk = self.lifecycle.walk_in_progress(now)
        c = self.counters
        return {
            "state": state.value,
            "pod": self.name,
            "node": self.node,
            "serving": self.machine.serving,
            "transition": self.transition_doc(),
            "walk": [s.to_dict() for s in walk] if walk is not None else None,
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

    def step(self, target: PodState) -> Step:
        """Begin one allowed step to ``target``; raises IllegalTransition (409) as Lifecycle.step does."""
        step = self.lifecycle.step(target, self.now())
        self._timer.follow()
        return step

    def walk(self, target: PodState) -> list[Step]:
        """Start walking the shortest legal path to ``target``; return the plan.

        Raises IllegalTransition (409) as Lifecycle.walk does.
        """
        steps = self.lifecycle.walk(target, self.now())
        self._timer.follow()
        return steps

    async def wait_transition(self) -> None:
        """Return when no timed step or walk runs."""
        while self.lifecycle.moving(self.now()):
            deadline = self.lifecycle.next_deadline()
            await asyncio.sleep(max(deadline - self.now(), 0.0) + SLACK_S)

    async def close(self) -> None:
        self._timer.cancel()

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
            "target_ms": None,
            "bytes_in": 0,
            "status": None,
        }
        self.requests.append(record)
        now = self.now()
        if not self.lifecycle.serving(now):
            state = self.machine.state
            self.counters.rejected += 1
            record["status"] = 503
            detail = ""
            if self.machine.transition is not None:
                detail = f" (moving to {self.machine.transition.dst.value})"
            raise IllegalTransition(f"pod {self.name} is {state.value}{detail}, not serving")
        self.lifecycle.request_started(now)
        return record

    async def serve(self, record: dict, bytes_in: int) -> float:
        """Execute the admitted request: sleep or burn its service time; return the seconds it took."""
        record["bytes_in"] = bytes_in
        self.counters.bytes_in += bytes_in
        start = self.now()
        record["service_start"] = time.time()
        try:
            target = self.distribution.sample(self.rng) / self.effective_speed(start)
            record["target_ms"] = target * 1e3
            if self.settings.cpu_burn:
                await burn(target)
            else:
                await asyncio.sleep(target)
        finally:
            self.lifecycle.request_finished(self.now())
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
