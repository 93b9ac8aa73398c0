"""`katyusha fleet up`: start a local fleet, keep katyusha's pod set in step, stop it in order.

The runner owns every child process: sim-backends first, then their nonna
sidecars, then the katyusha replicas. It polls each pod's state and adds a
pod to every replica's set when it is warm (or active), removes it (drained)
when it is not, or when its sim-backend or nonna is down. A child that dies
is reported and restarted. With autoscaling on, the live autoscaler
(katyusha.control.live) decides which pods run: the runner adds a warm pod to
katyusha's sets only while the autoscaler counts it as serving, and katyusha
POSTs its demand to the autoscaler's admin port. On SIGINT/SIGTERM/SIGHUP it
stops the autoscaler, then katyusha (so what is in flight is answered), then the nonnas, then the sim-backends,
and finally SIGKILLs any process group still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

from katyusha.control.actuator import Slot
from katyusha.control.live import LiveAutoscaler
from katyusha.fleet import adminclient, statefile
from katyusha.fleet.children import Child, ChildFailed, console_script
from katyusha.fleet.spec import INITIAL_STATES, SERVING_STATES, FleetSpec, PodSpec
from katyusha.fleet.table import render

RESTART_BACKOFF_S = (0.2, 1.0, 2.0, 5.0, 10.0)


class PodRun:
    """One pod while the fleet runs: its two processes and where it is registered."""

    sim: Child
    nonna: Child

    def __init__(self, spec: PodSpec):
        self.spec = spec
        self.state: str | None = None
        # replica index -> (replica generation, nonna URL) it was added with.
        self.registered: dict[int, tuple[int, str]] = {}
        self.wake = asyncio.Event()
        self.lock = asyncio.Lock()
        self.complained = False

    @property
    def up(self) -> bool:
        return self.sim.up and self.nonna.up

    def entry(self) -> dict:
        """The pod as katyusha's PUT /pods expects it, with nonna's container concurrency.

        Given up front so katyusha caps what it sends the pod from the first request on.
        """
        return {
            "name": self.spec.name,
            "url": self.nonna.data_url,
            "node": self.spec.node,
            "admin": self.nonna.admin_url,
            "concurrency": self.spec.params.concurrency,
        }


class Fleet:
    """A running local fleet; :meth:`run` returns the exit status."""

    def __init__(self, spec: FleetSpec, state_path: Path | None = None, *, source: str = ""):
        self.spec = spec
        self.source = source
        self.state_path = state_path
        self.stopping = asyncio.Event()
        self.force = False
        self._stop_asked_at: float | None = None
        self.generation: list[int] = []
        self.replicas: list[Child] = []
        self.pods: list[PodRun] = []
        self._tasks: list[asyncio.Task] = []
        self.autoscaler: LiveAutoscaler | None = None
        self._build()

    def log(self, line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    # Building the processes.

    def _build(self) -> None:
        for pod in self.spec.pods:
            run = PodRun(pod)
            run.sim = Child(f"{pod.name}/sim", "sim-backend", partial(self._sim_argv, run), pod.ports[0:2], log=self.log)
            run.nonna = Child(f"{pod.name}/nonna", "nonna", partial(self._nonna_argv, run), pod.ports[2:4], log=self.log)
            self.pods.append(run)
        for i in range(self.spec.katyusha.replicas):
            ports = self.spec.katyusha.ports(i)
            self.replicas.append(Child(f"katyusha-{i}", "katyusha", self._katyusha_argv, ports, log=self.log))
            self.generation.append(0)
        if self.spec.autoscaler.enabled:
            # Bound now, so katyusha is started with its demand URL.
            self.autoscaler = LiveAutoscaler(
                self.spec.autoscaler, self._slots, self._replica_admins, host=self.spec.host,
                pod_stats_urls=self._stats_urls, guard=self._pod_guard, chooser=self.spec.placement_chooser(),
            )  # fmt: skip

    def _slots(self) -> list[Slot]:
        return [
            Slot(p.spec.name, p.spec.node, str(p.sim.admin_url), str(p.nonna.data_url), str(p.nonna.admin_url),
                 p.spec.params.concurrency)
            for p in self.pods
        ]

    def _replica_admins(self) -> list[str]:
        return [str(r.admin_url) for r in self.replicas if r.up]

    def _stats_urls(self) -> list[str]:
        return [f"{p.nonna.admin_url}/stats" for p in self.pods if p.nonna.up and p.state in SERVING_STATES]

    def _pod_guard(self, name: str):
        return next(p.lock for p in self.pods if p.spec.name == name)

    def _sim_argv(self, run: PodRun, port: int, admin: int) -> list[str]:
        params = run.spec.params
        # A restarted pod comes back in the state it was last seen in, when it can start there.
        last = "warm" if run.state == "active" else run.state
        state = last if last in INITIAL_STATES else params.state
        return [
            console_script("sim-backend"), "--host", self.spec.host,
            "--port", str(port), "--admin-port", str(admin),
            "--pod", run.spec.name, "--node", run.spec.node, "--state", state,
            "--service-time", params.service_time, "--speed", f"{params.speed:g}",
            "--image-size-mb", f"{params.image_size_mb:g}", "--pull-mbps", f"{params.pull_mbps:g}",
            "--start-s", f"{params.start_s:g}",
        ]  # fmt: skip

    def _nonna_argv(self, run: PodRun, port: int, admin: int) -> list[str]:
        params = run.spec.params
        return [
            console_script("nonna"), "--host", self.spec.host,
            "--port", str(port), "--admin-port", str(admin),
            "--upstream", str(run.sim.data_url),
            "--upstream-health", f"{run.sim.admin_url}/healthz",
            "--concurrency", str(params.concurrency), "--queue-depth", str(params.queue_depth),
            "--pod", run.spec.name, "--node", run.spec.node,
        ]  # fmt: skip

    def _katyusha_argv(self, port: int, admin: int) -> list[str]:
        k = self.spec.katyusha
        return [
            console_script("katyusha"), "serve", "--host", self.spec.host,
            "--port", str(port), "--admin-port", str(admin), "--policy", k.policy,
            *(["--demand-url", self.autoscaler.demand_url] if self.autoscaler is not None else []),
            *k.args,
        ]  # fmt: skip

    # The life of the fleet.

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(sig, self._ask_stop, sig)
        status = 0
        try:
            try:
                await self._start_all()
            except ChildFailed as exc:
                if not self.stopping.is_set():
                    self.log(f"katyusha fleet: could not start the fleet: {exc}")
                    status = 1
            if status == 0 and not self.stopping.is_set():
                if self.autoscaler is not None:
                    # Before the pod loops: they add only the pods the autoscaler counts as serving.
                    await self.autoscaler.start()
                for child in self.children():
                    self._tasks.append(asyncio.create_task(self._supervise(child)))
                for pod in self.pods:
                    self._tasks.append(asyncio.create_task(self._pod_loop(pod)))
                await self._wait_ready()
                self._write_state()
                sys.stdout.write(self.ready_table())
                sys.stdout.flush()
                await self.stopping.wait()
        finally:
            await self._stop_all()
        return status

    def _ask_stop(self, sig: int) -> None:
        now = time.monotonic()
        if self._stop_asked_at is not None and now - self._stop_asked_at < 1.0:
            return  # one signal delivered twice (to the process and to its group)
        if self.stopping.is_set():
            self.force = True
            self.log("katyusha fleet: second signal, killing every process now")
            for child in self.children():
                child.kill_now()
        else:
            self.log(f"katyusha fleet: {signal.Signals(sig).name}, stopping (katyusha, then nonnas, then sim-backends)")
        self._stop_asked_at = now
        self.stopping.set()

    def children(self) -> list[Child]:
        return [*self.replicas, *(p.nonna for p in self.pods), *(p.sim for p in self.pods)]

    async def _start_all(self) -> None:
        timeout = self.spec.runner.ready_timeout_s
        await self._start_group([pod.sim for pod in self.pods], timeout)
        await self._start_group([pod.nonna for pod in self.pods], timeout)
        await asyncio.gather(*(self._read_state(pod) for pod in self.pods))
        await self._start_group(self.replicas, timeout)

    async def _start_group(self, children: list[Child], timeout: float) -> None:
        if self.stopping.is_set():
            raise ChildFailed("stopped while starting")
        results = await asyncio.gather(*(c.start(timeout) for c in children), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _wait_ready(self) -> None:
        """Wait until every pod serving at start is in every replica's set (or its state is final)."""
        deadline = time.monotonic() + self.spec.runner.ready_timeout_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            pending = [
                pod
                for pod in self.pods
                if pod.state is None
                or (pod.state in SERVING_STATES and len(self._current(pod)) < len(self.replicas))
            ]
            if not pending:
                return
            await asyncio.sleep(0.05)
        if not self.stopping.is_set():
            self.log("katyusha fleet: some pods are not in katyusha's set yet; going on")

    def _current(self, pod: PodRun) -> list[int]:
        """Replicas where ``pod`` is registered with its current URL."""
        return [
            r
            for r, (gen, url) in pod.registered.items()
            if gen == self.generation[r] and url == pod.nonna.data_url
        ]

    # Keeping katyusha's set in step with pod states.

    async def _read_state(self, pod: PodRun) -> None:
        if not pod.sim.up:
            pod.state = None
            return
        try:
            document = await asyncio.to_thread(adminclient.pod_state, str(pod.sim.admin_url))
        except adminclient.AdminError:
            pod.state = None
            return
        state = document.get("state")
        heading = adminclient.destination(document)
        # A pod on its way out of warm counts as gone, so it is drained before it stops serving.
        if heading is not None and heading != state:
            state = f"{state}->{heading}"
        pod.state = state if isinstance(state, str) else None

    async def _pod_loop(self, pod: PodRun) -> None:
        interval = self.spec.runner.poll_interval_s
        while not self.stopping.is_set():
            pod.wake.clear()
            try:
                await self._sync_pod(pod)
            except Exception as exc:  # the loop must outlive one bad round
                self.log(f"katyusha fleet: {pod.spec.name}: sync failed: {exc}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(pod.wake.wait(), interval)

    async def _sync_pod(self, pod: PodRun) -> None:
        async with pod.lock:
            await self._read_state(pod)
            serving = pod.up and pod.state in SERVING_STATES
            if self.autoscaler is not None and not self.autoscaler.may_serve(pod.spec.name):
                serving = False
            for r, replica in enumerate(self.replicas):
                if not replica.up or self.stopping.is_set():
                    continue
                admin = str(replica.admin_url)
                current = pod.registered.get(r)
                wanted = (self.generation[r], str(pod.nonna.data_url))
                try:
                    if serving and current != wanted:
                        await asyncio.to_thread(adminclient.add_pods, admin, [pod.entry()])
                        pod.registered[r] = wanted
                    elif not serving and current is not None:
                        await asyncio.to_thread(adminclient.remove_pod, admin, pod.spec.name)
                        pod.registered.pop(r, None)
                    pod.complained = False
                except adminclient.AdminError as exc:
                    if not pod.complained:
                        self.log(f"katyusha fleet: {pod.spec.name} on {replica.name}: {exc}")
                        pod.complained = True

    # Restarting what dies.

    async def _supervise(self, child: Child) -> None:
        failures = 0
        while not self.stopping.is_set():
            status = await child.wait()
            if self.stopping.is_set():
                return
            self._on_down(child)
            if not self.spec.runner.restart:
                self.log(f"katyusha fleet: {child.name} (pid {child.pid}) exited with {_status(status)}; not restarting")
                return
            self.log(f"katyusha fleet: {child.name} (pid {child.pid}) exited with {_status(status)}; restarting")
            delay = RESTART_BACKOFF_S[min(failures, len(RESTART_BACKOFF_S) - 1)]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return
            if await self._restart(child):
                failures = 0
            else:
                failures += 1

    def _on_down(self, child: Child) -> None:
        if child in self.replicas:
            self.generation[self.replicas.index(child)] += 1
            return
        for pod in self.pods:
            if child in (pod.sim, pod.nonna):
                pod.wake.set()

    async def _restart(self, child: Child) -> bool:
        """Start ``child`` again on its last ports (new ones if those are taken and were not fixed)."""
        timeout = self.spec.runner.ready_timeout_s
        old_url = child.data_url
        try:
            await child.start(timeout, child.last_ports())
        except ChildFailed as exc:
            if child.ports != (0, 0) and child.ports == child.last_ports():
                self.log(f"katyusha fleet: restart failed: {exc}")
                return False
            try:
                await child.start(timeout, child.ports)
            except ChildFailed as again:
                self.log(f"katyusha fleet: restart failed: {again}")
                return False
        child.restarts += 1
        self.log(f"katyusha fleet: {child.name} is back (pid {child.pid}, {child.data_url})")
        for pod in self.pods:
            if child is pod.sim and child.data_url != old_url and pod.nonna.running:
                # nonna forwards to the old address: restart it so it points at the new one.
                self.log(f"katyusha fleet: {pod.spec.name}/sim moved to {child.data_url}; restarting its nonna")
                await pod.nonna.stop(self.spec.runner.stop_timeout_s)
        if child in self.replicas:
            for pod in self.pods:
                pod.wake.set()
        else:
            for pod in self.pods:
                if child in (pod.sim, pod.nonna):
                    pod.wake.set()
        self._write_state()
        return True

    # Stopping.

    async def _stop_all(self) -> None:
        self.stopping.set()
        if self.autoscaler is not None:
            await self.autoscaler.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        timeout = 0.5 if self.force else self.spec.runner.stop_timeout_s
        for label, group in (
            ("katyusha", self.replicas),
            ("nonna", [p.nonna for p in self.pods]),
            ("sim-backend", [p.sim for p in self.pods]),
        ):
            statuses = await asyncio.gather(*(c.stop(timeout) for c in group), return_exceptions=True)
            bad = [
                f"{c.name}: {_status(s) if isinstance(s, int) else s}"
                for c, s in zip(group, statuses, strict=True)
                if c.ready is not None and s not in (0, None, -signal.SIGTERM)
            ]
            if bad:
                self.log(f"katyusha fleet: {label} stopped uncleanly ({'; '.join(bad)})")
        for child in self.children():
            child.kill_now()
        if self.state_path is not None:
            with contextlib.suppress(OSError):
                self.state_path.unlink()
        self.log("katyusha fleet: stopped")

    # Reporting.

    def state_document(self) -> dict:
        def proc(child: Child) -> dict:
            return {
                "name": child.name,
                "role": child.role,
                "data": child.data_url,
                "admin": child.admin_url,
                "pid": child.pid,
                "restarts": child.restarts,
            }

        return {
            "runner_pid": os.getpid(),
            "fleet_file": self.source,
            "url": self.replicas[0].data_url if self.replicas else None,
            "policy": self.spec.katyusha.policy,
            "katyusha": [proc(c) for c in self.replicas],
            "pods": [
                {
                    "name": p.spec.name,
                    "node": p.spec.node,
                    "group": p.spec.group,
                    "params": asdict(p.spec.params),
                    "sim": proc(p.sim),
                    "nonna": proc(p.nonna),
                }
                for p in self.pods
            ],
            "topology": self.spec.topology(),
            "autoscaler": None
            if self.autoscaler is None
            else {"admin": self.autoscaler.admin_url, "settings": self.spec.autoscaler.to_json()},
        }

    def _write_state(self) -> None:
        if self.state_path is None:
            port = self.spec.katyusha.port
            if not port and self.replicas and self.replicas[0].data_url:
                # Kernel-chosen katyusha port: the file is named after the port it got.
                port = int(str(self.replicas[0].data_url).rsplit(":", 1)[1])
            if not port:
                return
            self.state_path = statefile.default_path(port)
        try:
            statefile.write(self.state_path, self.state_document())
        except OSError as exc:
            self.log(f"katyusha fleet: cannot write state file {self.state_path}: {exc}")

    def ready_table(self) -> str:
        rows = []
        for child in self.replicas:
            r = self.replicas.index(child)
            count = sum(1 for p in self.pods if r in self._current(p))
            rows.append((child.name, child.role, "-", child.data_url, child.admin_url, child.pid, f"{count} pods in set"))
        for pod in self.pods:
            in_set = "in set" if self._current(pod) else "not in set"
            state = f"{pod.state or 'unknown'} ({in_set})"
            rows.append((pod.sim.name, pod.sim.role, pod.spec.node, pod.sim.data_url, pod.sim.admin_url, pod.sim.pid, state))
            rows.append((pod.nonna.name, pod.nonna.role, pod.spec.node, pod.nonna.data_url, pod.nonna.admin_url, pod.nonna.pid, ""))
        text = render(("PROCESS", "ROLE", "NODE", "DATA", "ADMIN", "PID", "STATE"), rows)
        text += f"\nsend traffic to: {self.replicas[0].data_url}\n"
        if len(self.replicas) > 1:
            text += "every replica: " + " ".join(str(c.data_url) for c in self.replicas) + "\n"
        if self.state_path is not None:
            text += f"state file: {self.state_path}\n"
        if self.autoscaler is not None:
            text += f"autoscaler: {self.autoscaler.admin_url} (GET /autoscaler, /metrics)\n"
        text += "stop with Ctrl-C (or SIGTERM)\n"
        return text


def _status(status: int | None) -> str:
    if status is None:
        return "no status"
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-status).name}"
        return f"signal {-status}"
    return f"status {status}"


def run_fleet(spec: FleetSpec, state_path: Path | None = None, source: str = "") -> int:
    """Run the fleet until a stop signal; return the exit status (0 after a clean stop).

    ``state_path`` None: the default path for katyusha's port (see statefile).
    """
    try:
        fleet = Fleet(spec, state_path, source=source)
    except OSError as exc:
        sys.stderr.write(f"katyusha fleet: could not start the fleet: {exc}\n")
        return 1
    return asyncio.run(fleet.run())
