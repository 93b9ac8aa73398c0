"""Where the fleet's processes answer: what the control plane needs to know about the processes it steers.

A :class:`Processes` lists katyusha's replicas (admin URLs) and every pod's
sim-backend and nonna addresses. ``katyusha fleet up`` implements it from the
children it runs (katyusha.fleet.runner). :class:`StaticProcesses` reads it
from a processes file, for a control plane that attaches to processes started
by something else (``katyusha control --processes FILE``: a compose file's
containers, addresses by service name). Its format is the process part of
the fleet's state file, so a state file is a valid processes file::

    katyusha:                              # the replicas, by admin URL
      - {name: katyusha-0, admin: http://katyusha:9080, data: http://katyusha:8080}
    pods:                                  # every pod of the fleet file, by name
      - name: pod-1
        sim: {admin: http://pod-1-sim:9201}
        nonna: {data: http://pod-1:9101, admin: http://pod-1:9102}

Nodes, services and container concurrency come from the fleet file. Errors
are :class:`~katyusha.core.errors.ConfigError` naming the field path
(``pods[2].nonna.data``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from katyusha.config_values import parse_url
from katyusha.control.membership import BalancerRef, PodAddress
from katyusha.core.errors import ConfigError

# Keys of a state file that a processes file may carry; only the addresses are read.
_TOP_KEYS = {"katyusha", "pods", "url", "policy", "runner_pid", "fleet_file", "topology", "autoscaler", "control",
             "admin_token_file"}
_PROCESS_KEYS = {"name", "role", "data", "admin", "pid", "restarts"}
_POD_KEYS = {"name", "node", "group", "params", "sim", "nonna"}


class Processes(Protocol):
    """The processes a control plane steers; every method is read afresh each time it is needed."""

    def balancers(self) -> list[BalancerRef]:
        """katyusha's replicas to write to (those known to be down are left out)."""
        ...

    def pods(self) -> list[PodAddress]:
        """Every pod of the fleet, in fleet order, with its current addresses."""
        ...

    def pod_up(self, name: str) -> bool | None:
        """Whether both of the pod's processes run; None when not known here (the control plane asks nonna)."""
        ...

    def document(self) -> dict:
        """The processes as the state file records them (``katyusha``, ``pods``, ``url``), for status views."""
        ...


class StaticProcesses:
    """Processes at fixed addresses, read from a processes file (see the module doc)."""

    def __init__(self, document: Any, pods: Sequence[Any], *, balancer_service: Mapping[str, str | None] | None = None):
        """``pods`` are the fleet file's pods (name, node, service, params.concurrency), in fleet order.

        ``balancer_service`` maps a fleet service to the katyusha service its
        pods join (missing: katyusha's default service). Raises ConfigError
        naming the field path.
        """
        doc = _mapping(document, "processes", _TOP_KEYS)
        routes = balancer_service or {}
        self._balancers: list[BalancerRef] = []
        self._data: list[str | None] = []
        for i, item in enumerate(_list(doc.get("katyusha"), "katyusha", at_least=1)):
            entry = _mapping(item, f"katyusha[{i}]", _PROCESS_KEYS)
            name = _name(entry, f"katyusha[{i}]", f"katyusha-{i}")
            self._balancers.append(BalancerRef(name, parse_url(f"katyusha[{i}].admin", entry.get("admin"))))
            self._data.append(_optional_url(entry.get("data"), f"katyusha[{i}].data"))
        listed: dict[str, tuple[int, dict]] = {}
        for i, item in enumerate(_list(doc.get("pods"), "pods", at_least=1)):
            entry = _mapping(item, f"pods[{i}]", _POD_KEYS)
            name = _name(entry, f"pods[{i}]", None)
            if name in listed:
                raise ConfigError(f"pods[{i}].name", f"{name!r} is listed twice")
            listed[name] = (i, entry)
        known = [pod.name for pod in pods]
        for name, (i, _) in listed.items():
            if name not in known:
                raise ConfigError(f"pods[{i}].name", f"no pod {name!r} in the fleet file (pods: {', '.join(known)})")
        missing = [name for name in known if name not in listed]
        if missing:
            raise ConfigError("pods", f"the fleet file's pod(s) {', '.join(missing)} have no addresses here")
        self._pods = []
        self._document = {"katyusha": [], "pods": [], "url": self._data[0] if self._data else None}
        for ref, data in zip(self._balancers, self._data, strict=True):
            self._document["katyusha"].append({"name": ref.name, "data": data, "admin": ref.admin, "pid": None})
        for pod in pods:
            i, entry = listed[pod.name]
            sim = _mapping(entry.get("sim"), f"pods[{i}].sim", _PROCESS_KEYS)
            nonna = _mapping(entry.get("nonna"), f"pods[{i}].nonna", _PROCESS_KEYS)
            address = PodAddress(
                pod.name, pod.node, pod.service,
                sim_admin=parse_url(f"pods[{i}].sim.admin", sim.get("admin")),
                nonna_url=parse_url(f"pods[{i}].nonna.data", nonna.get("data")),
                nonna_admin=parse_url(f"pods[{i}].nonna.admin", nonna.get("admin")),
                concurrency=pod.params.concurrency,
                balancer_service=routes.get(pod.service),
            )  # fmt: skip
            self._pods.append(address)
            self._document["pods"].append({
                "name": pod.name, "node": pod.node,
                "sim": {"name": f"{pod.name}/sim", "data": _optional_url(sim.get("data"), f"pods[{i}].sim.data"),
                        "admin": address.sim_admin, "pid": None},
                "nonna": {"name": f"{pod.name}/nonna", "data": address.nonna_url, "admin": address.nonna_admin,
                          "pid": None},
            })  # fmt: skip

    def balancers(self) -> list[BalancerRef]:
        return list(self._balancers)

    def pods(self) -> list[PodAddress]:
        return list(self._pods)

    def pod_up(self, name: str) -> bool | None:
        return None

    def document(self) -> dict:
        return self._document


def _mapping(value: Any, where: str, allowed: set[str]) -> dict:
    if not isinstance(value, dict):
        raise ConfigError(where, f"must be a mapping, not {type(value).__name__}")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}", f"unknown field (allowed: {', '.join(sorted(allowed))})")
    return value


def _list(value: Any, where: str, *, at_least: int) -> list:
    if not isinstance(value, list) or len(value) < at_least:
        raise ConfigError(where, f"must be a list of at least {at_least} entry, not {value!r}")
    return value


def _name(item: Any, where: str, default: str | None) -> str:
    name = item.get("name", default) if isinstance(item, dict) else None
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{where}.name", f"must be a non-empty string, not {name!r}")
    return name


def _optional_url(value: Any, where: str) -> str | None:
    return None if value is None else parse_url(where, value)
