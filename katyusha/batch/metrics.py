"""The driver's Prometheus metrics, served on its admin port at ``/metrics``.

Names follow Benthos's (``input_received``, ``output_sent``,
``output_batch_sent``) under a ``batch_`` prefix, in an own registry.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Per attempt, through katyusha to the service and back.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.input_received = Counter("batch_input_received", "Records read from the input", registry=r)
        self.input_skipped = Counter(
            "batch_input_skipped", "Records read but already finished by an earlier run", registry=r)
        self.output_sent = Counter("batch_output_sent", "Rows written to the output", registry=r)
        self.output_batch_sent = Counter(
            "batch_output_batch_sent", "Batches written to the output", registry=r)
        self.requests = Counter("batch_requests", "HTTP attempts by status ('error': no answer)",
                                ["status"], registry=r)
        self.latency = Histogram("batch_request_duration_seconds", "Time of one HTTP attempt",
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.retries = Counter("batch_retries", "Attempts that will be tried again", ["reason"],
                               registry=r)
        self.dead_letters = Counter("batch_dead_letters", "Records written to the dead letter",
                                    registry=r)
        self.in_flight = Gauge("batch_in_flight", "HTTP requests in flight", registry=r)
        self.window = Gauge("batch_window", "The concurrency window (max-in-flight is its ceiling)",
                            registry=r)

    def serve(self, host: str, port: int):
        """Start the admin HTTP server in a thread; returns (server, url). Raises OSError."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        bound_host, bound_port = server.server_address[:2]
        return server, f"http://{bound_host}:{bound_port}"
