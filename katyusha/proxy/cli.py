"""``katyusha serve``: flags, settings, and the start of the proxy.

Every setting has a flag spelled as its key (``--katyusha-threads 4``,
``--request-timeout 5``); ``--pod`` repeats; ``--set KEY=VALUE`` sets any key;
``--config FILE`` reads a YAML file or ConfigMap. A bad setting exits with
status 2 and a message naming the key on stderr.
"""

from __future__ import annotations

import argparse
import sys

from katyusha.core.errors import ConfigError
from katyusha.proxy import config as settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="katyusha serve",
        description="Run the load-balancing proxy in front of a set of pods.",
        epilog="Precedence, low to high: --config file, environment variables, flags. "
        "See docs/katyusha.md for every setting.",
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="print the version, whether the hot path runs compiled, and exit")
    parser.add_argument("--config", metavar="FILE", help="YAML settings or a config-ikukantai ConfigMap")
    parser.add_argument(
        "--pod", action="append", default=None, metavar="URL[,name=N,node=M,admin=URL,concurrency=C]",
        help="a pod to balance over (repeat the flag for more)",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", dest="assignments",
        help="set any setting by key (repeatable)",
    )
    for setting in settings.SETTINGS:
        if setting.key == "pods":
            continue
        parser.add_argument(
            setting.flag, dest=_dest(setting.key), default=None, metavar="VALUE",
            # argparse formats help with %: a doc's own "5%" must not be read as a placeholder.
            help=f"{setting.doc} (env {setting.env})".replace("%", "%%"),
        )
    return parser


class _Version(argparse.Action):
    """``--version``: says which of the request path's modules are compiled (katyusha.compiled)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from katyusha import __version__
        from katyusha.compiled import describe

        sys.stdout.write(f"katyusha {__version__}: {describe()}\n")
        parser.exit()


def _dest(key: str) -> str:
    return "k_" + key.replace("-", "_")


def flags_from_args(args: argparse.Namespace) -> dict[str, object]:
    """The settings given on the command line, as raw key -> value. Raises ConfigError."""
    flags: dict[str, object] = {}
    for assignment in args.assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key.strip():
            raise ConfigError("--set", f"expected KEY=VALUE, got {assignment!r}")
        flags[key.strip()] = value
    for setting in settings.SETTINGS:
        if setting.key == "pods":
            continue
        value = getattr(args, _dest(setting.key))
        if value is not None:
            flags[setting.key] = value
    if args.pod:
        flags["pods"] = list(args.pod)
    return flags


def main(argv: list[str]) -> int:
    """Run ``katyusha serve`` with ``argv`` (without the ``serve`` word); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        cfg = settings.load(flags=flags_from_args(args), config_file=args.config)
    except ConfigError as exc:
        sys.stderr.write(f"katyusha: bad setting {exc}\n")
        return 2
    if cfg.discovery == "kubernetes":
        from katyusha.kubernetes.source import check_connection

        problem = check_connection(cfg.kubeconfig)
        if problem is not None:
            sys.stderr.write(f"katyusha: bad setting kubeconfig: {problem}\n")
            return 2
    if cfg.threads > 1:
        from katyusha.proxy.workers import run_workers

        return run_workers(cfg)
    from katyusha.proxy.runtime import run_single

    return run_single(cfg)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
