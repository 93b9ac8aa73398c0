"""The ``nonna`` command: parse settings, bind both ports, serve until SIGTERM."""

from __future__ import annotations

import argparse
import sys

from katyusha.core.errors import ConfigError
from katyusha.http import tls
from katyusha.http.server import LeanHTTPProtocol
from katyusha.serving import App, bind_socket, run
from nonna.config import SETTINGS, env_name, load


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nonna",
        description="The sidecar in front of one pod: an L2 queue bounded by container "
                    "concurrency, piggybacking the pod's load on every response.",
    )
    for key, (_, _, doc) in SETTINGS.items():
        # Values stay strings here: config.validate parses every source alike.
        parser.add_argument("--" + key, dest=key, default=None, metavar="VALUE",
                            help=f"{doc} (env {env_name(key)})")
    parser.add_argument("--config", default=None, metavar="FILE",
                        help="YAML file of settings (env NONNA_CONFIG)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run nonna; returns the exit status (2 for a bad setting, naming it)."""
    args = vars(_parser().parse_args(argv))
    config_file = args.pop("config")
    flags = {key: value for key, value in args.items() if value is not None}
    try:
        config = load(flags=flags, config_file=config_file)
    except ConfigError as exc:
        print(f"nonna: {exc}", file=sys.stderr)
        return 2
    try:
        data_sock = bind_socket(config.host, config.port)
        admin_sock = bind_socket(config.host, config.admin_port)
    except OSError as exc:
        print(f"nonna: {exc.strerror}", file=sys.stderr)
        return 1

    from nonna.admin import build_admin
    from nonna.proxy import Nonna

    nonna = Nonna(config)

    # The data port runs katyusha's HTTP server: the same limits, TLS and upgrades.
    context = tls.server_context(config.tls_cert, config.tls_key)
    data = App(nonna, data_sock, http=LeanHTTPProtocol.with_limits(config.limits, context),
               tls=context,
               keepalive_timeout=config.keepalive_timeout)
    return run(
        [data, App(build_admin(nonna), admin_sock)],
        role="nonna",
        on_drain=nonna.sidecar.drain,
        drain_grace=config.drain_grace,
        graceful_timeout=config.effective_shutdown_timeout,
    )


if __name__ == "__main__":
    sys.exit(main())
