"""The ``katyusha`` console script: ``katyusha serve``, ``fleet ...``, ``control``, ``batch`` and ``sim``."""

from __future__ import annotations

import sys

USAGE = """usage: katyusha COMMAND [ARGS]

commands:
  serve     run the load-balancing proxy in front of a set of pods
  fleet     run and steer a local fleet (katyusha fleet up|status|pod)
  control   run a fleet's control plane on its own, attached to running processes
  batch     send every record of a table or CSV file through katyusha to a service
  sim       run a scenario on simulated time: the same core objects, a thousand nodes (docs/simulator.md)

run `katyusha COMMAND --help` for the flags of one command.
"""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command == "serve":
        from katyusha.proxy.cli import main as serve_main

        return serve_main(rest)
    if command == "fleet":
        from katyusha.fleet.cli import main as fleet_main

        return fleet_main(rest)
    if command == "control":
        from katyusha.control.cli import main as control_main

        return control_main(rest)
    if command == "batch":
        from katyusha.batch.cli import main as batch_main

        return batch_main(rest)
    if command == "sim":
        from katyusha.sim.cli import main as sim_main

        return sim_main(rest)
    sys.stderr.write(f"katyusha: unknown command {command!r}\n\n{USAGE}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
