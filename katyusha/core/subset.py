"""Which pods one katyusha replica balances over, when several replicas share a Service's pods.

Knative's activator gives each activator a slice of a revision's pods when
the container concurrency is finite: with every activator sending to every
pod, each would count only its own requests and together they would overrun
the pod's concurrency. It sorts the pods by address and cuts the list in
equal slices by the activator's index, so one new pod shifts every slice
after it, and a replaced activator (a new index) reshuffles them all.

Here the owner of each pod is chosen by rendezvous hashing with bounded
loads, keyed by the replica's name rather than its index:

- each pod ranks the replicas by a hash of (replica, pod) and goes to the
  first one in its ranking that still has room, where room keeps every
  replica's count at ``floor`` or ``ceil`` of pods / replicas; pods are
  placed in the order of their own hash, so the result depends only on the
  two sets of names, never on the order they came in;
- so every pod has exactly one owner, the counts differ by at most one, and
  a pod that comes or goes moves few others (tests/test_k8s_core.py bounds
  both, and the moves when a replica is replaced);
- a replica left with no pod (fewer pods than replicas) borrows the pod that
  ranks it highest, as Knative's activators share pods round robin then;
- a replica that is not in the replica list (it is not ready yet, or the list
  is stale) or is alone takes every pod, as Knative's does at index -1.

The hash is blake2b, so every replica computes the same answer.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from katyusha.core.endpoints import ServiceEndpoints


@dataclass(frozen=True)
class Subset:
    """One replica's share: ``owned`` pods plus ``borrowed`` ones (shared with their owner), sorted.

    ``replicas`` is how many replicas shared the pods (1 when this one took all).
    """

    owned: tuple[str, ...]
    borrowed: tuple[str, ...] = ()
    replicas: int = 1

    @property
    def pods(self) -> tuple[str, ...]:
        return tuple(sorted(self.owned + self.borrowed))


def _score(replica: str, pod: str) -> int:
    digest = hashlib.blake2b(f"{replica}\x00{pod}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _pod_order(pod: str) -> bytes:
    return hashlib.blake2b(pod.encode(), digest_size=8).digest()


def assign(pods: Iterable[str], replicas: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Every replica's owned pods (sorted), each pod owned by exactly one replica.

    Every replica owns ``floor`` or ``ceil`` of ``len(pods) / len(replicas)``.
    Duplicate names count once. With no replica, the answer is empty.
    """
    pod_names = sorted(set(pods), key=lambda p: (_pod_order(p), p))
    replica_names = sorted(set(replicas))
    owned: dict[str, list[str]] = {r: [] for r in replica_names}
    if not replica_names:
        return {}
    # Loads stay within floor/ceil of the mean: only ``extra`` replicas may reach the ceiling.
    floor, extra = divmod(len(pod_names), len(replica_names))
    full = 0
    for pod in pod_names:
        ranking = sorted(replica_names, key=lambda r: (_score(r, pod), r), reverse=True)
        owner = next(r for r in ranking if len(owned[r]) < floor or (len(owned[r]) == floor and full < extra))
        if len(owned[owner]) == floor:
            full += 1
        owned[owner].append(pod)
    return {r: tuple(sorted(names)) for r, names in owned.items()}


def subset(pods: Iterable[str], me: str, replicas: Iterable[str]) -> Subset:
    """The pods replica ``me`` balances over, given every replica's name (``me`` included when it is ready).

    All pods when ``me`` is not among ``replicas`` or is the only one; else
    its owned pods, plus one borrowed pod when it owns none.
    """
    pod_names = sorted(set(pods))
    replica_names = sorted(set(replicas))
    if me not in replica_names or len(replica_names) == 1:
        return Subset(owned=tuple(pod_names))
    owned = assign(pod_names, replica_names)[me]
    if owned or not pod_names:
        return Subset(owned=owned, replicas=len(replica_names))
    best = max(pod_names, key=lambda p: (_score(me, p), p))
    return Subset(owned=(), borrowed=(best,), replicas=len(replica_names))


def subset_endpoints(endpoints: ServiceEndpoints, me: str, replicas: Iterable[str]) -> ServiceEndpoints:
    """``endpoints`` cut down to replica ``me``'s share of the ready pods, when their concurrency is finite.

    Unchanged when any ready pod has no container concurrency, or 0
    (unlimited): with no per-pod limit to overrun, every replica may use every
    pod, as Knative's activators do. Draining pods are kept, so a replica
    still drains a pod it had.
    """
    if not endpoints.ready or not all(pod.concurrency for pod in endpoints.ready):
        return endpoints
    mine = set(subset([pod.name for pod in endpoints.ready], me, replicas).pods)
    return dataclasses.replace(endpoints, ready=tuple(pod for pod in endpoints.ready if pod.name in mine))
