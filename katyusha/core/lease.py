"""Leader election over a ``coordination.k8s.io`` Lease, decided without I/O.

Several control planes may run; one acts at a time. They share one Lease
object: the holder writes its name and renews the lease every
``retry_period``; the others read it and take over when it has not changed
for ``lease_duration``. This is client-go's leader election, and as there,
expiry is judged by the *local* clock from the moment this elector last saw
the record change, never by the timestamps written in it, so clock skew
between machines cannot make two leaders.

The driver (katyusha.kubernetes.leader) reads the Lease, calls
:meth:`LeaseElector.observe`, asks :meth:`LeaseElector.step` what to write,
writes it (a create, or an update guarded by the ``resourceVersion`` it
read, so of two racing writers one gets 409 Conflict), and reports the
result with :meth:`LeaseElector.written` (a refused write needs no report:
the next read shows who won). A leader that cannot renew for ``renew_deadline`` stops leading
(:meth:`LeaseElector.is_leader` turns false) before anyone else may take
over at ``lease_duration``. :meth:`LeaseElector.release` gives the lease up
on a clean stop, so a successor does not wait out the duration.

Times: ``now`` is a monotonic clock in seconds; ``stamp`` is the RFC 3339
micro-time string the driver writes as ``acquireTime``/``renewTime``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from katyusha.core.errors import ConfigError


@dataclass(frozen=True)
class LeaseRecord:
    """A Lease's spec as read (``holder`` "" or None: nobody holds it) and its ``resourceVersion``."""

    holder: str | None = None
    duration: float = 0.0
    acquire_time: str | None = None
    renew_time: str | None = None
    transitions: int = 0
    resource_version: str | None = None

    @classmethod
    def from_document(cls, document: Mapping[str, Any]) -> LeaseRecord:
        """The record of a Lease JSON document (missing fields take their zero values)."""
        spec = document.get("spec") if isinstance(document.get("spec"), Mapping) else {}
        meta = document.get("metadata") if isinstance(document.get("metadata"), Mapping) else {}
        duration = spec.get("leaseDurationSeconds")
        transitions = spec.get("leaseTransitions")
        return cls(
            holder=spec.get("holderIdentity") or None,
            duration=float(duration) if isinstance(duration, int | float) else 0.0,
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=transitions if isinstance(transitions, int) else 0,
            resource_version=meta.get("resourceVersion"),
        )

    def spec(self) -> dict[str, Any]:
        """The Lease ``spec`` to write for this record."""
        spec: dict[str, Any] = {
            "holderIdentity": self.holder or "",
            "leaseDurationSeconds": int(math.ceil(self.duration)),
            "leaseTransitions": self.transitions,
        }
        if self.acquire_time is not None:
            spec["acquireTime"] = self.acquire_time
        if self.renew_time is not None:
            spec["renewTime"] = self.renew_time
        return spec

    def _same_claim(self, other: LeaseRecord | None) -> bool:
        # Whether nothing the holder writes changed: the resourceVersion alone may change on a no-op.
        return other is not None and self._claim() == other._claim()

    def _claim(self) -> tuple:
        return (self.holder, self.renew_time, self.acquire_time, self.transitions)


@dataclass(frozen=True)
class Create:
    """Create the Lease with this record (it did not exist)."""

    record: LeaseRecord


@dataclass(frozen=True)
class Update:
    """Replace the Lease with this record, guarded by ``record.resource_version`` (the one read)."""

    record: LeaseRecord


class LeaseElector:
    """One candidate's view of the election; see the module doc. Raises ConfigError for bad timings."""

    def __init__(
        self,
        identity: str,
        *,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
    ):
        if not identity:
            raise ConfigError("identity", "must not be empty")
        if not retry_period > 0:
            raise ConfigError("retry-period", f"must be > 0, got {retry_period}")
        if not renew_deadline > retry_period:
            raise ConfigError("renew-deadline", f"must be longer than retry-period ({retry_period}), got {renew_deadline}")
        if not lease_duration > renew_deadline:
            raise ConfigError("lease-duration", f"must be longer than renew-deadline ({renew_deadline}), got {lease_duration}")
        self.identity = identity
        self.lease_duration = float(lease_duration)
        self.renew_deadline = float(renew_deadline)
        self.retry_period = float(retry_period)
        self.observed: LeaseRecord | None = None  # the last record read or written
        self.observed_at: float | None = None  # local time its claim last changed
        self.missing = False  # the last read found no Lease
        self._renewed_at: float | None = None  # local time of our last successful write as holder

    # -- what we saw ------------------------------------------------------------------

    def observe(self, now: float, record: LeaseRecord | None) -> None:
        """Record a read of the Lease (None: it does not exist)."""
        if record is None:
            self.missing = True
            return
        self.missing = False
        if not record._same_claim(self.observed):
            self.observed_at = now
        self.observed = record

    def holder(self) -> str | None:
        """Who holds the lease as last seen (None: nobody, or not read yet)."""
        return self.observed.holder if self.observed is not None else None

    def expired(self, now: float) -> bool:
        """Whether the lease as last seen is free: released, or unchanged for its duration."""
        record = self.observed
        if record is None or not record.holder:
            return True
        duration = record.duration if record.duration > 0 else self.lease_duration
        return self.observed_at is None or now >= self.observed_at + duration

    def is_leader(self, now: float) -> bool:
        """Whether to act as leader now: we hold the lease and renewed it within ``renew_deadline``."""
        return (
            self._renewed_at is not None
            and self.holder() == self.identity
            and now < self._renewed_at + self.renew_deadline
        )

    # -- what to write ----------------------------------------------------------------

    def step(self, now: float, stamp: str) -> Create | Update | None:
        """The write to make after the last :meth:`observe`: create, acquire or renew; None to keep following."""
        if self.missing:
            return Create(LeaseRecord(self.identity, self.lease_duration, stamp, stamp, 0))
        record = self.observed
        if record is None:
            return None  # nothing read yet
        if record.holder == self.identity:
            acquire = record.acquire_time or stamp
            return Update(
                LeaseRecord(self.identity, self.lease_duration, acquire, stamp, record.transitions, record.resource_version)
            )
        if not self.expired(now):
            return None
        return Update(
            LeaseRecord(self.identity, self.lease_duration, stamp, stamp, record.transitions + 1, record.resource_version)
        )

    def written(self, now: float, record: LeaseRecord) -> None:
        """The write was accepted; ``record`` is the Lease as the server returned it."""
        self.missing = False
        if not record._same_claim(self.observed):
            self.observed_at = now
        self.observed = record
        self._renewed_at = now if record.holder == self.identity else None

    def release(self, stamp: str) -> Update | None:
        """The write that gives the lease up (holder cleared, 1 s duration), or None if we do not hold it."""
        record = self.observed
        if record is None or record.holder != self.identity:
            return None
        self._renewed_at = None
        return Update(LeaseRecord(None, 1.0, record.acquire_time, stamp, record.transitions, record.resource_version))
