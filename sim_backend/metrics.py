"""Prometheus exposition of the emulated pod, read from the pod at scrape time.

A collector on its own registry (never the process-global one), so several
pods in one test process or one import never share series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from katyusha.core.podstate import PodState
from sim_backend.monitor import Monitor, modelled
from sim_backend.pod import Pod

LABELS = ["pod", "node"]


class PodCollector(Collector):
    def __init__(self, pod: Pod, monitor: Monitor):
        self.pod = pod
        self.monitor = monitor

    def collect(self):
        pod = self.pod
        ids = [pod.name, pod.node]
        usage = modelled(pod, self.monitor.profile)

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=LABELS)
            family.add_metric(ids, value)
            return family

        yield gauge("sim_backend_cpu_cores", "Modelled CPU use of the pod, in cores.", usage["cpu_cores"])
        yield gauge("sim_backend_ram_bytes", "Modelled memory of the pod.", usage["ram_mb"] * 2**20)
        yield gauge("sim_backend_disk_bytes", "Image bytes on the node's disk.", usage["disk_mb"] * 2**20)
        yield gauge("sim_backend_in_flight", "Requests executing now.", pod.machine.in_flight)
        yield gauge("sim_backend_speed", "Effective speed multiplier now.", pod.effective_speed())
        state = GaugeMetricFamily(
            "sim_backend_state", "1 for the pod's current state, 0 for the others.", labels=[*LABELS, "state"]
        )
        current = pod.state
        for s in PodState:
            state.add_metric([*ids, s.value], 1.0 if s is current else 0.0)
        yield state
        transitioning = gauge(
            "sim_backend_in_transition", "1 while a timed transition runs.", float(pod.machine.in_transition)
        )
        yield transitioning

        c = pod.counters
        requests = CounterMetricFamily(
            "sim_backend_requests", "Requests received, by outcome.", labels=[*LABELS, "outcome"]
        )
        requests.add_metric([*ids, "served"], c.served)
        requests.add_metric([*ids, "rejected"], c.rejected)
        yield requests

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=LABELS)
            family.add_metric(ids, value)
            return family

        yield counter("sim_backend_received_bytes", "Request body bytes read.", c.bytes_in)
        yield counter("sim_backend_service_seconds", "Seconds spent serving requests.", c.service_s)
        yield counter("sim_backend_cold_starts", "Container starts (warmdisk -> warm).", pod.machine.cold_starts)
        yield counter("sim_backend_image_pulls", "Image pulls (cold -> warmdisk).", pod.machine.image_pulls)


def make_registry(pod: Pod, monitor: Monitor) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PodCollector(pod, monitor))
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
