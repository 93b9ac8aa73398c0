"""The ``nonna`` command: parse settings, bind both ports, serve until SIGTERM."""

from __future__ import annotations

import argparse
import sys

from katyusha.core.errors import ConfigError
from katyusha.serving import App, bind_socket, run
from nonna.config import SETTINGS, env_name, load

# Shutdown waits for queued and in-flight requests, which the request timeout
# already bounds; the margin covers streaming the last bodies out.
_DRAIN_MARGIN = 5.0


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

    async def on_stop() -> None:
        nonna.sidecar.drain()

    return run(
        [App(nonna, data_sock), App(build_admin(nonna), admin_sock)],
        role="nonna",
        on_stop=on_stop,
        graceful_timeout=config.timeout + _DRAIN_MARGIN,
    )


if __name__ == "__main__":
    sys.exit(main())
