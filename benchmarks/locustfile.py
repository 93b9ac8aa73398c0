"""Locust load for a katyusha fleet (or any HTTP service).

    locust -f benchmarks/locustfile.py --headless -u 20 -r 5 -t 10s --host http://127.0.0.1:8080

Each simulated user sends GETs back to back with a short think time, so the
load follows the users count (closed loop); for an open-loop Poisson load
use benchmarks/loadgen.py. A response whose status is not 2xx counts as a
failure; Locust's summary prints latency percentiles per request name.
Set ``LOCUST_WAIT_MS`` to change the think time (default 0-20 ms). (Not a
``KATYUSHA_*`` name: ``katyusha serve`` refuses unknown ``KATYUSHA_*``
variables, and the same shell often starts both.)
"""

from __future__ import annotations

import os
import uuid

from locust import HttpUser, between, task

_WAIT_S = float(os.environ.get("LOCUST_WAIT_MS", "20")) / 1000.0


class FleetUser(HttpUser):
    wait_time = between(0, _WAIT_S)

    @task(9)
    def get(self) -> None:
        self.client.get("/", name="GET /")

    @task(1)
    def post(self) -> None:
        # A small body and a request id, as a client behind a gateway would send.
        self.client.post(
            "/echo",
            data=b"x" * 512,
            headers={"X-Request-Id": uuid.uuid4().hex, "Content-Type": "application/octet-stream"},
            name="POST /echo",
        )
