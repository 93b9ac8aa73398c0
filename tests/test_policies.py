"""Every policy's picks on hand-built tables, with seeded randomness and explicit time."""

import random
from collections import Counter

import pytest

from katyusha.core.errors import ConfigError
from katyusha.core.feedback import Feedback
from katyusha.core.loadtable import LoadTable
from katyusha.core.policies import DEFAULT_POLICY, POLICY_NAMES, make_policy


def fleet(count, **kw):
    table = LoadTable(**kw)
    for i in range(count):
        table.upsert(f"p{i}", f"http://127.0.0.1:{9000 + i}", node=f"n{i % 2}")
    return table


def busy(table, entry, count, now=0.0):
    for _ in range(count):
        table.on_dispatch(entry, now)


def report(table, entry, now, queue, in_flight=0, app_ms=None, concurrency=None):
    fb = Feedback(queue, in_flight, concurrency, 0.0, app_ms, entry.name, None)
    table.on_dispatch(entry, now)
    table.on_response(entry, now, 0.01, fb)


def policy(name, table, seed=1, **options):
    return make_policy(name, rng=random.Random(seed), table=table, **options)


def test_names_and_default():
    assert set(POLICY_NAMES) == {
        "round-robin", "random", "least-in-flight", "p2c",
        "jsq-piggyback", "sed-piggyback", "peak-ewma", "prequal",
    }
    assert DEFAULT_POLICY in POLICY_NAMES
    assert make_policy("JSQ_Piggyback", rng=random.Random(), table=LoadTable()).name == "jsq-piggyback"


def test_unknown_policy_names_the_allowed_ones():
    with pytest.raises(ConfigError) as err:
        make_policy("fastest", rng=random.Random(), table=LoadTable())
    assert err.value.key == "policy"
    assert "fastest" in str(err.value) and all(n in str(err.value) for n in POLICY_NAMES)
    with pytest.raises(ConfigError):
        make_policy("p2c", rng=random.Random(), table=LoadTable(), decay_s=3)


@pytest.mark.parametrize("name", POLICY_NAMES)
def test_same_seed_same_picks_and_single_candidate(name):
    def run(seed):
        table = fleet(6)
        pol = policy(name, table, seed)
        picks = []
        for step in range(200):
            now = step * 0.01
            entry = pol.pick(table.ready(), now)
            table.on_dispatch(entry, now)
            picks.append(entry.name)
            if step % 3 == 0:
                done = table.ready()[step % 6]
                if done.in_flight:
                    fb = Feedback(step % 4, done.in_flight, None, 1.0, 5.0 + step % 7, None, None)
                    table.on_response(done, now, 0.005 * (1 + step % 5), fb)
                    pol.observe(done, now, 0.005 * (1 + step % 5), fb)
        return picks

    assert run(42) == run(42)
    table = fleet(1)
    assert policy(name, table).pick(table.ready(), 0.0) is table.ready()[0]


def test_round_robin_cycles():
    table = fleet(3)
    pol = policy("round-robin", table)
    assert [pol.pick(table.ready(), 0.0).name for _ in range(7)] == ["p0", "p1", "p2"] * 2 + ["p0"]


def test_random_covers_all_roughly_evenly():
    table = fleet(5)
    pol = policy("random", table)
    counts = Counter(pol.pick(table.ready(), 0.0).name for _ in range(5000))
    assert set(counts) == {e.name for e in table.ready()}
    assert all(700 < c < 1300 for c in counts.values())


def test_least_in_flight_takes_the_minimum_and_breaks_ties_randomly():
    table = fleet(4)
    p0, p1, p2, p3 = table.ready()
    busy(table, p0, 3)
    busy(table, p1, 1)
    busy(table, p3, 2)
    pol = policy("least-in-flight", table)
    assert pol.pick(table.ready(), 0.0) is p2
    busy(table, p2, 1)  # now p1 and p2 tie at 1
    counts = Counter(pol.pick(table.ready(), 0.0).name for _ in range(400))
    assert set(counts) == {"p1", "p2"} and min(counts.values()) > 100


def test_p2c_never_picks_the_more_loaded_of_its_two_samples():
    table = fleet(5)
    for i, entry in enumerate(table.ready()):
        busy(table, entry, i * 2)
    seed = 11
    pol = policy("p2c", table, seed)
    shadow = random.Random(seed)  # replays the policy's draws
    cands = table.ready()
    picks = Counter()
    for _ in range(500):
        first = shadow.randrange(5)
        second = shadow.randrange(4)
        second += second >= first
        chosen = pol.pick(cands, 0.0)
        assert chosen in (cands[first], cands[second])
        assert chosen.in_flight == min(cands[first].in_flight, cands[second].in_flight)
        picks[chosen.name] += 1
    assert "p4" not in picks  # the most loaded loses every comparison


def test_jsq_piggyback_avoids_the_pod_that_reported_the_longest_queue():
    table = fleet(3)
    p0, p1, p2 = table.ready()
    report(table, p0, 1.0, queue=9, in_flight=2)
    report(table, p1, 1.0, queue=1, in_flight=2)
    report(table, p2, 1.0, queue=4, in_flight=2)
    pol = policy("jsq-piggyback", table)
    picks = Counter()
    for _ in range(6):
        entry = pol.pick(table.ready(), 1.1)
        table.on_dispatch(entry, 1.1)
        picks[entry.name] += 1
    # p1 is chosen until its estimate (3 + dispatches) reaches p2's 6; p0 (11) never.
    assert picks["p0"] == 0 and picks["p1"] >= 3


def test_jsq_piggyback_falls_back_to_local_counts_when_reports_are_stale():
    table = fleet(2, stale_after_s=2.0)
    p0, p1 = table.ready()
    report(table, p0, 0.0, queue=50)
    busy(table, p1, 3)
    pol = policy("jsq-piggyback", table)
    assert pol.pick(table.ready(), 1.0) is p1  # fresh report: p0 holds 50
    assert pol.pick(table.ready(), 5.0) is p0  # stale: p0 has 0 of ours in flight, p1 has 3


def test_sed_prefers_fast_pod_with_short_queue_when_its_delay_is_shorter():
    table = fleet(2)
    fast, slow = table.ready()
    report(table, fast, 1.0, queue=2, app_ms=10.0)  # expected (2+1)*10 = 30 ms
    report(table, slow, 1.0, queue=0, app_ms=100.0)  # idle, expected 100 ms
    pol = policy("sed-piggyback", table)
    assert pol.pick(table.ready(), 1.0) is fast
    # jsq would take the idle slow pod.
    assert policy("jsq-piggyback", table).pick(table.ready(), 1.0) is slow


def test_sed_prefers_slow_idle_pod_when_the_fast_queue_is_too_long():
    table = fleet(2)
    fast, slow = table.ready()
    report(table, fast, 1.0, queue=14, app_ms=10.0)  # (14+1)*10 = 150 ms
    report(table, slow, 1.0, queue=0, app_ms=100.0)
    pol = policy("sed-piggyback", table)
    assert pol.pick(table.ready(), 1.0) is slow


def test_sed_uses_reported_concurrency_and_fleet_median_for_unknown_pods():
    table = fleet(3)
    wide, narrow, new = table.ready()
    # 4 running of 8 slots: a new request starts at once, 20 ms.
    report(table, wide, 1.0, queue=0, in_flight=4, app_ms=20.0, concurrency=8)
    # 1 running of 1 slot: waits one service time, 2 * 15 = 30 ms.
    report(table, narrow, 1.0, queue=0, in_flight=1, app_ms=15.0, concurrency=1)
    pol = policy("sed-piggyback", table)
    assert pol.fallback_app_ms(table.ready()) == pytest.approx(17.5)
    busy(table, new, 1)  # unknown app time: median 17.5 * (1+1) = 35 ms
    assert pol.pick(table.ready(), 1.0) is wide
    assert policy("sed-piggyback", fleet(2), prior_app_ms=5.0).fallback_app_ms(fleet(2).ready()) == 5.0


def test_sed_ranks_pods_of_one_speed_by_load_not_by_noise_in_their_app_times():
    table = fleet(4)
    lucky, unlucky, other, slow = table.ready()
    # Three pods of one speed whose averages differ by luck, one pod 4x slower.
    report(table, lucky, 1.0, queue=3, app_ms=18.0, concurrency=1)  # raw: 4 * 18 = 72
    report(table, unlucky, 1.0, queue=2, app_ms=26.0, concurrency=1)  # raw: 3 * 26 = 78
    report(table, other, 1.0, queue=2, app_ms=25.0, concurrency=1)  # raw: 3 * 25 = 75
    report(table, slow, 1.0, queue=0, app_ms=80.0, concurrency=1)  # raw: 80
    pol = policy("sed-piggyback", table)
    # Without the rule the luckiest average wins despite its longer queue.
    assert policy("sed-piggyback", table, same_speed=1.0).pick(table.ready(), 1.0) is lucky
    # Within 1.5x of the median (25.5 ms) all count as 25.5: shorter queues
    # win (3 * 25.5 = 76.5), and the slow pod idle (80) does not yet.
    picks = Counter(pol.pick(table.ready(), 1.0).name for _ in range(50))
    assert set(picks) == {unlucky.name, other.name}
    busy(table, lucky, 1)
    busy(table, unlucky, 1)
    busy(table, other, 1)  # now 4 * 25.5 = 102 on the fast ones
    assert pol.pick(table.ready(), 1.0) is slow
    with pytest.raises(ConfigError):
        policy("sed-piggyback", table, same_speed=0.5)


def test_peak_ewma_spike_raises_cost_at_once_then_decays():
    table = fleet(2)
    a, b = table.ready()
    pol = policy("peak-ewma", table, decay_s=10.0)
    pol.observe(a, 0.0, 0.010, None)
    pol.observe(b, 0.0, 0.010, None)
    pol.observe(a, 1.0, 0.500, None)  # a spike: the estimate jumps to it
    assert pol.latency_ms(a, 1.0) == pytest.approx(500.0)
    assert pol.pick(table.ready(), 1.0) is b
    # Normal samples pull it back down with the 10 s time constant.
    pol.observe(a, 11.0, 0.010, None)
    assert pol.latency_ms(a, 11.0) == pytest.approx(500 * 0.3679 + 10 * 0.6321, rel=0.01)
    for t in range(12, 80):
        pol.observe(a, float(t), 0.010, None)
        pol.observe(b, float(t), 0.010, None)
    assert pol.latency_ms(a, 79.0) == pytest.approx(10.0, rel=0.05)


def test_peak_ewma_cost_grows_with_pending_and_unobserved_pods_fade():
    table = fleet(2)
    a, b = table.ready()
    pol = policy("peak-ewma", table)
    pol.observe(a, 0.0, 0.010, None)
    pol.observe(b, 0.0, 0.030, None)
    assert pol.pick(table.ready(), 0.0) is a
    busy(table, a, 3)  # 10 * 4 = 40 > 30 * 1
    assert pol.pick(table.ready(), 0.0) is b
    # With no news the estimate decays, so a once-slow pod is tried again.
    assert pol.latency_ms(b, 20.0) < pol.latency_ms(b, 0.0) / 5


def prequal_pool(table, pol, now, values):
    for entry, (rif, latency) in zip(table.ready(), values, strict=True):
        pol.observe_probe(entry, now, rif, latency)


def test_prequal_picks_cold_pod_with_lowest_latency_avoiding_hot_ones():
    table = fleet(6)
    pol = policy("prequal", table, hot_quantile=0.5)
    # RIFs 1..6: threshold (median, nearest rank) = 3, so p3..p5 are hot.
    prequal_pool(table, pol, 0.0, [(1, 50.0), (2, 30.0), (3, 40.0), (4, 5.0), (5, 1.0), (6, 2.0)])
    assert pol.hot_threshold() == 3
    assert pol.pick(table.ready(), 0.1).name == "p1"  # lowest latency among the cold, not the hot p4
    assert pol.probes(0.1)["p1"][0] == 3  # our own dispatch counted on its probe


def test_prequal_all_candidates_hot_takes_lowest_rif():
    table = fleet(4)
    pol = policy("prequal", table, hot_quantile=0.5)
    prequal_pool(table, pol, 0.0, [(1, 9.0), (2, 9.0), (8, 1.0), (7, 3.0)])
    hot_only = table.ready()[2:]
    assert pol.pick(hot_only, 0.1).name == "p3"


def test_prequal_probes_age_out_and_pool_is_bounded():
    table = fleet(5)
    pol = policy("prequal", table, max_age_s=1.0, pool_size=3)
    p0, p1, p2, p3, p4 = table.ready()
    pol.observe_probe(p0, 0.0, 0, 1.0)
    pol.observe_probe(p1, 0.5, 0, 50.0)
    assert pol.pick([p0, p1], 0.9) is p0
    assert set(pol.probes(1.2)) == {"p1"}  # p0's probe is older than 1 s
    pol.observe_probe(p2, 1.3, 0, 60.0)
    pol.observe_probe(p3, 1.3, 0, 70.0)
    pol.observe_probe(p4, 1.3, 0, 80.0)
    assert set(pol.probes(1.3)) == {"p2", "p3", "p4"}  # oldest left to keep 3
    # No live probe at all: falls back to p2c on local counts, never an error.
    busy(table, p0, 5)
    assert pol.pick([p0, p1], 9.0) is p1


def test_prequal_pods_without_a_probe_still_get_picked():
    table = fleet(3)
    pol = policy("prequal", table)
    p0, p1, p2 = table.ready()
    # Only p0 has answered so far. Taking the pool alone, every request
    # would go to p0; the others compete with what the table knows of them.
    report(table, p0, 0.0, queue=0, app_ms=20.0, concurrency=1)
    pol.observe(p0, 0.0, 0.02, Feedback(0, 0, 1, 0.0, 20.0, "p0", None))
    picks = Counter()
    for _ in range(30):
        entry = pol.pick(table.ready(), 0.1)
        table.on_dispatch(entry, 0.1)
        picks[entry.name] += 1
    assert set(picks) == {"p0", "p1", "p2"} and picks["p0"] < 20


def test_prequal_learns_expected_latency_from_piggybacked_feedback():
    table = fleet(2)
    a, b = table.ready()
    pol = policy("prequal", table)
    slow_busy = Feedback(5, 3, 1, 100.0, 50.0, None, None)
    fast_idle = Feedback(0, 1, 1, 0.0, 20.0, None, None)
    for entry, fb in ((a, slow_busy), (b, fast_idle)):
        table.on_dispatch(entry, 0.0)
        table.on_response(entry, 0.0, 0.2, fb)
        pol.observe(entry, 0.0, 0.2, fb)
    # Concurrency 1: a new request waits for everything held, then runs:
    # (rif + 1) * the pod's app time.
    assert pol.probes(0.0) == {"p0": (8, 450.0, 0.0), "p1": (1, 40.0, 0.0)}
    assert pol.pick(table.ready(), 0.0) is b
    targets = pol.probe_targets(fleet(3).ready() + [a], 0.0, count=2)
    assert len(targets) == 2 and a not in targets  # unprobed pods are probed first


def test_prequal_a_burst_spreads_over_cold_pods_instead_of_piling_on_one():
    table = fleet(3)
    pol = policy("prequal", table, hot_quantile=1.0)
    p0, p1, p2 = table.ready()
    # All idle; p0 is a little faster. Before picks counted their latency,
    # every request of a burst went to p0 until it turned hot.
    pol.observe_probe(p0, 0.0, 0, 20.0)
    pol.observe_probe(p1, 0.0, 0, 25.0)
    pol.observe_probe(p2, 0.0, 0, 30.0)
    picks = [pol.pick(table.ready(), 0.01).name for _ in range(6)]
    assert picks == ["p0", "p1", "p2", "p0", "p1", "p2"]
    assert pol.probes(0.01)["p0"][:2] == (2, 60.0)


def test_prequal_probe_step_defaults_to_one_app_time_per_request_held():
    table = fleet(2)
    pol = policy("prequal", table, hot_quantile=1.0)
    wide, narrow = table.ready()
    # A wide pod: 4 held, 20 ms each, 8 slots: one more costs 2.5 ms.
    pol.observe_probe(wide, 0.0, 4, 20.0, step_ms=2.5)
    pol.observe_probe(narrow, 0.0, 1, 30.0)  # step 30 / (1 + 1) = 15 ms
    # 20, 22.5, 25, 27.5 on the wide pod; at 30 each the lower RIF wins.
    assert [pol.pick(table.ready(), 0.0).name for _ in range(5)] == ["p0"] * 4 + ["p1"]
    assert pol.probes(0.0)["p1"][:2] == (2, 45.0)
    for bad in (-1.0, float("nan"), float("inf")):
        pol.observe_probe(narrow, 0.1, 1, bad)
    assert pol.probes(0.1)["p1"][:2] == (2, 45.0)  # garbage probes are ignored


# -- the pick trace -------------------------------------------------------


def test_p2c_trace_holds_both_candidates_and_their_loads():
    table = fleet(5)
    for i, entry in enumerate(table.ready()):
        busy(table, entry, i)
    pol = policy("p2c", table, seed=3)
    for _ in range(20):
        trace = []
        chosen = pol.pick(table.ready(), 0.0, trace)
        assert len(trace) == 2 and trace[0][0] is not trace[1][0]
        assert all(load == entry.in_flight for entry, load in trace)
        assert chosen in (trace[0][0], trace[1][0])
        assert chosen.in_flight == min(load for _, load in trace)


@pytest.mark.parametrize("pods", [6, 300])
def test_jsq_trace_shows_a_few_loads_and_the_choice(pods):
    table = fleet(pods)
    entries = table.ready()
    for i, entry in enumerate(entries):
        report(table, entry, 1.0, queue=1 + i % 5)
    pol = policy("jsq-piggyback", table)
    trace = []
    chosen = pol.pick(table.ready(), 1.1, trace)
    assert 1 <= len(trace) <= 9
    assert (chosen, table.estimated_load(chosen, 1.1)) in trace
    assert all(load == table.estimated_load(entry, 1.1) for entry, load in trace)
    assert table.estimated_load(chosen, 1.1) == min(table.estimated_load(e, 1.1) for e in entries)


def test_blind_policies_trace_nothing_and_prequal_traces_probes():
    table = fleet(4)
    for name in ("round-robin", "random"):
        trace = []
        policy(name, table).pick(table.ready(), 0.0, trace)
        assert trace == []
    pol = policy("prequal", table, hot_quantile=0.5)
    # RIF threshold 1: p1 and p3 are hot; the coldest-fastest of p0 and p2 wins.
    prequal_pool(table, pol, 0.0, [(1, 9.0), (2, 3.0), (0, 5.0), (4, 1.0)])
    trace = []
    chosen = pol.pick(table.ready(), 0.1, trace)
    assert [(entry.name, value) for entry, value in trace] == [
        ("p0", (1, 9.0)), ("p1", (2, 3.0)), ("p2", (0, 5.0)), ("p3", (4, 1.0))]
    assert chosen.name == "p2"


# -- large fleets: an index instead of a scan, the same decisions ----------


class CountingTable(LoadTable):
    """A load table that counts how often a policy asks for a pod's estimated load."""

    calls = 0

    def estimated_load(self, entry, now):
        self.calls += 1
        return super().estimated_load(entry, now)


def churn(table, pol, steps, rng, now=0.0, check=None, membership=True):
    """Picks with dispatches, reports, failures, time moving and (optionally) readiness changes."""
    pending = []
    for step in range(steps):
        now += rng.choice((0.0, 0.001, 0.01, 0.3, 1.2, 2.5)) if rng.random() < 0.3 else 0.0005
        if membership and step % 97 == 40:
            table.set_ready(f"p{rng.randrange(len(table))}", False)
        elif membership and step % 97 == 80:
            for entry in table.pods():
                table.set_ready(entry.name, True)
        candidates = table.ready()
        entry = check(candidates, now) if check else pol.pick(candidates, now)
        table.on_dispatch(entry, now)
        pending.append(entry)
        while pending and rng.random() < 0.5:
            done = pending.pop(rng.randrange(len(pending)))
            if rng.random() < 0.05:
                table.on_failure(done, now)
                continue
            app = rng.choice((None, 20.0, rng.uniform(5, 90)))
            fb = Feedback(rng.randrange(4), rng.randrange(3), rng.choice((None, 0, 1, 4)),
                          0.0, app, done.name, None)
            table.on_response(done, now, 0.02, fb)
            pol.observe(done, now, 0.02, fb)
    return now


@pytest.mark.parametrize("name", ["jsq-piggyback", "least-in-flight", "sed-piggyback"])
def test_index_picks_exactly_what_a_scan_of_every_pod_picks(name):
    # Two policies over one table with RNGs in the same state: one is given
    # table.ready() itself (it answers from its index), the other a copy of
    # it, renewed when the table's is (it scans; sed refreshes its median on
    # the same schedule). Every pick must be the same pod.
    table = fleet(400)
    indexed = policy(name, table, seed=5)
    scanned = policy(name, table, seed=5)
    rng = random.Random(9)
    seen = Counter()
    copy = {}

    def both(candidates, now):
        if copy.get("of") is not candidates:
            copy.update({"of": candidates, "list": list(candidates)})
        a = indexed.pick(candidates, now)
        b = scanned.pick(copy["list"], now)
        assert a is b, f"step at {now}: index chose {a.name}, scan {b.name}"
        seen[a.name] += 1
        return a

    now = churn(table, indexed, 1500, rng, check=both)
    # Time going backwards and a pod leaving must not leave the index stale.
    both(table.ready(), now - 5.0)
    table.remove("p7")
    both(table.ready(), now)
    assert len(seen) > 100
    assert indexed.selector._index.repairs == 0  # the table announced every change


@pytest.mark.parametrize("name", ["jsq-piggyback", "least-in-flight", "sed-piggyback", "p2c"])
def test_picks_leaving_a_few_pods_out_are_a_scan_s_of_the_rest(name):
    # pick_except(candidates, ready, excluded, order) must choose, with the
    # same draws, what pick(candidates) chooses, where candidates are ready
    # without excluded in any order (the service's open list is in swap-remove
    # order): jsq and least-in-flight answer from the index, walking past
    # excluded pods, and must put tied pods in the candidates' order.
    table = fleet(400)
    indexed = policy(name, table, seed=5)
    scanned = policy(name, table, seed=5)
    rng = random.Random(11)
    seen = Counter()

    def both(ready, now):
        share = rng.choice((0.0, 0.01, 0.05, 0.2, 0.5))
        excluded = {entry for entry in ready if rng.random() < share}
        if rng.random() < 0.2:  # the lowest pods full: the walk must go past them
            excluded.update(sorted(ready, key=lambda e: e.in_flight)[:3])
        excluded.add(table.pods()[rng.randrange(len(table))])  # maybe not ready: ignored
        candidates = [entry for entry in ready if entry not in excluded]
        if rng.random() < 0.7:
            rng.shuffle(candidates)
            order = {entry: place for place, entry in enumerate(candidates)}
        else:
            order = None
        trace = [] if rng.random() < 0.1 else None
        a = indexed.pick_except(candidates, ready, excluded, order, now, trace)
        b = scanned.pick(list(candidates), now)
        assert a is b, f"step at {now}: pick_except chose {a.name}, scan {b.name}"
        assert a not in excluded
        assert trace is None or trace[-1][0] is a or a in [e for e, _ in trace]
        seen[a.name] += 1
        return a

    churn(table, indexed, 1500, rng, check=both)
    assert len(seen) > 100
    index = getattr(indexed.selector, "_index", None)
    assert index is None or index.repairs == 0


def test_a_load_written_behind_the_tables_back_does_not_draw_every_pick():
    # The index learns of changes from the table's methods. A driver that
    # wrote in_flight itself would leave the chosen pod looking idle; the
    # check on the chosen pod's load spreads the picks all the same.
    table = fleet(100)
    pol = policy("least-in-flight", table)
    picks = Counter()
    for _ in range(100):
        entry = pol.pick(table.ready(), 0.0)
        entry.in_flight += 1  # not table.on_dispatch
        picks[entry.name] += 1
    assert len(picks) == 100
    assert pol.selector._index.repairs > 0


def test_a_pick_at_10000_pods_asks_few_pods_for_their_load():
    for name in ("jsq-piggyback", "sed-piggyback", "prequal"):
        table = CountingTable()
        for i in range(10_000):
            table.upsert(f"p{i}", f"http://10.0.0.1:{i}")
        pol = policy(name, table)
        rng = random.Random(1)
        now = churn(table, pol, 200, rng, membership=False)  # the index is built here
        table.calls = 0
        churn(table, pol, 500, rng, now, membership=False)
        # A scan asks all 10,000 pods on every pick; the index asks only
        # those whose load changed (a few per pick), prequal a bounded sample.
        assert table.calls / 500 < 40, f"{name}: {table.calls / 500:.0f} loads per pick"


def test_large_filtered_lists_are_picked_from_correctly():
    table = fleet(200)
    rng = random.Random(2)
    for name in ("jsq-piggyback", "least-in-flight", "sed-piggyback", "prequal"):
        pol = policy(name, table)
        churn(table, pol, 300, rng)
        for step in range(50):
            allowed = [entry for entry in table.ready() if rng.random() < 0.5]
            chosen = pol.pick(allowed, 10.0 + step)
            assert chosen in allowed
            if name == "jsq-piggyback":
                assert table.estimated_load(chosen, 10.0 + step) == min(
                    table.estimated_load(e, 10.0 + step) for e in allowed)


def test_prequal_on_a_large_fleet_still_tries_pods_it_has_no_probe_of():
    table = fleet(1000)
    pol = policy("prequal", table)
    p0 = table.ready()[0]
    pol.observe_probe(p0, 0.0, 0, 20.0)
    picks = Counter()
    for _ in range(200):
        entry = pol.pick(table.ready(), 0.1)
        table.on_dispatch(entry, 0.1)
        picks[entry.name] += 1
    assert picks["p0"] < 50 and len(picks) > 100


def test_what_the_index_relies_on_from_the_load_table():
    table = LoadTable(stale_after_s=2.0, failure_hold_s=1.0)
    entry = table.upsert("p", "http://p")
    heard = []
    table.add_listener(heard.append)
    table.on_dispatch(entry, 0.0)
    table.on_response(entry, 0.5, 0.01, Feedback(3, 1, 1, 0.0, 5.0, "p", None))
    table.on_dispatch(entry, 0.6)
    table.on_response(entry, 0.7, 0.01, None)
    table.on_failure(entry, 0.8)
    # dispatch; head + end; dispatch; head + end; failure (nothing left in flight to end):
    # every change heard, and no notice when nothing changed.
    assert heard == [entry] * 7
    # Fresh report until 2.5 s, failure weight until 1.8 s: the first comes first.
    due = table.load_changes_at(entry, 0.9)
    assert 1.8 - 1e-9 < due <= 1.8
    assert table.estimated_load(entry, 0.9) == table.estimated_load(entry, due)
    assert table.estimated_load(entry, 1.81) < table.estimated_load(entry, 0.9)
    due = table.load_changes_at(entry, 1.81)
    assert 2.5 - 1e-9 < due <= 2.5
    assert table.load_changes_at(entry, 2.6) == float("inf")
    table.remove_listener(heard.append)
    table.on_dispatch(entry, 3.0)
    assert len(heard) == 7  # removed: the dispatch at 3.0 is not heard


def test_a_response_that_ends_its_request_is_heard_once_with_both_changes():
    table = LoadTable(stale_after_s=2.0)
    entry = table.upsert("p", "http://p")
    seen = []
    table.add_listener(lambda e: seen.append((e.in_flight, e.latency_ewma_ms)))
    table.on_dispatch(entry, 0.0)
    table.record_response(entry, 0.5, 0.01, None, ended=True)
    # The dispatch, then one notice after the head and the end (what the index reads is current).
    assert seen == [(1, None), (0, 10.0)] and entry.in_flight == 0
    table.record_response(entry, 0.6, 0.01, None, ended=True)  # nothing in flight: never below zero
    assert entry.in_flight == 0 and len(seen) == 3
