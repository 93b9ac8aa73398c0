"""CPU, RAM and disk samples of the emulated pod, taken every period over a sliding window.

Two kinds of figures per sample: the *modelled* pod (what a real container in
this state would use, from :class:`Profile`) and the *measured* process
(sim-backend's own CPU time and resident memory), which differ: the modelled
figures are what placement and autoscaling experiments reason about, the
measured ones show what the emulation costs the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import deque
from dataclasses import asdict, dataclass

from katyusha.core.podstate import PodState
from sim_backend.pod import Pod


@dataclass(frozen=True)
class Profile:
    """Modelled resource use by state; per-request figures add up while requests execute."""

    idle_cpu_cores: float = 0.02  # warm or active, container running
    idle_ram_mb: float = 64.0
    request_cpu_cores: float = 0.5  # each executing request
    request_ram_mb: float = 8.0
    pull_cpu_cores: float = 0.1  # cold -> warmdisk: download and unpack
    start_cpu_cores: float = 0.5  # warmdisk -> warm: runtime and app start-up


def modelled(pod: Pod, profile: Profile) -> dict:
    """The modelled cpu_cores, ram_mb and disk_mb of ``pod`` now."""
    state = pod.state
    image = pod.machine.costs.image_size_mb
    cpu = ram = disk = 0.0
    if state in (PodState.WARMDISK, PodState.WARM, PodState.ACTIVE):
        disk = image
    if state in (PodState.WARM, PodState.ACTIVE):
        cpu = profile.idle_cpu_cores + profile.request_cpu_cores * pod.machine.in_flight
        ram = profile.idle_ram_mb + profile.request_ram_mb * pod.machine.in_flight
    t = pod.machine.transition
    if t is not None:
        total = t.ends_at - t.started_at
        done = 1.0 - t.remaining(pod.now()) / total if total > 0 else 1.0
        if (t.src, t.dst) == (PodState.COLD, PodState.WARMDISK):
            cpu, disk = profile.pull_cpu_cores, image * done
        elif (t.src, t.dst) == (PodState.WARMDISK, PodState.WARM):
            cpu, ram = profile.start_cpu_cores, profile.idle_ram_mb * done
    return {"cpu_cores": cpu, "ram_mb": ram, "disk_mb": disk}


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class Monitor:
    """Samples ``pod`` every ``period_s`` and keeps the last ``window_s`` seconds of samples."""

    def __init__(self, pod: Pod, *, period_s: float, window_s: float, profile: Profile | None = None):
        self.pod = pod
        self.period_s = period_s
        self.window_s = window_s
        self.profile = profile or Profile()
        self.samples: deque[dict] = deque(maxlen=max(1, math.ceil(window_s / period_s)))
        self._last_wall = time.monotonic()
        self._last_cpu = time.process_time()
        self._task: asyncio.Task | None = None

    def sample(self) -> dict:
        """Take one sample now, keep it and return it."""
        wall, cpu = time.monotonic(), time.process_time()
        elapsed = wall - self._last_wall
        process_cpu = (cpu - self._last_cpu) / elapsed if elapsed > 0 else 0.0
        self._last_wall, self._last_cpu = wall, cpu
        record = {
            "t": time.time(),
            "state": self.pod.state.value,
            "in_flight": self.pod.machine.in_flight,
            **modelled(self.pod, self.profile),
            "process_cpu_cores": process_cpu,
            "process_rss_mb": _rss_mb(),
        }
        self.samples.append(record)
        return record

    def doc(self) -> dict:
        return {
            "pod": self.pod.name,
            "node": self.pod.node,
            "period_s": self.period_s,
            "window_s": self.window_s,
            "profile": asdict(self.profile),
            "current": modelled(self.pod, self.profile),
            "samples": list(self.samples),
        }

    async def _run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.period_s)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
