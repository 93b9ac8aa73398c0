"""EndpointSlices in, one service's pod set out: which pods serve, which drain.

Kubernetes publishes a Service's pods as EndpointSlice objects
(``discovery.k8s.io/v1``), one Service often spread over several slices. This
module turns the slices of one Service, as plain JSON documents, into the pod
set katyusha balances over, and two such sets into the change to apply. It
does no I/O: the watch that fetches the slices lives in katyusha.kubernetes.

Rules (the API reference's, and kube-proxy's for merging):

- An endpoint is in the set when ``conditions.ready`` is true (a missing
  ``ready`` counts as true, as the API says). A terminating endpoint
  (``conditions.terminating``) drains: katyusha stops picking it and lets its
  requests finish. Any other endpoint (starting, failing readiness) is out.
- The pod's URL is the endpoint's first address and the slice's port: the
  port named ``port`` (a string), the port numbered ``port`` (an int), or the
  slice's only port (None). A slice without that port is skipped and named in
  ``problems``; cluster data never raises here, so one odd slice cannot stop
  the watch.
- The pod's name is its ``targetRef`` name (the Pod), else ``address:port``;
  ``nodeName`` and ``zone`` are kept. The same pod in two slices (an endpoint
  moving between slices, or dual-stack) is kept once: the ready copy wins,
  then the terminating one, then the first by slice name.
- Everything is sorted by pod name, so the same slices give the same answer
  in every replica.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from katyusha.core.membership import PodChange, PodSpec

SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# Which copy of a pod seen in two slices wins: higher rank first.
_READY, _TERMINATING, _OUT = 2, 1, 0
_FAMILY_ORDER = {"IPv4": 0, "IPv6": 1, "FQDN": 2}


@dataclass(frozen=True)
class EndpointPod:
    """One pod of a Service as its EndpointSlice shows it.

    ``ready``: in the pod set. ``terminating``: on its way out, to drain.
    ``concurrency``: its container concurrency when known (0: unlimited).
    """

    name: str
    url: str
    node: str | None = None
    zone: str | None = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    admin: str | None = None
    concurrency: int | None = None



@dataclass(frozen=True)
class ServiceEndpoints:
    """One Service's pods: ``ready`` ones serve, ``draining`` ones are terminating (both sorted by name)."""

    service: str
    ready: tuple[EndpointPod, ...] = ()
    draining: tuple[EndpointPod, ...] = ()
    problems: tuple[str, ...] = ()

    def ready_names(self) -> tuple[str, ...]:
        return tuple(pod.name for pod in self.ready)



def service_endpoints(
    service: str,
    slices: Iterable[Mapping[str, Any]],
    *,
    port: str | int | None = None,
    admin_port: str | int | None = None,
    scheme: str = "http",
    concurrency: int | None = None,
) -> ServiceEndpoints:
    """The pod set of ``service`` ("namespace/name") from its EndpointSlice documents.

    ``port`` picks the data port in each slice (name, number, or None for the
    only one); ``admin_port`` the port of the pod's admin URL (nonna's), if
    any. ``concurrency`` is given to every pod. Slices of other Services
    (by their ``kubernetes.io/service-name`` label) are ignored. Deterministic;
    never raises on odd slice contents (they go to ``problems``).
    """
    namespace, _, name = service.rpartition("/")
    chosen: dict[str, tuple[tuple, EndpointPod]] = {}
    problems: list[str] = []
    ordered = sorted(
        (s for s in slices if isinstance(s, Mapping)),
        key=lambda s: str(_meta(s).get("name", "")),
    )
    for slice_ in ordered:
        meta = _meta(slice_)
        labels = meta.get("labels") if isinstance(meta.get("labels"), Mapping) else {}
        if labels.get(SERVICE_NAME_LABEL) != name:
            continue
        if namespace and meta.get("namespace") not in (None, namespace):
            continue
        slice_name = str(meta.get("name", "?"))
        family = slice_.get("addressType", "IPv4")
        data_port, why = _pick_port(slice_.get("ports"), port)
        if data_port is None:
            problems.append(f"EndpointSlice {slice_name}: {why}")
            continue
        admin_number = None
        if admin_port is not None:
            admin_number, why = _pick_port(slice_.get("ports"), admin_port)
            if admin_number is None:
                problems.append(f"EndpointSlice {slice_name}: admin {why}")
        endpoints = slice_.get("endpoints") or []
        if not isinstance(endpoints, list):
            problems.append(f"EndpointSlice {slice_name}: endpoints is not a list")
            continue
        for position, endpoint in enumerate(endpoints):
            pod = _pod(endpoint, family, data_port, admin_number, scheme, concurrency)
            if pod is None:
                problems.append(f"EndpointSlice {slice_name}: endpoint {position} has no address")
                continue
            rank = _READY if pod.ready else _TERMINATING if pod.terminating else _OUT
            key = (-rank, _FAMILY_ORDER.get(family, 3), slice_name, position)
            held = chosen.get(pod.name)
            if held is None or key < held[0]:
                chosen[pod.name] = (key, pod)
    pods = [chosen[pod_name][1] for pod_name in sorted(chosen)]
    return ServiceEndpoints(
        service=service,
        ready=tuple(pod for pod in pods if pod.ready),
        draining=tuple(pod for pod in pods if not pod.ready and pod.terminating),
        problems=tuple(problems),
    )


def pod_change(endpoints: ServiceEndpoints, source: str = "kubernetes") -> PodChange:
    """The change that makes a service's pod set exactly ``endpoints``' ready pods.

    Every other pod (terminating, gone, no longer ready) is removed: it
    leaves picking at once and its requests in flight finish, which is how
    katyusha drains. Pods that stay keep their counters.
    """
    specs = tuple(
        PodSpec(name=pod.name, url=pod.url, node=pod.node or "", admin=pod.admin, concurrency=pod.concurrency)
        for pod in endpoints.ready
    )
    return PodChange(upsert=specs, replace=True, source=source)


def _meta(document: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = document.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _pick_port(ports: Any, wanted: str | int | None) -> tuple[int | None, str]:
    """The port number in a slice's ``ports`` for ``wanted``; (None, why) when there is none."""
    if not isinstance(ports, list) or not ports:
        return None, "has no ports"
    tcp = [p for p in ports if isinstance(p, Mapping) and p.get("protocol", "TCP") == "TCP"]
    if wanted is None:
        if len(tcp) != 1:
            names = sorted(str(p.get("name") or p.get("port")) for p in tcp)
            return None, f"has {len(tcp)} TCP ports ({', '.join(names)}); name the one to use"
        match = tcp[0]
    elif isinstance(wanted, str):
        match = next((p for p in tcp if p.get("name") == wanted), None)
    else:
        match = next((p for p in tcp if p.get("port") == wanted), None)
    number = match.get("port") if match is not None else None
    if not isinstance(number, int) or isinstance(number, bool) or not 0 < number < 65536:
        return None, f"has no TCP port {wanted!r}"
    return number, ""


def _pod(
    endpoint: Any, family: str, port: int, admin_port: int | None, scheme: str, concurrency: int | None
) -> EndpointPod | None:
    if not isinstance(endpoint, Mapping):
        return None
    addresses = endpoint.get("addresses")
    if not isinstance(addresses, list) or not addresses or not isinstance(addresses[0], str):
        return None
    address = addresses[0]
    host = f"[{address}]" if family == "IPv6" or ":" in address else address
    conditions = endpoint.get("conditions") if isinstance(endpoint.get("conditions"), Mapping) else {}
    ready = conditions.get("ready") is not False  # nil means ready (API reference)
    terminating = conditions.get("terminating") is True  # nil means not terminating
    serving = conditions.get("serving", ready) is not False  # nil defers to ready
    target = endpoint.get("targetRef") if isinstance(endpoint.get("targetRef"), Mapping) else {}
    name = target.get("name") if isinstance(target.get("name"), str) and target.get("name") else None
    node = endpoint.get("nodeName") if isinstance(endpoint.get("nodeName"), str) else None
    zone = endpoint.get("zone") if isinstance(endpoint.get("zone"), str) else None
    return EndpointPod(
        name=name or f"{host}:{port}",
        url=f"{scheme}://{host}:{port}",
        node=node,
        zone=zone,
        ready=ready and not terminating,
        serving=serving,
        terminating=terminating,
        admin=f"http://{host}:{admin_port}" if admin_port is not None else None,
        concurrency=concurrency,
    )
