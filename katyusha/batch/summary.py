"""What a run did: counts, rates and latencies, as text for people and JSON for tools."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field

RESERVOIR = 10_000  # latency samples kept, so memory stays flat on any table size


@dataclass
class Tally:
    rows_total: int | None = None  # rows in the input when the run began
    read: int = 0
    skipped: int = 0  # finished by an earlier run
    written: int = 0
    dead_letters: int = 0
    requests: int = 0
    retries: int = 0
    overloaded: int = 0  # answers that cut the window (429, 503, 504, no answer)
    statuses: Counter = field(default_factory=Counter)
    wall_s: float = 0.0
    stopped: str | None = None  # why the run ended early, if it did
    window_smallest: float = 0.0
    window_cuts: int = 0
    _latencies: list[float] = field(default_factory=list)
    _seen: int = 0
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def latency(self, seconds: float) -> None:
        """Keep a uniform sample of attempt latencies (reservoir sampling)."""
        self._seen += 1
        if len(self._latencies) < RESERVOIR:
            self._latencies.append(seconds)
        else:
            slot = self.rng.randrange(self._seen)
            if slot < RESERVOIR:
                self._latencies[slot] = seconds

    def percentile_ms(self, q: float) -> float | None:
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3, 3)

    @property
    def rows_per_s(self) -> float:
        done = self.written + self.dead_letters
        return round(done / self.wall_s, 1) if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict:
        return {
            "rows_total": self.rows_total,
            "read": self.read,
            "skipped": self.skipped,
            "written": self.written,
            "dead_letters": self.dead_letters,
            "requests": self.requests,
            "retries": self.retries,
            "overloaded": self.overloaded,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items(), key=str)},
            "wall_s": round(self.wall_s, 3),
            "rows_per_s": self.rows_per_s,
            "latency_ms": {"p50": self.percentile_ms(0.5), "p95": self.percentile_ms(0.95),
                           "p99": self.percentile_ms(0.99)},
            "window": {"smallest": round(self.window_smallest, 2), "cuts": self.window_cuts},
            "stopped": self.stopped,
        }

    def text(self) -> str:
        d = self.as_dict()
        lat = d["latency_ms"]
        lines = [
            f"katyusha batch: {'stopped early (' + self.stopped + ')' if self.stopped else 'done'}"
            f" in {d['wall_s']:.1f}s",
            f"  rows: {self.read} read, {self.skipped} already finished, {self.written} written, "
            f"{self.dead_letters} to the dead letter ({d['rows_per_s']} rows/s)",
            f"  requests: {self.requests}, retries: {self.retries}, overloaded answers: {self.overloaded}, "
            f"statuses: {d['statuses'] or '-'}",
            f"  latency per attempt: p50 {_ms(lat['p50'])}, p95 {_ms(lat['p95'])}, p99 {_ms(lat['p99'])}; "
            f"window: smallest {d['window']['smallest']}, cut {self.window_cuts} times",
        ]
        if self.stopped:
            lines.append("  run the same command again to resume: finished rows are skipped")
        return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value} ms"
