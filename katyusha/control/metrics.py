"""Prometheus exposition of the live autoscaler, read from the loop and its actuator at scrape time.

A collector on its own registry (never the process-global one). Series, each
labelled with its ``service`` (``default`` for katyusha's default service):
desired and actual pods, panic mode, the observed concurrency and requests
per second; and, for the whole fleet, cold starts with their durations.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

# Cold starts run from a fraction of a second (image on disk) to minutes (a big pull).
COLD_START_BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ColdStarts:
    """Counts and a histogram of cold-start durations (wake asked -> pod serving)."""

    def __init__(self, buckets: tuple[float, ...] = COLD_START_BUCKETS):
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.total = 0
        self.sum_s = 0.0
        self.failed = 0
        self.last_s: float | None = None

    def observe(self, seconds: float) -> None:
        self.total += 1
        self.sum_s += seconds
        self.last_s = seconds
        for i, bound in enumerate(self.buckets):
            if seconds <= bound:
                self.counts[i] += 1


# Per service: (series, help, the part of the service's status view, the field in it).
_SERVICE_SERIES = (
    ("katyusha_autoscaler_desired_pods", "Pods the autoscaler last decided on.", None, "desired"),
    ("katyusha_autoscaler_actual_pods", "Pods serving (in katyusha's set).", "pods", "serving"),
    ("katyusha_autoscaler_starting_pods", "Pods being woken (cold start running).", "pods", "waking"),
    ("katyusha_autoscaler_retiring_pods", "Pods being drained and put down.", "pods", "retiring"),
    ("katyusha_autoscaler_ready_pods", "Ready pods as katyusha reports them.", None, "ready_pods"),
    ("katyusha_autoscaler_panic", "1 while the autoscaler is in panic mode.", "decision", "panic"),
    ("katyusha_autoscaler_observed_concurrency", "Requests waiting or in flight at the last read.",
     "observed", "concurrency"),
    ("katyusha_autoscaler_observed_rps", "Requests per second the pods reported at the last read.",
     "observed", "rps"),
    ("katyusha_autoscaler_stable_value", "Metric averaged over the stable window.", "decision", "stable_value"),
    ("katyusha_autoscaler_panic_value", "Metric averaged over the panic window.", "decision", "panic_value"),
)


class AutoscalerCollector(Collector):
    """Reads ``status()`` (the loop's view) and the cold-start record when scraped."""

    def __init__(self, status: Callable[[], dict], cold: ColdStarts):
        self.status = status
        self.cold = cold

    def collect(self):
        doc = self.status()
        services = doc.get("services") or {}
        for name, help_text, section, field in _SERVICE_SERIES:
            family = GaugeMetricFamily(name, help_text, labels=["service"])
            for service, view in services.items():
                part = view if section is None else (view.get(section) or {})
                family.add_metric([service], float(part.get(field) or 0))
            yield family
        errors = CounterMetricFamily("katyusha_autoscaler_read_errors", "Demand reads that failed.")
        errors.add_metric([], doc.get("errors", 0))
        yield errors

        cold = self.cold
        starts = CounterMetricFamily("katyusha_autoscaler_cold_starts", "Pods woken to serving.")
        starts.add_metric([], cold.total)
        yield starts
        failed = CounterMetricFamily("katyusha_autoscaler_cold_start_failures", "Wakes that did not reach serving.")
        failed.add_metric([], cold.failed)
        yield failed
        histogram = HistogramMetricFamily(
            "katyusha_autoscaler_cold_start_seconds", "From the wake order to the pod in katyusha's set."
        )
        cumulative = [(f"{b:g}", c) for b, c in zip(cold.buckets, cold.counts, strict=True)]
        histogram.add_metric([], [*cumulative, ("+Inf", cold.total)], cold.sum_s)
        yield histogram


def make_registry(status: Callable[[], dict], cold: ColdStarts) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AutoscalerCollector(status, cold))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
