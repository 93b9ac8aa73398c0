"""The live proxy's counters: answers put aside and counted in batches read as if counted at once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from katyusha.proxy import metrics
from katyusha.proxy.metrics import ProxyStats


class _AtOnce(ProxyStats):
    """Each answer counted as it comes, by the calls it stands for."""

    def answered(self, pod, status, seconds, l1_wait):
        self.l1_wait.observe(l1_wait)
        self.upstream(pod, seconds)
        self.response(status, pod)


def _view(stats: ProxyStats) -> tuple:
    return (list(stats.responses.items()), stats.l1_wait.counts, stats.l1_wait.total, stats.l1_wait.count,
            stats.upstream_latency.counts, stats.upstream_latency.total, stats.upstream_latency.count,
            {pod: list(sketch.items()) for pod, sketch in stats.recent_latency.items()})


_SECONDS = st.floats(0.0, 40.0, allow_nan=False)
_STEP = st.one_of(
    # Most answers of a batch are one pod's and one status', waited 0 s in the L1 queue.
    st.tuples(st.just("answered"), st.sampled_from(["a", "a", "a", "b", "c"]),
              st.sampled_from([200, 200, 404]), _SECONDS, st.one_of(st.just(0.0), _SECONDS)),
    st.tuples(st.just("upstream"), st.sampled_from(["a", "d"]), _SECONDS),
    st.tuples(st.just("response"), st.sampled_from([200, 503]), st.sampled_from(["a", ""])),
    st.tuples(st.just("l1_wait"), _SECONDS),
    st.just(("take",)), st.just(("view",)))


@settings(max_examples=200, deadline=None)
@given(steps=st.lists(_STEP, max_size=400), batch=st.sampled_from([1, 3, 256]))
def test_batched_answers_read_as_counted_at_once(steps, batch):
    saved = metrics._ANSWERS_BATCH
    metrics._ANSWERS_BATCH = batch
    try:
        batched, at_once = ProxyStats(), _AtOnce()
        for step in steps:
            kind = step[0]
            for stats in (batched, at_once):
                if kind == "answered":
                    stats.answered(*step[1:])
                elif kind == "upstream":
                    stats.upstream(*step[1:])
                elif kind == "response":
                    stats.response(*step[1:])
                elif kind == "l1_wait":
                    stats.l1_wait.observe(step[1])
            if kind == "take":
                assert batched.take_recent_latency() == at_once.take_recent_latency()
            elif kind == "view":
                assert _view(batched) == _view(at_once)
        assert _view(batched) == _view(at_once)
    finally:
        metrics._ANSWERS_BATCH = saved
