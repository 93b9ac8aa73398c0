"""Every built-in policy makes the same picks as before the metric/selector split.

``tests/policies_golden.json`` holds the picks the implementation of commit
b0cac31 (each policy with its metric built in, every pick a scan of all
candidates) made on the seeded event sequences :func:`record` drives: table
membership and readiness changes, filtered candidate lists, dispatches,
responses with and without piggybacked reports, failures, time jumps past
``stale_after_s`` and ``failure_hold_s``, and prequal's probes. The tests
replay the same sequences against the current code, with and without a pick
trace, and compare pick by pick.

The file was generated with this module run as a script against that commit::

    git archive b0cac31 katyusha | tar -x -C /tmp/b0cac31
    PYTHONPATH=/tmp/b0cac31 .venv/bin/python tests/test_policies_golden.py --write tests/policies_golden.json

:func:`record` uses only what that commit offers (``make_policy``,
``LoadTable``, ``Feedback``, ``pick(candidates, now)``, ``observe``, and
prequal's ``observe_probe``/``probe_targets``), so the same script records the
current code for comparison.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

GOLDEN = Path(__file__).with_name("policies_golden.json")

POLICIES = ("round-robin", "random", "least-in-flight", "p2c", "jsq-piggyback",
            "sed-piggyback", "peak-ewma", "prequal")
# (pods, steps, seeds) per scenario. "small" is the 8-pod fleet every policy
# must decide identically on; "large" is past the size where jsq-piggyback,
# least-in-flight and sed-piggyback pick from an index instead of a scan
# (prequal samples there by design, so it is recorded at 8 pods only).
SCENARIOS = {
    "small": (8, 300, (1, 2, 3)),
    "large": (300, 300, (4,)),
}
LARGE_POLICIES = tuple(name for name in POLICIES if name != "prequal")


def record(policy: str, pods: int, steps: int, seed: int, trace: bool = False) -> str:
    """The picks of ``policy`` on the event sequence of ``seed``, one token per pick.

    A pick is its pod's index (``p12`` -> ``12``); prequal's probe targets are
    ``[i,j]``. With ``trace`` a list is passed as the pick's third argument
    (the current interface; b0cac31 took two).
    """
    # The sequences jump in time; app times are weighed as in b0cac31 (each report app_alpha,
    # whatever the silence before it) where the table has that choice.
    import inspect

    from katyusha.core.feedback import Feedback
    from katyusha.core.loadtable import LoadTable
    from katyusha.core.policies import make_policy

    memory = "app_memory_s" in inspect.signature(LoadTable).parameters
    table = LoadTable(**({"app_memory_s": float("inf")} if memory else {}))
    for i in range(pods):
        table.upsert(f"p{i}", f"http://127.0.0.1:{9000 + i}", node=f"n{i % 3}")
    pol = make_policy(policy, rng=random.Random(seed), table=table)
    events = random.Random(seed * 7919 + pods)
    slow = {f"p{i}" for i in range(0, pods, 4)}  # every fourth pod four times slower
    pending: list = []
    now = 0.0
    out: list[str] = []
    for step in range(steps):
        now += events.choice((0.0, 0.0005, 0.002, 0.01, 0.05, 0.2, 1.1, 2.5))
        # Membership and readiness change now and then (the table's version moves).
        if step % 50 == 20:
            table.set_ready(f"p{events.randrange(pods)}", False)
        elif step % 50 == 35:
            for entry in table.pods():
                table.set_ready(entry.name, True)
        elif step == steps // 2:
            gone = f"p{events.randrange(pods)}"
            table.remove(gone)
            table.upsert(f"p{pods}", f"http://127.0.0.1:{9000 + pods}")
        elif step == steps // 2 + 40:
            table.upsert(gone, "http://127.0.0.1:9999")  # a new entry under an old name
        candidates = table.ready()
        if events.random() < 0.25:
            # What the balancer passes when it avoids some pods: a filtered list.
            filtered = [entry for entry in candidates if events.random() < 0.6]
            candidates = filtered or candidates[:1]
        if trace:
            entry = pol.pick(candidates, now, [])
        else:
            entry = pol.pick(candidates, now)
        out.append(entry.name[1:])
        table.on_dispatch(entry, now)
        pending.append((entry, now))
        while pending and events.random() < 0.55:
            done, sent = pending.pop(events.randrange(len(pending)))
            latency = now - sent + events.uniform(0.001, 0.03)
            kind = events.random()
            if kind < 0.06:
                table.on_failure(done, now)
                continue
            if kind < 0.2:
                feedback = None
            else:
                base = 80.0 if done.name in slow else 20.0
                app = events.choice((None, base * events.uniform(0.6, 1.6), base))
                feedback = Feedback(events.randrange(5), events.randrange(3),
                                    events.choice((None, 0, 1, 2, 4)),
                                    events.uniform(0, 5), app, done.name, None)
            table.on_response(done, now, latency, feedback)
            pol.observe(done, now, latency, feedback)
        if hasattr(pol, "observe_probe") and step % 6 == 0:
            targets = pol.probe_targets(table.ready(), now, 2)
            out.append("[" + ",".join(t.name[1:] for t in targets) + "]")
            for target in targets:
                step_ms = events.choice((None, events.uniform(1, 20)))
                pol.observe_probe(target, now, events.randrange(6), events.uniform(1, 90), step_ms)
    return " ".join(out)


def record_all(trace: bool = False) -> dict:
    """``{scenario: {policy: {seed: picks}}}`` for every scenario of :data:`SCENARIOS`."""
    result: dict = {}
    for scenario, (pods, steps, seeds) in SCENARIOS.items():
        names = POLICIES if scenario == "small" else LARGE_POLICIES
        result[scenario] = {
            name: {str(seed): record(name, pods, steps, seed, trace) for seed in seeds}
            for name in names
        }
    return result


def _cases():
    golden = json.loads(GOLDEN.read_text())
    for scenario, by_policy in golden["picks"].items():
        for policy, by_seed in by_policy.items():
            for seed in by_seed:
                yield scenario, policy, seed


def _check(scenario: str, policy: str, seed: str, trace: bool) -> None:
    golden = json.loads(GOLDEN.read_text())
    pods, steps, _ = SCENARIOS[scenario]
    want = golden["picks"][scenario][policy][seed].split()
    got = record(policy, pods, steps, int(seed), trace).split()
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert a == b, f"{policy} ({scenario}, seed {seed}) pick {i}: now {a}, before {b}"


if __name__ != "__main__":
    import pytest

    @pytest.mark.parametrize(("scenario", "policy", "seed"), list(_cases()))
    def test_same_picks_as_before(scenario, policy, seed):
        _check(scenario, policy, seed, trace=False)

    @pytest.mark.parametrize(("scenario", "policy", "seed"), list(_cases()))
    def test_a_trace_changes_no_pick(scenario, policy, seed):
        _check(scenario, policy, seed, trace=True)

    def test_golden_covers_every_policy():
        golden = json.loads(GOLDEN.read_text())
        assert set(golden["picks"]["small"]) == set(POLICIES)
        from katyusha.core.policies import POLICY_NAMES

        assert set(POLICY_NAMES) == set(POLICIES)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "--write":
        sys.exit(f"usage: {sys.argv[0]} --write PATH")
    import katyusha

    print(f"recording the policies of {Path(katyusha.__file__).parent}")
    doc = {"generated_from": "b0cac31", "picks": record_all()}
    Path(sys.argv[2]).write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"wrote {sys.argv[2]}")
