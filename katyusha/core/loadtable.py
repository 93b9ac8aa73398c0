"""The load table: what katyusha knows about each pod's load, from its own counts and the pod's reports.

Two sources feed it. katyusha's own counts (``in_flight``: requests it sent to
the pod that have not ended, response body included) are exact but blind to
other katyusha replicas and to what the pod does with them. The pod's piggybacked report
(``Nonna-Queue-Length`` + ``Nonna-In-Flight``) sees every client of the pod but
is only as fresh as the last response. :meth:`LoadTable.estimated_load`
combines the two; policies only compare its values.

``in_flight`` is katyusha's one count of its requests to a pod: raised by
:meth:`LoadTable.on_dispatch`, lowered once by :meth:`LoadTable.on_end`. What a
response or a failure teaches is recorded apart (:meth:`LoadTable.record_response`,
:meth:`LoadTable.record_failure`), since a response head arrives before the
request ends (its body still streams). The service balancer's per-request
handle makes those calls; :meth:`LoadTable.on_response` and
:meth:`LoadTable.on_failure` do both at once for a caller whose requests end
with their response (a simulation).

The hot-path methods do constant work and build nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from katyusha.core.errors import ConfigError
from katyusha.core.feedback import Feedback

# What one recent failure weighs in estimated_load: a pod whose app is down
# answers at once, and without this would look like the idlest pod of all.
FAILURE_LOAD = 4
# How long a pod's own-speed estimate (idle_latency_ms) is trusted without a new
# sample: a pod shunned for being slow is measured again after this long.
SPEED_MEMORY_S = 5.0
# The default app_memory_s: an app time reported this long after the pod's last report
# weighs 1 - 1/e (0.63) in ``app_ewma_ms`` (1 - exp(-gap / app_memory_s), never less than
# ``app_alpha``): what a pod did seconds ago says little of what it does now.
APP_MEMORY_S = 1.0


class PodEntry:
    """One pod as the table sees it. Policies read these fields; only the table writes them."""

    __slots__ = (
        "name",
        "url",
        "node",
        "ready",
        "in_flight",
        "reported_queue",
        "reported_in_flight",
        "reported_at",
        "reported_concurrency",
        "reported_state",
        "dispatched_since_report",
        "latency_ewma_ms",
        "idle_latency_ms",
        "idle_latency_at",
        "app_ewma_ms",
        "requests",
        "failures",
        "consecutive_failures",
        "failed_at",
    )

    def __init__(self, name: str, url: str, node: str = "", ready: bool = True):
        self.name = name
        self.url = url
        self.node = node
        self.ready = ready
        self.in_flight = 0
        self.reported_queue: int | None = None
        self.reported_in_flight: int | None = None
        self.reported_at: float | None = None
        self.reported_concurrency: int | None = None
        self.reported_state: str | None = None
        self.dispatched_since_report = 0
        self.latency_ewma_ms: float | None = None
        # Latency of requests sent while the pod had none of ours: its own speed, as
        # katyusha sees it with no report (no queue of ours in it).
        self.idle_latency_ms: float | None = None
        self.idle_latency_at = 0.0
        self.app_ewma_ms: float | None = None
        self.requests = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.failed_at = 0.0

    def __repr__(self) -> str:
        return f"PodEntry({self.name!r}, in_flight={self.in_flight}, ready={self.ready})"


class LoadTable:
    """Pods by name with their load; ``ready()`` is what policies choose from.

    ``version`` increases whenever the set of pods or a pod's readiness
    changes, so callers (policies, the proxy) can cache what they derive from
    ``ready()`` and rebuild it only then.
    """

    __slots__ = ("stale_after_s", "ewma_alpha", "app_alpha", "app_memory_s", "_app_gap_s", "failure_hold_s", "version",
                 "_pods", "_ready", "_listeners", "_sampled", "_sampled_at")

    def __init__(self, *, stale_after_s: float = 2.0, ewma_alpha: float = 0.3,
                 app_alpha: float = 0.15, failure_hold_s: float = 1.0,
                 app_memory_s: float = APP_MEMORY_S):
        """Raises ConfigError when ``stale_after_s`` or ``failure_hold_s`` is not positive or
        ``ewma_alpha`` or ``app_alpha`` not in (0, 1], or ``app_memory_s`` not positive.

        ``ewma_alpha`` weighs each new end-to-end latency sample, ``app_alpha``
        each app time. App times are what the piggyback policies rank pods by,
        and they are noisy (an exponential service time keeps an average
        weighted 0.3 within -70%/+150% of the mean): a policy that ranks pods
        by noise sends more to whichever pod got lucky. 0.15 still follows a
        pod that turns four times slower within about five responses. A report
        that comes ``gap`` seconds after the pod's last weighs ``1 - exp(-gap /
        app_memory_s)`` when that is more (math.inf: never more).
        """
        if not _is_number(stale_after_s) or not stale_after_s > 0:
            raise ConfigError("stale_after_s", f"must be a positive number of seconds, got {stale_after_s!r}")
        if not _is_number(ewma_alpha) or not 0 < ewma_alpha <= 1:
            raise ConfigError("ewma_alpha", f"must be in (0, 1], got {ewma_alpha!r}")
        if not _is_number(app_alpha) or not 0 < app_alpha <= 1:
            raise ConfigError("app_alpha", f"must be in (0, 1], got {app_alpha!r}")
        if not (_is_number(app_memory_s) or app_memory_s == math.inf) or not app_memory_s > 0:
            raise ConfigError("app_memory_s", f"must be a positive number of seconds, got {app_memory_s!r}")
        if not _is_number(failure_hold_s) or not failure_hold_s > 0:
            raise ConfigError("failure_hold_s", f"must be a positive number of seconds, got {failure_hold_s!r}")
        self.stale_after_s = float(stale_after_s)
        self.ewma_alpha = float(ewma_alpha)
        self.app_alpha = float(app_alpha)
        self.app_memory_s = float(app_memory_s)
        # Beyond this silence a report's weight by time is above app_alpha.
        self._app_gap_s = math.inf if app_alpha >= 1 else -self.app_memory_s * math.log(1.0 - app_alpha)
        self.failure_hold_s = float(failure_hold_s)
        self.version = 0
        self._pods: dict[str, PodEntry] = {}
        self._ready: list[PodEntry] | None = None
        self._listeners: list[Callable[[PodEntry], object]] = []
        # Pods with an idle-latency sample, those older than SPEED_MEMORY_S dropped at
        # timed(): a pod gets one only when sent a request alone, so few have a recent one.
        self._sampled: dict[PodEntry, None] = {}
        self._sampled_at = -math.inf

    # -- membership (control-plane rate) ---------------------------------

    def upsert(self, name: str, url: str, node: str = "", ready: bool = True) -> PodEntry:
        """Add a pod or update its address, node and readiness; its counters survive an update."""
        entry = self._pods.get(name)
        if entry is None:
            entry = PodEntry(name, url, node, ready)
            self._pods[name] = entry
            self._changed()
            return entry
        entry.url = url
        entry.node = node
        if entry.ready != ready:
            entry.ready = ready
            self._changed()
        return entry

    def remove(self, name: str) -> PodEntry | None:
        """Forget a pod; returns its entry (requests still in flight to it may finish) or None."""
        entry = self._pods.pop(name, None)
        if entry is not None:
            self._sampled.pop(entry, None)
            self._changed()
        return entry

    def set_ready(self, name: str, ready: bool) -> None:
        """Mark a known pod ready or not; unknown names are ignored (the pod may have just left)."""
        entry = self._pods.get(name)
        if entry is not None and entry.ready != ready:
            entry.ready = ready
            self._changed()

    def get(self, name: str) -> PodEntry | None:
        return self._pods.get(name)

    def pods(self) -> list[PodEntry]:
        """Every known pod, ready or not, in insertion order (a new list)."""
        return list(self._pods.values())

    def ready(self) -> list[PodEntry]:
        """The ready pods. The same list object is returned until ``version`` changes: do not mutate it."""
        if self._ready is None:
            self._ready = [entry for entry in self._pods.values() if entry.ready]
        return self._ready

    def timed(self, now: float) -> list[PodEntry]:
        """The ready pods whose own speed (``idle_latency_ms``) was sampled within ``SPEED_MEMORY_S`` of ``now``.

        Found without visiting the other pods (in no set order), unless ``now``
        is earlier than at a previous call: then every ready pod is looked at.
        """
        if now < self._sampled_at:
            return [entry for entry in self.ready()
                    if entry.idle_latency_ms is not None and now - entry.idle_latency_at <= SPEED_MEMORY_S]
        self._sampled_at = now
        sampled = self._sampled
        gone = [entry for entry in sampled if now - entry.idle_latency_at > SPEED_MEMORY_S]
        for entry in gone:
            del sampled[entry]
        return [entry for entry in sampled if entry.ready]

    def __len__(self) -> int:
        return len(self._pods)

    def _changed(self) -> None:
        self._ready = None
        self.version += 1

    def add_listener(self, listener: Callable[[PodEntry], object]) -> None:
        """Have ``listener(entry)`` called after each change to ``entry``'s load inputs.

        Load inputs are the fields :meth:`estimated_load` and the policies
        read (``in_flight``, the report, ``dispatched_since_report``, the
        latency and app-time averages, the failure counts); every method that
        writes them calls the listeners. Membership and readiness move
        ``version`` instead. A policy keeps its index over the table current
        with this, so a pick need not look at every pod.
        """
        self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[PodEntry], object]) -> None:
        """Stop calling ``listener``; a listener never added is ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- per request (hot path) ------------------------------------------

    def on_dispatch(self, entry: PodEntry, now: float) -> None:
        """A request was sent to ``entry``: counted in ``in_flight`` until :meth:`on_end`."""
        entry.in_flight += 1
        entry.dispatched_since_report += 1
        entry.requests += 1
        for listener in self._listeners:
            listener(entry)

    def on_end(self, entry: PodEntry) -> None:
        """A request to ``entry`` ended (response relayed, or failed); never below zero."""
        if entry.in_flight > 0:
            entry.in_flight -= 1
            for listener in self._listeners:
                listener(entry)

    def record_response(
        self, entry: PodEntry, now: float, latency_s: float, feedback: Feedback | None,
        alone: bool = False, ended: bool = False,
    ) -> None:
        """A response head came back from ``entry`` after ``latency_s``, with the pod's report if any.

        ``alone``: the request was sent while the pod had no other of ours in
        flight, so its latency is the pod's speed (``idle_latency_ms``, weighted
        like app times). ``in_flight`` is left alone: the request ends later
        (:meth:`on_end`), unless ``ended`` (the whole response came back): then
        this is also :meth:`on_end`, the listeners called once for both.
        """
        if ended and entry.in_flight > 0:
            entry.in_flight -= 1
        entry.consecutive_failures = 0
        alpha = self.ewma_alpha
        latency_ms = latency_s * 1000.0
        if entry.latency_ewma_ms is None:
            entry.latency_ewma_ms = latency_ms
        else:
            entry.latency_ewma_ms += alpha * (latency_ms - entry.latency_ewma_ms)
        if alone:
            if entry.idle_latency_ms is None or now - entry.idle_latency_at > SPEED_MEMORY_S:
                entry.idle_latency_ms = latency_ms
            else:
                entry.idle_latency_ms += self.app_alpha * (latency_ms - entry.idle_latency_ms)
            entry.idle_latency_at = now
            if self._pods.get(entry.name) is entry:  # not a removed pod's last responses
                self._sampled[entry] = None
        if feedback is None:
            # This request is no longer on its way to the pod.
            if entry.dispatched_since_report > 0:
                entry.dispatched_since_report -= 1
            for listener in self._listeners:
                listener(entry)
            return
        entry.reported_queue = feedback.queue_length
        entry.reported_in_flight = feedback.in_flight
        last_report = entry.reported_at
        entry.reported_at = now
        entry.reported_concurrency = feedback.concurrency
        entry.reported_state = feedback.state
        entry.dispatched_since_report = 0
        app_ms = feedback.app_ms
        if app_ms is not None:
            if entry.app_ewma_ms is None:
                entry.app_ewma_ms = app_ms
            elif last_report is not None and now - last_report > self._app_gap_s:
                # A report after a silence weighs by the time since the last one (past
                # _app_gap_s that weight is above app_alpha), so a pod sent one request a
                # second (a held pod's probe) is seen fast again at once.
                weight = 1.0 - math.exp((last_report - now) / self.app_memory_s)
                entry.app_ewma_ms += weight * (app_ms - entry.app_ewma_ms)
            else:
                entry.app_ewma_ms += self.app_alpha * (app_ms - entry.app_ewma_ms)
        for listener in self._listeners:
            listener(entry)

    def record_failure(self, entry: PodEntry, now: float) -> None:
        """A request to ``entry`` got no response (connection error, timeout); ``in_flight`` left alone."""
        if entry.dispatched_since_report > 0:
            entry.dispatched_since_report -= 1
        entry.failures += 1
        entry.consecutive_failures += 1
        entry.failed_at = now
        for listener in self._listeners:
            listener(entry)

    def on_response(
        self, entry: PodEntry, now: float, latency_s: float, feedback: Feedback | None
    ) -> None:
        """A request to ``entry`` ended with its response: :meth:`record_response` and :meth:`on_end`."""
        self.record_response(entry, now, latency_s, feedback)
        self.on_end(entry)

    def on_failure(self, entry: PodEntry, now: float) -> None:
        """A request to ``entry`` ended with no response: :meth:`record_failure` and :meth:`on_end`."""
        self.record_failure(entry, now)
        self.on_end(entry)

    def is_fresh(self, entry: PodEntry, now: float) -> bool:
        """True when the pod reported within ``stale_after_s`` of ``now``."""
        reported_at = entry.reported_at
        return reported_at is not None and now - reported_at <= self.stale_after_s

    def estimated_load(self, entry: PodEntry, now: float) -> float:
        """Requests the pod holds now (queued + executing), as best katyusha can tell.

        With a fresh report: ``reported_queue + reported_in_flight +
        dispatched_since_report``. The report already counts those of our
        requests that had reached the pod, so our own ``in_flight`` is not
        added to it (that would count them twice); only what we sent after the
        report is. Requests sent just before a report but still on the wire
        are in neither term, so the estimate is never below our own
        ``in_flight``, which the pod certainly holds or will. With no report,
        or one older than ``stale_after_s``: our own ``in_flight`` only (load
        from other replicas is then invisible). Within ``failure_hold_s`` of a
        failure (no response), each consecutive failure adds
        :data:`FAILURE_LOAD` (up to eight of them).
        """
        in_flight = entry.in_flight
        # reported_load()'s sum inline (a key is worked out about five times a request).
        reported_at = entry.reported_at
        if reported_at is None or now - reported_at > self.stale_after_s:
            load = in_flight
        else:
            load = entry.reported_queue + entry.reported_in_flight + entry.dispatched_since_report
            if load < in_flight:
                load = in_flight
        if entry.consecutive_failures and now - entry.failed_at < self.failure_hold_s:
            # A pod that fails at once looks idle; weigh each recent failure
            # like a queue of requests so picks go elsewhere until it answers.
            failures = entry.consecutive_failures
            load += FAILURE_LOAD * (failures if failures < 8 else 8)
        return float(load)

    def reported_load(self, entry: PodEntry, now: float) -> int | None:
        """Requests the pod holds by its report (``reported_queue + reported_in_flight``) and
        what was sent to it since (``dispatched_since_report``); None with no report or one older
        than ``stale_after_s``. Every client's requests that reached the pod are in it."""
        reported_at = entry.reported_at
        if reported_at is None or now - reported_at > self.stale_after_s:
            return None
        return entry.reported_queue + entry.reported_in_flight + entry.dispatched_since_report

    def load_changes_at(self, entry: PodEntry, now: float) -> float:
        """A time before which :meth:`estimated_load` of ``entry`` stays what it is at ``now``.

        With no event on the pod (listeners hear of those), the estimate
        changes only when a fresh report turns stale or a failure's weight
        lapses; this returns the earlier of those moments, a hair early so
        float rounding never makes it late, or ``inf`` when neither is ahead.
        At the returned time the estimate may not have changed yet: ask again.
        """
        due = math.inf
        reported_at = entry.reported_at
        if reported_at is not None and now - reported_at <= self.stale_after_s:
            due = reported_at + self.stale_after_s
        if entry.consecutive_failures and now - entry.failed_at < self.failure_hold_s:
            lapse = entry.failed_at + self.failure_hold_s
            if lapse < due:
                due = lapse
        if due == math.inf:
            return due
        return math.nextafter(math.nextafter(due, -math.inf), -math.inf)

    # -- introspection ---------------------------------------------------

    def snapshot(self, now: float) -> list[dict]:
        """JSON-able state of every pod, for the admin ``GET /pods``."""
        return [self.row(entry, now) for entry in self._pods.values()]

    def row(self, entry: PodEntry, now: float) -> dict:
        """JSON-able state of one pod."""
        return {
            "name": entry.name,
            "url": entry.url,
            "node": entry.node,
            "ready": entry.ready,
            "in_flight": entry.in_flight,
            "estimated_load": self.estimated_load(entry, now),
            "report_fresh": self.is_fresh(entry, now),
            "reported_queue": entry.reported_queue,
            "reported_in_flight": entry.reported_in_flight,
            "reported_concurrency": entry.reported_concurrency,
            "reported_state": entry.reported_state,
            "report_age_s": None if entry.reported_at is None else round(now - entry.reported_at, 6),
            "dispatched_since_report": entry.dispatched_since_report,
            "latency_ewma_ms": entry.latency_ewma_ms,
            "idle_latency_ms": entry.idle_latency_ms,
            "app_ewma_ms": entry.app_ewma_ms,
            "requests": entry.requests,
            "failures": entry.failures,
            "consecutive_failures": entry.consecutive_failures,
        }


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
