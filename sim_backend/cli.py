"""``sim-backend``: run one emulated pod, its application on the data port and its admin API."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from katyusha.core.errors import ConfigError
from katyusha.serving import App, bind_socket, run
from sim_backend.admin import build_admin_app
from sim_backend.config import load_settings
from sim_backend.data import DataApp
from sim_backend.monitor import Monitor
from sim_backend.pod import Pod

ROLE = "sim-backend"


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until SIGTERM (exit 0); a bad setting or an unusable port exits 2 with a message."""
    try:
        settings = load_settings(argv, os.environ)
    except ConfigError as exc:
        sys.stderr.write(f"{ROLE}: error: {exc}\n")
        return 2
    try:
        data_sock = bind_socket(settings.host, settings.port)
        admin_sock = bind_socket(settings.host, settings.admin_port)
    except OSError as exc:
        sys.stderr.write(f"{ROLE}: error: {exc.strerror or exc}\n")
        return 2
    pod = Pod(settings)
    monitor = Monitor(pod, period_s=settings.monitor_period, window_s=settings.monitor_window)
    apps = [
        App(DataApp(pod), data_sock),
        App(build_admin_app(pod, monitor, settings.admin_token), admin_sock),
    ]
    return run(apps, role=ROLE, graceful_timeout=5.0)


if __name__ == "__main__":
    raise SystemExit(main())
