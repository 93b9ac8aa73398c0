"""The autoscaler's decision core with Knative KPA semantics, sans-IO: observations in, a pod count out.

One :class:`Autoscaler` serves one service. The caller feeds it observations
of the service's total load (:meth:`Autoscaler.record`: concurrency and
requests per second, as often as it likes) and asks for a decision every tick
(:meth:`Autoscaler.decide`, Knative ticks every 2 s). Demand arriving while no
pod is ready goes through :meth:`Autoscaler.poke`, which records it and
decides at once, so scaling from zero does not wait for the next tick.

The decision, as Knative's KPA makes it (see docs/autoscaler.md):

1. Observations fall into one-second buckets (several in one second are
   averaged). The stable value is the mean of the buckets in the stable
   window, the panic value the mean of those in the panic window. Seconds
   with no observation are left out of the mean rather than counted as zero,
   so a caller that samples every 2 s is not read as half the load; a window
   with no observation at all reads 0. (Knative's default linear average; its
   opt-in weighted-exponential average is not offered.)
2. ``desired = ceil(value / (target x target-percentage))`` for each window,
   each kept within the rate limits relative to the ready pods:
   ``[floor(ready / max-scale-down-rate), ceil(ready x max-scale-up-rate)]``.
   When demand exists, activation-scale is the floor.
3. Panic starts when ``desired-panic / ready >= panic-threshold``; in panic the
   count only rises (the highest desired seen during this panic is kept), and
   panic ends once a full stable window has passed without crossing the
   threshold again.
4. A scale-down delay, when set, keeps the highest count of that trailing time.
5. Scaling to zero (enabled, min-scale 0) happens only after the stable
   window holds no traffic and, from the first decision that wanted zero, the
   scale-to-zero grace period (or the pod retention period, if longer) has
   passed; until then one pod stays.
6. initial-scale holds during the first stable window after creation, then
   min-scale and max-scale bound the result.

Everything here is pure arithmetic over the inputs: time comes in as ``now``
(seconds), there is no clock and no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from katyusha.core.autoscaler_config import RPS, KPAConfig
from katyusha.core.errors import BadInput

# Averages are rounded before ceil so that 140 / (100 x 0.7) is 2 and not 3 by float noise.
_PRECISION = 6


@dataclass(frozen=True)
class Decision:
    """One autoscaling decision.

    ``desired`` is the pod count to run; ``stable_value`` and ``panic_value``
    the metric averaged over each window (fleet total); ``target`` the
    per-pod value aimed for. ``excess_burst_capacity`` is
    ``floor(ready x per-pod total target - target-burst-capacity - panic value)``
    (0 when target-burst-capacity is 0, -1 when it is -1, unlimited): negative
    means the fleet could not absorb the configured burst, so the load
    balancer should stay in the request path and queue. ``reason`` names the
    rule that settled ``desired``.
    """

    desired: int
    panic: bool
    stable_value: float
    panic_value: float
    excess_burst_capacity: float
    reason: str
    target: float

    @property
    def activator_in_path(self) -> bool:
        """True when the burst capacity is short and requests should pass through the queueing proxy."""
        return self.excess_burst_capacity < 0


class MetricWindow:
    """Per-second buckets of one metric, kept for ``horizon`` seconds; averages over trailing windows."""

    __slots__ = ("horizon", "_buckets")

    def __init__(self, horizon: float):
        self.horizon = horizon
        # second -> [sum, count]; insertion order is time order for in-order records.
        self._buckets: dict[int, list[float]] = {}

    def record(self, now: float, value: float) -> None:
        second = math.floor(now)
        bucket = self._buckets.get(second)
        if bucket is None:
            self._buckets[second] = [value, 1.0]
            self._prune(second)
        else:
            bucket[0] += value
            bucket[1] += 1.0

    def average(self, now: float, window: float) -> float:
        """Mean of the bucket means in the ``window`` seconds ending at ``now``; 0 when none."""
        newest = math.floor(now)
        oldest = newest - math.ceil(window)
        total = 0.0
        count = 0
        for second, (value_sum, value_count) in self._buckets.items():
            if oldest < second <= newest:
                total += value_sum / value_count
                count += 1
        return round(total / count, _PRECISION) if count else 0.0

    def _prune(self, newest: int) -> None:
        cutoff = newest - math.ceil(self.horizon)
        if next(iter(self._buckets)) > cutoff:
            return
        for second in [s for s in self._buckets if s <= cutoff]:
            del self._buckets[second]


class Autoscaler:
    """Decides one service's pod count from its observed load (KPA semantics, see the module doc)."""

    def __init__(self, config: KPAConfig, now: float, *, ready_pods: int = 0):
        """Start deciding at ``now``.

        With more than one pod already ready (the autoscaler restarted and has
        no history), it starts in panic holding ``ready_pods``, as Knative
        does, so the lost history does not read as an idle service.
        """
        if not isinstance(config, KPAConfig):
            raise TypeError("config must be a KPAConfig")
        self.config = config
        self.created_at = float(now)
        horizon = max(config.stable_window, config.panic_window)
        self._concurrency = MetricWindow(horizon)
        self._rps = MetricWindow(horizon)
        # Knative's panicTime: the last decision that crossed the threshold (None: not panicking).
        self._panic_at: float | None = now if ready_pods > 1 else None
        self._max_panic_pods = ready_pods if ready_pods > 1 else 0
        self._zero_since: float | None = None
        self._delayed: deque[tuple[float, int]] = deque()
        self.last: Decision | None = None

    def update(self, config: KPAConfig) -> None:
        """Apply new settings; the metric history is kept."""
        self.config = config
        horizon = max(config.stable_window, config.panic_window)
        self._concurrency.horizon = horizon
        self._rps.horizon = horizon

    @property
    def panicking(self) -> bool:
        return self._panic_at is not None

    def record(self, now: float, concurrency: float, rps: float = 0.0) -> None:
        """Add one observation of the service's total concurrency and requests per second.

        Raises BadInput when a value is negative or not a finite number.
        """
        for name, value in (("concurrency", concurrency), ("rps", rps)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise BadInput(f"{name} must be a finite number >= 0, got {value!r}")
        self._concurrency.record(now, float(concurrency))
        self._rps.record(now, float(rps))

    def poke(self, now: float, waiting: float = 1.0, ready_pods: int = 0) -> Decision:
        """Demand while no pod is ready: record ``waiting`` requests and decide at once.

        The waiting requests count as concurrency and as requests this second,
        so the decision asks for at least activation-scale pods (within
        max-scale). Raises BadInput for a negative ``waiting``.
        """
        self.record(now, waiting, waiting)
        return self.decide(now, ready_pods)

    def decide(self, now: float, ready_pods: int) -> Decision:
        """The pod count to run at ``now`` given ``ready_pods`` ready pods. Raises BadInput if negative."""
        if isinstance(ready_pods, bool) or not isinstance(ready_pods, int) or ready_pods < 0:
            raise BadInput(f"ready_pods must be an integer >= 0, got {ready_pods!r}")
        cfg = self.config
        window = self._rps if cfg.metric == RPS else self._concurrency
        stable = window.average(now, cfg.stable_window)
        panic_value = window.average(now, cfg.panic_window)
        target = cfg.target_value

        # With no pod ready, rates are taken relative to one, so scaling from zero can start.
        ready = max(1, ready_pods)
        max_up = math.ceil(round(cfg.max_scale_up_rate * ready, _PRECISION))
        max_down = math.floor(round(ready / cfg.max_scale_down_rate, _PRECISION))
        want_stable = math.ceil(round(stable / target, _PRECISION))
        want_panic = math.ceil(round(panic_value / target, _PRECISION))
        stable_pods = min(max(want_stable, max_down), max_up)
        panic_pods = min(max(want_panic, max_down), max_up)
        reason = "stable"
        if stable_pods > want_stable:
            reason = "max-scale-down-rate"
        elif stable_pods < want_stable:
            reason = "max-scale-up-rate"
        if cfg.activation_scale > 1:
            if want_stable > 0 and stable_pods < cfg.activation_scale:
                stable_pods, reason = cfg.activation_scale, "activation-scale"
            if want_panic > 0 and panic_pods < cfg.activation_scale:
                panic_pods = cfg.activation_scale

        desired = self._apply_panic(now, want_panic / ready >= cfg.panic_threshold, stable_pods, panic_pods)
        if self._panic_at is not None:
            reason = "panic"
        desired, reason = self._apply_scale_down_delay(now, desired, reason)
        desired, reason = self._apply_scale_to_zero(now, desired, ready_pods, reason)
        if now < self.created_at + cfg.stable_window and desired < cfg.initial_scale:
            desired, reason = cfg.initial_scale, "initial-scale"
        if desired < cfg.min_scale:
            desired, reason = cfg.min_scale, "min-scale"
        if cfg.max_scale > 0 and desired > cfg.max_scale:
            desired, reason = cfg.max_scale, "max-scale"

        decision = Decision(
            desired=desired,
            panic=self._panic_at is not None,
            stable_value=stable,
            panic_value=panic_value,
            excess_burst_capacity=self._excess_burst_capacity(ready_pods, panic_value),
            reason=reason,
            target=target,
        )
        self.last = decision
        return decision

    # -- the rules, in the order decide applies them ------------------------------------

    def _apply_panic(self, now: float, over_threshold: bool, stable_pods: int, panic_pods: int) -> int:
        if over_threshold:
            # Entering panic, or crossing again: the panic lasts a stable window from now.
            self._panic_at = now
        elif self._panic_at is not None and now > self._panic_at + self.config.stable_window:
            # The surge has had a whole stable window to reach the stable average.
            self._panic_at = None
            self._max_panic_pods = 0
        if self._panic_at is None:
            return stable_pods
        # The stable window can exceed the panic one after a burst; provision for the larger.
        self._max_panic_pods = max(self._max_panic_pods, stable_pods, panic_pods)
        return self._max_panic_pods

    def _apply_scale_down_delay(self, now: float, desired: int, reason: str) -> tuple[int, str]:
        delay = self.config.scale_down_delay
        if delay <= 0:
            self._delayed.clear()
            return desired, reason
        self._delayed.append((now, desired))
        while self._delayed and self._delayed[0][0] <= now - delay:
            self._delayed.popleft()
        held = max(count for _, count in self._delayed)
        return (held, "scale-down-delay") if held > desired else (desired, reason)

    def _apply_scale_to_zero(self, now: float, desired: int, ready_pods: int, reason: str) -> tuple[int, str]:
        cfg = self.config
        if desired > 0:
            self._zero_since = None
            return desired, reason
        if not cfg.enable_scale_to_zero:
            return 1, "scale-to-zero disabled"
        if self._zero_since is None:
            self._zero_since = now
        hold = max(cfg.scale_to_zero_grace_period, cfg.scale_to_zero_pod_retention_period)
        # A new service has had no chance to see traffic; its first stable window does not count as idle.
        earliest = max(self._zero_since, self.created_at + cfg.stable_window) + hold
        if ready_pods > 0 and now < earliest:
            return 1, "scale-to-zero grace"
        return 0, "scale to zero"

    def _excess_burst_capacity(self, ready_pods: int, panic_value: float) -> float:
        burst = self.config.target_burst_capacity
        if burst == 0:
            return 0.0
        if burst < 0:
            return -1.0
        return float(math.floor(ready_pods * self.config.total_target - burst - panic_value))
