"""Which failed tries the core sends again, and the retry budget, on a fake clock."""

from __future__ import annotations

import random

import pytest

from katyusha.core.errors import ConfigError
from katyusha.core.membership import PodChange, PodSpec
from katyusha.core.retrybudget import RetryBudget
from katyusha.core.service import ServiceBalancer, ServiceSettings


def service(pods: int = 3, **settings) -> ServiceBalancer:
    s = ServiceBalancer(ServiceSettings(capacity_factor=0, **settings), rng=random.Random(5))
    s.change_pods(PodChange(upsert=tuple(PodSpec(f"pod-{i}", f"http://127.0.0.1:{9200 + i}")
                                         for i in range(pods))), 0.0)
    return s


def test_a_post_that_sent_nothing_is_retried_on_another_pod():
    s = service()
    ticket = s.offer(0.0, idempotent=False)
    first = s.dispatch(ticket, 0.0)
    assert first.on_failure(0.1, retryable=True, sent_nothing=True)
    second = s.dispatch(ticket, 0.1)
    assert second.entry is not first.entry
    assert not ticket.maybe_executed
    s.end(ticket, 0.2)


def test_a_post_that_may_have_reached_the_app_is_not_retried_and_says_so():
    s = service()
    ticket = s.offer(0.0, idempotent=False)
    assert not s.dispatch(ticket, 0.0).on_failure(0.1, retryable=True, sent_nothing=False)
    assert ticket.maybe_executed
    s.end(ticket, 0.2)


def test_an_idempotent_request_is_retried_after_either_failure_and_remembers_the_risk():
    s = service()
    ticket = s.offer(0.0)
    assert s.dispatch(ticket, 0.0).on_failure(0.1, retryable=True, sent_nothing=False)
    assert s.dispatch(ticket, 0.1).on_failure(0.2, retryable=True, sent_nothing=True)
    # retries=2 spent: the third failure is final; one try may have run it.
    assert not s.dispatch(ticket, 0.2).on_failure(0.3, retryable=True, sent_nothing=True)
    assert ticket.maybe_executed
    s.end(ticket, 0.3)


def test_nothing_is_retried_when_the_body_cannot_be_sent_again():
    s = service()
    ticket = s.offer(0.0, idempotent=False)
    assert not s.dispatch(ticket, 0.0).on_failure(0.1, retryable=False, sent_nothing=True)
    s.end(ticket, 0.1)


def test_the_retry_budget_stops_a_retry_storm():
    # 100 requests a second for 10 s, every try failing after it was sent (a reset):
    # without a budget each request is sent three times.
    s = service(pods=4, retry_budget_min=1.0)
    tries = requests = 0
    for n in range(1000):
        now = n * 0.01
        ticket = s.offer(now)
        requests += 1
        while True:
            handle = s.dispatch(ticket, now)
            tries += 1
            if not handle.on_failure(now, retryable=True):
                break
        s.end(ticket, now)
    retries = tries - requests
    # At most 20% of the window's requests plus 1 a second (10 s window).
    assert retries <= 0.2 * requests + 1.0 * 10 + 1
    assert retries >= 0.15 * requests
    assert s.budget.exhausted > 0
    assert s.state(10.0)["retry_budget"]["exhausted_total"] == s.budget.exhausted


def test_the_budget_window_slides():
    budget = RetryBudget(ratio=0.5, min_per_s=0.0, window_s=10)
    for n in range(10):
        budget.on_request(float(n))
    assert [budget.allow(9.5) for _ in range(6)] == [True] * 5 + [False]
    # Ten seconds on, those requests and retries left the window.
    assert not budget.allow(19.5)
    budget.on_request(19.6)
    budget.on_request(19.7)
    assert budget.allow(19.8) and not budget.allow(19.9)
    # A quiet service still may retry: the minimum a second.
    quiet = RetryBudget(ratio=0.2, min_per_s=1.0, window_s=10)
    assert sum(quiet.allow(100.0 + n * 0.1) for n in range(50)) == 10


@pytest.mark.parametrize("kwargs, key", [({"ratio": -1}, "retry-budget"), ({"min_per_s": "x"}, "retry-budget-min")])
def test_bad_budget_names_the_setting(kwargs, key):
    with pytest.raises(ConfigError) as info:
        RetryBudget(**kwargs)
    assert info.value.key == key


@pytest.mark.parametrize("seed", range(40))
def test_the_budget_counts_each_second_as_a_plain_model_does(seed):
    """Requests and retries counted in one-second buckets over the last ``window_s`` seconds
    (a call whose clock went back counts in the latest second): every answer and count as a
    model that keeps a count per second and sums the window each time."""
    rng = random.Random(seed)
    window = rng.choice([1, 3, 10])
    budget = RetryBudget(0.2, rng.choice([0.0, 0.5, 1.0]), window)
    requests: dict[int, int] = {}
    retries: dict[int, int] = {}
    latest = None
    now = rng.uniform(-5.0, 5.0)
    for _ in range(300):
        now += rng.choice([0.0, 0.001, 0.3, 0.99, 1.0, 2.5, 15.0, -0.7])
        second = int(now // 1) if latest is None else max(int(now // 1), latest)
        latest = second
        in_window = range(second - window + 1, second + 1)
        if rng.random() < 0.7:
            budget.on_request(now)
            requests[second] = requests.get(second, 0) + 1
        else:
            limit = (0.2 * sum(requests.get(s, 0) for s in in_window)
                     + budget.min_per_s * window)
            fits = sum(retries.get(s, 0) for s in in_window) + 1 <= limit
            assert budget.allow(now) == fits
            if fits:
                retries[second] = retries.get(second, 0) + 1
        assert budget.requests_in_window == sum(requests.get(s, 0) for s in in_window)
        assert budget.retries_in_window == sum(retries.get(s, 0) for s in in_window)
