"""`katyusha fleet up`: start a local fleet, supervise its processes, run its control plane, stop in order.

The runner owns every child process: sim-backends first, then their nonna
sidecars, then the katyusha replicas. A child that dies is reported and
restarted. The runner binds each katyusha replica's data port itself, once,
and hands the listening socket to every katyusha process it starts there
(``--listen-fd``): while a replica stops (SIGTERM) and its successor starts,
the port stays open and new connections wait in its accept queue, to be
served by the successor, instead of being refused. A replica that stopped
cleanly is started again at once. Keeping katyusha's pod sets in step with pod states is the
control plane's job (katyusha.control.plane), which the runner runs
in-process and tells where the processes are (:class:`RunnerProcesses`); the
same control plane can run on its own (``katyusha control``). With
autoscaling on, katyusha POSTs its demand to the control plane's admin port.
On SIGINT/SIGTERM/SIGHUP it stops the control plane, then katyusha (so what
is in flight is answered), then the nonnas, then the sim-backends, and
finally SIGKILLs any process group still alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from dataclasses import asdict
from functools import partial
from pathlib import Path

from katyusha.control.membership import BalancerRef, PodAddress
from katyusha.control.plane import ControlPlane
from katyusha.core.podstate import ACTIVE, WARM
from katyusha.fleet import statefile
from katyusha.fleet.children import Child, ChildFailed, console_script
from katyusha.fleet.spec import INITIAL_STATES, FleetSpec, PodSpec
from katyusha.fleet.table import render
from katyusha.progress import bar
from katyusha.serving import bind_socket

RESTART_BACKOFF_S = (0.2, 1.0, 2.0, 5.0, 10.0)


class PodRun:
    """One pod while the fleet runs: its two processes."""

    sim: Child
    nonna: Child

    def __init__(self, spec: PodSpec):
        self.spec = spec

    @property
    def up(self) -> bool:
        return self.sim.up and self.nonna.up


class RunnerProcesses:
    """The control plane's view of the runner's children (katyusha.control.processes.Processes)."""

    def __init__(self, fleet: Fleet):
        self.fleet = fleet

    def balancers(self) -> list[BalancerRef]:
        return [BalancerRef(r.name, str(r.admin_url)) for r in self.fleet.replicas if r.up]

    def pods(self) -> list[PodAddress]:
        return [
            PodAddress(p.spec.name, p.spec.node, p.spec.service, p.sim.admin_url, p.nonna.data_url,
                       p.nonna.admin_url, p.spec.params.concurrency)
            for p in self.fleet.pods
        ]  # fmt: skip

    def pod_up(self, name: str) -> bool | None:
        return next(p.up for p in self.fleet.pods if p.spec.name == name)

    def document(self) -> dict:
        return self.fleet.state_document()


class Fleet:
    """A running local fleet; :meth:`run` returns the exit status."""

    def __init__(self, spec: FleetSpec, state_path: Path | None = None, *, source: str = "",
                 token_file: str | None = None, token: str | None = None, allow_open: bool = False,
                 prometheus=None):
        """``prometheus``: a katyusha.fleet.prometheus.PrometheusServer to start once the fleet is
        ready (``--prometheus``). ``token_file``/``token``: one admin token for every process of the fleet and its control
        plane (katyusha.admintoken); ``allow_open``: admin ports on a non-loopback host without one.
        Raises OSError when the control plane's admin port cannot be bound."""
        self.spec = spec
        self.source = source
        self.token_file = token_file
        self.allow_open = allow_open
        self.state_path = state_path
        self.prometheus = prometheus
        self.stopping = asyncio.Event()
        self.force = False
        self._stop_asked_at: float | None = None
        self.replicas: list[Child] = []
        # One listening socket per replica, bound once for the runner's life (see the module docstring).
        self.listeners: list[socket.socket] = []
        self.pods: list[PodRun] = []
        self._tasks: list[asyncio.Task] = []
        self._build()
        # Bound now, so katyusha is started with its demand URL.
        self.control = ControlPlane(spec, RunnerProcesses(self), host=spec.host, log_line=self.log, token=token)

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
            self.replicas.append(Child(f"katyusha-{i}", "katyusha", partial(self._replica_argv, i), ports,
                                       log=self.log))

    def _listen(self) -> None:
        """Bind every replica's data port, once for the runner's life. Raises ChildFailed naming the address."""
        for child in self.replicas:
            try:
                sock = bind_socket(self.spec.host, child.ports[0])
            except OSError as exc:
                self.close_listeners()
                raise ChildFailed(f"{child.name}: {exc.strerror}") from None
            self.listeners.append(sock)
            child.ports = (sock.getsockname()[1], child.ports[1])
            child.pass_fds = (sock.fileno(),)

    def close_listeners(self) -> None:
        for sock in self.listeners:
            sock.close()
        self.listeners.clear()

    def _sim_argv(self, run: PodRun, port: int, admin: int) -> list[str]:
        params = run.spec.params
        # A restarted pod comes back in the state it was last seen in, when it can start there.
        seen = self.control.seen.get(run.spec.name)
        last = WARM if seen is ACTIVE else seen
        state = last.value if last is not None and last.value in INITIAL_STATES else params.state
        return [
            console_script("sim-backend"), "--host", self.spec.host,
            "--port", str(port), "--admin-port", str(admin),
            "--pod", run.spec.name, "--node", run.spec.node, "--state", state,
            "--service-time", params.service_time, "--speed", f"{params.speed:g}",
            "--image-size-mb", f"{params.image_size_mb:g}", "--pull-mbps", f"{params.pull_mbps:g}",
            "--start-s", f"{params.start_s:g}",
            # The emulated app is sim-backend's default: its argv stays what `katyusha fleet compose` writes.
            *(["--app", params.app] if params.app != "emulated" else []),
            *self._admin_args(flag_only=True),
        ]  # fmt: skip

    def _admin_args(self, flag_only: bool = False) -> list[str]:
        """The admin-token flags every child gets (sim-backend's --admin-allow-open takes no value)."""
        args = ["--admin-token-file", self.token_file] if self.token_file else []
        if self.allow_open:
            args += ["--admin-allow-open"] if flag_only else ["--admin-allow-open", "true"]
        return args

    def _nonna_argv(self, run: PodRun, port: int, admin: int) -> list[str]:
        params = run.spec.params
        return [
            console_script("nonna"), "--host", self.spec.host,
            "--port", str(port), "--admin-port", str(admin),
            "--upstream", str(run.sim.data_url),
            "--upstream-health", f"{run.sim.admin_url}/healthz",
            "--concurrency", str(params.concurrency), "--queue-depth", str(params.queue_depth),
            "--pod", run.spec.name, "--node", run.spec.node, *self._admin_args(),
        ]  # fmt: skip

    def _replica_argv(self, index: int, port: int, admin: int) -> list[str]:
        fd = self.listeners[index].fileno() if index < len(self.listeners) else None
        return self._katyusha_argv(port, admin, fd)

    def _katyusha_argv(self, port: int, admin: int, listen_fd: int | None = None) -> list[str]:
        """``listen_fd``: the data socket the runner holds (the port is then only a label)."""
        k = self.spec.katyusha
        return [
            console_script("katyusha"), "serve", "--host", self.spec.host,
            "--port", str(port), *(["--listen-fd", str(listen_fd)] if listen_fd is not None else []),
            "--admin-port", str(admin), "--policy", k.policy,
            *(["--demand-url", self.control.demand_url] if self.spec.autoscaler.enabled else []),
            *self._admin_args(), *k.args,
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
                await self.control.start()
                for child in self.children():
                    self._tasks.append(asyncio.create_task(self._supervise(child)))
                await self._wait_ready()
                self._write_state()
                if self.prometheus is not None:
                    try:
                        await self.prometheus.start(self.state_document())
                    except OSError as exc:
                        self.log(f"katyusha fleet: could not start prometheus: {exc}")
                        return 1
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
        self._listen()
        await self._start_group(self.replicas, timeout)

    async def _start_group(self, children: list[Child], timeout: float) -> None:
        if self.stopping.is_set():
            raise ChildFailed("stopped while starting")
        with bar(len(children), f"starting {children[0].role if children else ''}", "proc") as progress:

            async def start(child: Child) -> None:
                await child.start(timeout)
                progress.update(1)

            results = await asyncio.gather(*(start(c) for c in children), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _wait_ready(self) -> None:
        """Wait until every pod that serves at start is in every replica's set."""
        deadline = time.monotonic() + self.spec.runner.ready_timeout_s
        while time.monotonic() < deadline and not self.stopping.is_set():
            if not self.control.pending():
                return
            await asyncio.sleep(0.05)
        if not self.stopping.is_set():
            self.log("katyusha fleet: some pods are not in katyusha's set yet; going on")

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
            if child.pass_fds and status == 0 and failures == 0:
                # A clean stop of a process whose socket the runner holds: connections are
                # waiting in its accept queue. A crash (any other status) still backs off.
                delay = 0.0
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), delay)
            if self.stopping.is_set():
                return
            if await self._restart(child):
                failures = 0
            else:
                failures += 1

    def _on_down(self, child: Child) -> None:
        # A pod whose process died leaves katyusha's sets at once, not at the next round.
        self.control.poke()

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
        self.control.poke()
        self._write_state()
        if self.prometheus is not None:
            await self.prometheus.update(self.state_document())
        return True

    # Stopping.

    async def _stop_all(self) -> None:
        self.stopping.set()
        if self.prometheus is not None:
            await self.prometheus.stop()
        await self.control.stop()
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
            if label == "katyusha":
                self.close_listeners()
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
            "control": {"admin": self.control.admin_url},
            # Where the token is, never the token: status and pod read it from there.
            "admin_token_file": self.token_file,
            "autoscaler": None
            if not self.spec.autoscaler.enabled
            else {"admin": self.control.admin_url, "settings": self.spec.autoscaler.to_json()},
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
        writer = self.control.writer
        for child in self.replicas:
            count = sum(1 for p in self.pods if p.spec.name in writer.placed.get(str(child.admin_url), {}))
            rows.append((child.name, child.role, "-", child.data_url, child.admin_url, child.pid, f"{count} pods in set"))
        for pod in self.pods:
            in_set = "in set" if writer.count_in_sets(pod.spec.name) else "not in set"
            seen = self.control.states.get(pod.spec.name, (None, None))[0]
            state = f"{seen.value if seen is not None else 'unknown'} ({in_set})"
            rows.append((pod.sim.name, pod.sim.role, pod.spec.node, pod.sim.data_url, pod.sim.admin_url, pod.sim.pid, state))
            rows.append((pod.nonna.name, pod.nonna.role, pod.spec.node, pod.nonna.data_url, pod.nonna.admin_url, pod.nonna.pid, ""))
        text = render(("PROCESS", "ROLE", "NODE", "DATA", "ADMIN", "PID", "STATE"), rows)
        text += f"\nsend traffic to: {self.replicas[0].data_url}\n"
        if len(self.replicas) > 1:
            text += "every replica: " + " ".join(str(c.data_url) for c in self.replicas) + "\n"
        if self.state_path is not None:
            text += f"state file: {self.state_path}\n"
        text += f"control plane: {self.control.admin_url} (GET /fleet, PUT /pods/NAME/state"
        text += ", GET /autoscaler, /placement, /metrics)\n" if self.spec.autoscaler.enabled else ")\n"
        if self.prometheus is not None and self.prometheus.proc is not None:
            text += f"prometheus: {self.prometheus.url} (config {self.prometheus.config})\n"
        text += f"dashboard: {self.control.admin_url}/dashboard (one replica's: {self.replicas[0].admin_url}/dashboard)\n"
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


def run_fleet(spec: FleetSpec, state_path: Path | None = None, source: str = "", *,
              token_file: str | None = None, token: str | None = None, allow_open: bool = False,
              prometheus=None) -> int:
    """Run the fleet until a stop signal; return the exit status (0 after a clean stop).

    ``state_path`` None: the default path for katyusha's port (see statefile).
    """
    try:
        fleet = Fleet(spec, state_path, source=source, token_file=token_file, token=token,
                      allow_open=allow_open, prometheus=prometheus)
    except OSError as exc:
        sys.stderr.write(f"katyusha fleet: could not start the fleet: {exc}\n")
        return 1
    return asyncio.run(fleet.run())
