"""What goes into a service's pod set: pod specs and the one kind of change every source sends.

Every source of membership (static: flags and the config file; push: the
admin API's ``PUT``/``DELETE /pods``; later Kubernetes endpoints) describes
what it learnt as a :class:`PodChange` and hands it to one call per service,
:meth:`katyusha.core.service.ServiceBalancer.change_pods`, which answers with a
:class:`ChangeResult`. No source writes the load table itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from katyusha.core.loadtable import PodEntry


@dataclass(frozen=True, slots=True)
class PodSpec:
    """A pod katyusha may send requests to: its data URL, name, node and (optional) nonna admin URL.

    ``concurrency`` is the pod's container concurrency (0: unlimited; None:
    not given, learned from its ``Nonna-Concurrency`` reports instead).
    """

    name: str
    url: str
    node: str = ""
    admin: str | None = None
    concurrency: int | None = None

    def to_json(self) -> dict:
        return {"name": self.name, "url": self.url, "node": self.node, "admin": self.admin,
                "concurrency": self.concurrency}


@dataclass(frozen=True, slots=True)
class PodChange:
    """One change to a service's pod set, from any source.

    ``upsert`` pods are added, or updated in place (their counters kept; a
    concurrency given before stays when the new spec has none). ``remove``
    names leave picking at once; their requests in flight finish (drain).
    With ``replace`` the set becomes exactly ``upsert``: every other pod is
    removed. ``source`` names where the change came from (``static``,
    ``push``, ...), for views and logs only.
    """

    upsert: tuple[PodSpec, ...] = ()
    remove: tuple[str, ...] = ()
    replace: bool = False
    source: str = "push"


@dataclass(slots=True)
class ChangeResult:
    """What a :class:`PodChange` did.

    ``admitted``: tickets the change let out of the L1 queue (the caller wakes
    them). ``removed``: entries taken out of picking, with ``in_flight``
    requests still to finish. ``unknown``: names in ``remove`` that were not
    in the set.
    """

    admitted: list = field(default_factory=list)
    removed: list[PodEntry] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"removed": [entry.name for entry in self.removed], "unknown": list(self.unknown)}
