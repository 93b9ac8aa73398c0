"""The host the overheads run on: a few cores that every request's work outside the app shares.

The overheads of a scenario (``overhead.hop``, ``pod``, ``release``,
``pod-release``) are CPU work: parsing, event loops, loopback writes and
reads, in the generator, katyusha and nonna. Measured one request at a time
they are a constant; on a loaded machine each waits for a core, so they grow
with the machine's load. A scenario's ``machine`` section names the cores and
the CPU time a request costs outside the app; the simulation then stretches
every overhead by how busy those cores were over the last window of simulated
time (docs/simulator.md, "Overheads").

The stretch is an M/M/c queue's: the mean time in the system over the mean
service time, ``1 + C(c, c*rho) / (c * (1 - rho))``, with ``C`` Erlang's C
formula, ``c`` the cores and ``rho`` their utilisation: ``1 / (1 - rho)`` on
one core, ``1 / (1 - rho**2)`` on two. A mean, not a draw: the simulation
stays deterministic and the overheads stay one figure each, as without the
section.
"""

from __future__ import annotations

from dataclasses import dataclass

# The utilisation is held here at most: at and beyond 1 an M/M/c queue has no mean (a live
# machine that busy falls behind for as long as the load lasts, which a window's mean cannot say).
MAX_UTILISATION = 0.95


def erlang_c(servers: int, offered: float) -> float:
    """The probability that an arrival waits in an M/M/``servers`` queue offered ``offered``
    Erlangs (``offered < servers``): Erlang's B by its recursion, then C from B."""
    blocking = 1.0
    for k in range(1, servers + 1):
        blocking = offered * blocking / (k + offered * blocking)
    rho = offered / servers
    return blocking / (1.0 - rho * (1.0 - blocking))


def stretch_at(cores: int, utilisation: float) -> float:
    """How much longer a piece of CPU work takes than on idle cores, at ``utilisation`` of ``cores``
    (held at :data:`MAX_UTILISATION`): 1 at 0, ``1 / (1 - rho**2)`` on two cores."""
    rho = min(max(utilisation, 0.0), MAX_UTILISATION)
    if rho == 0.0:
        return 1.0
    return 1.0 + erlang_c(cores, cores * rho) / (cores * (1.0 - rho))


@dataclass(frozen=True)
class Machine:
    """A scenario's ``machine`` section: the host's cores and what a request costs on them."""

    cores: int
    cpu_per_request_s: float  # CPU seconds a request costs outside the app, every process together
    background: float = 0.0  # cores busy with other work, whatever the load
    window_s: float = 1.0  # the arrival rate (so the cores' use) is measured over this much simulated time

    def utilisation(self, rate: float) -> float:
        """The cores' utilisation at ``rate`` requests a second (not held below 1)."""
        return (self.background + rate * self.cpu_per_request_s) / self.cores

    def stretch(self, rate: float) -> float:
        """The factor on every overhead at ``rate`` requests a second (:func:`stretch_at`)."""
        return stretch_at(self.cores, self.utilisation(rate))
