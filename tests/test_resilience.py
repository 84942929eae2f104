"""Retries of remote reads, with an injected clock (no sleeping): full-jitter backoff within its
bounds, Retry-After honoured, every loop bounded, and the circuit breaker's transitions."""
from __future__ import annotations

import random
from email.utils import format_datetime
from datetime import datetime, timezone

import pytest

from archcheck.sources.resilience import (CircuitBreaker, GaveUp, RetryPolicy, Transient, parse_retry_after,
                                          with_retries)


class FakeClock:
    def __init__(self):
        self.now, self.slept = 1000.0, []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def failing(*failures: Exception, result: str = "ok"):
    """A request that raises each of ``failures`` in turn, then returns ``result``; it counts calls."""
    queue = list(failures)

    def request():
        request.calls += 1
        if queue:
            raise queue.pop(0)
        return result
    request.calls = 0
    return request


def run(request, policy=RetryPolicy(), clock=None, breaker=None, seed=7):
    clock = clock or FakeClock()
    breaker = breaker or CircuitBreaker(policy.breaker_threshold, policy.breaker_cooldown, clock)
    return with_retries(request, "bytes 0-8", policy, breaker, clock, random.Random(seed)), clock, breaker


def test_full_jitter_backoff_grows_within_its_ceiling():
    policy = RetryPolicy(attempts=6, base=0.5, cap=3.0, breaker_threshold=100)
    request = failing(*[Transient("HTTP 500")] * 5)
    result, clock, _ = run(request, policy)
    assert result == "ok" and request.calls == 6
    ceilings = [0.5, 1.0, 2.0, 3.0, 3.0]  # base * 2^attempt, capped
    assert len(clock.slept) == 5
    assert all(0 <= slept <= ceiling for slept, ceiling in zip(clock.slept, ceilings))
    # the same seed gives the same waits: uniform draws below each ceiling
    rng = random.Random(7)
    assert clock.slept == [rng.uniform(0, c) for c in ceilings]


def test_retry_after_is_waited_for_exactly():
    request = failing(Transient("HTTP 503", retry_after=7.0), Transient("HTTP 429", retry_after=0.0))
    result, clock, _ = run(request)
    assert result == "ok" and clock.slept == [7.0, 0.0]


def test_a_retry_after_beyond_the_limit_gives_up_at_once():
    request = failing(Transient("HTTP 503", retry_after=3600))
    with pytest.raises(GaveUp, match="asks to wait 3600s, more than 120s"):
        run(request)
    assert request.calls == 1


def test_attempts_are_bounded_and_the_last_error_is_named():
    request = failing(*[Transient("ConnectionResetError")] * 100)
    with pytest.raises(GaveUp) as caught:
        run(request, RetryPolicy(attempts=4, breaker_threshold=100))
    assert request.calls == 4
    assert "bytes 0-8: failed after 4 attempts" in str(caught.value) and "ConnectionResetError" in str(caught.value)


def test_elapsed_time_is_bounded():
    request = failing(*[Transient("HTTP 503", retry_after=50)] * 100)
    with pytest.raises(GaveUp):
        run(request, RetryPolicy(attempts=100, max_elapsed=120, breaker_threshold=100))
    assert request.calls == 3  # 50 + 50 waited; a third wait would pass 120 s


def test_other_errors_are_not_retried():
    request = failing(PermissionError(13, "denied"))
    with pytest.raises(PermissionError):
        run(request)
    assert request.calls == 1


def test_breaker_opens_probes_half_open_and_closes():
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=3, cooldown=10.0, clock=clock)
    for _ in range(3):
        assert breaker.wait_before() == 0
        breaker.failed()
    assert breaker.state == "open" and breaker.transitions == ["closed->open"]
    assert breaker.wait_before() == pytest.approx(10.0)  # no request while open
    clock.now += 10
    assert breaker.wait_before() == 0 and breaker.state == "half-open"  # this caller probes
    assert breaker.wait_before() > 0  # one probe at a time
    breaker.failed()  # the probe failed: open again, for a whole cooldown
    assert breaker.state == "open" and breaker.wait_before() == pytest.approx(10.0)
    clock.now += 10
    assert breaker.wait_before() == 0
    breaker.succeeded()
    assert breaker.state == "closed" and breaker.wait_before() == 0
    assert breaker.transitions == ["closed->open", "open->half-open", "half-open->open", "open->half-open",
                                   "half-open->closed"]


def test_retries_wait_out_an_open_breaker_instead_of_hammering():
    policy = RetryPolicy(attempts=10, breaker_threshold=2, breaker_cooldown=10.0, base=0.1)
    request = failing(Transient("HTTP 500"), Transient("HTTP 500"))
    result, clock, breaker = run(request, policy)
    assert result == "ok" and request.calls == 3
    # after the failure that opened it (and its backoff), the rest of the cooldown, without a request
    assert clock.slept[-2] < 0.2 and clock.slept[-2] + clock.slept[-1] == pytest.approx(10.0)
    assert breaker.transitions == ["closed->open", "open->half-open", "half-open->closed"]


def test_parse_retry_after():
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = datetime(2026, 12, 5, 8, 0, 0, tzinfo=timezone.utc)
    later = format_datetime(datetime(2026, 12, 5, 8, 0, 30, tzinfo=timezone.utc), usegmt=True)
    assert parse_retry_after(later, now_epoch=now.timestamp()) == 30.0


def test_an_outage_shorter_than_max_elapsed_is_ridden_out():
    """Waiting on an open breaker uses no attempt: 3 attempts, a breaker that opens after 2."""
    policy = RetryPolicy(attempts=3, breaker_threshold=2, breaker_cooldown=10.0, base=0.1)
    request = failing(Transient("HTTP 503"), Transient("HTTP 503"))
    result, clock, breaker = run(request, policy)
    assert result == "ok" and request.calls == 3


def test_a_probe_that_gets_an_answer_closes_the_breaker():
    """A 404 (or any answer) to the half-open probe is the endpoint up, not stuck half-open."""
    clock = FakeClock()
    policy = RetryPolicy(breaker_threshold=1, breaker_cooldown=5.0)
    breaker = CircuitBreaker(1, 5.0, clock)
    breaker.failed()
    clock.now += 5
    with pytest.raises(FileNotFoundError):
        run(failing(FileNotFoundError(2, "gone")), policy, clock=clock, breaker=breaker)
    assert breaker.state == "closed" and breaker.wait_before() == 0


def test_an_interrupted_probe_lets_another_probe():
    clock = FakeClock()
    breaker = CircuitBreaker(1, 5.0, clock)
    breaker.failed()
    clock.now += 5
    with pytest.raises(KeyboardInterrupt):
        run(failing(KeyboardInterrupt()), RetryPolicy(), clock=clock, breaker=breaker)
    assert breaker.state == "half-open" and breaker.wait_before() == 0  # the next caller probes


def test_a_range_the_open_breaker_kept_from_trying_names_what_opened_it():
    clock = FakeClock()
    breaker = CircuitBreaker(1, 60.0, clock)
    breaker.failed("HTTP 503 SlowDown")  # another reader's failure opened it
    request = failing()
    with pytest.raises(GaveUp) as caught:
        run(request, RetryPolicy(max_elapsed=5), clock=clock, breaker=breaker)
    assert request.calls == 0
    assert "failed after 0 attempts" in str(caught.value) and "HTTP 503 SlowDown" in str(caught.value)
    assert "circuit breaker is open" in str(caught.value)
