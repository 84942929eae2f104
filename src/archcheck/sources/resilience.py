"""Retries for remote reads: exponential backoff with full jitter, Retry-After honoured, and a
circuit breaker per endpoint. Every loop here ends by itself: attempts and elapsed time are
both bounded, and a wait is never longer than the policy allows.

Time and randomness come in from outside (``Clock``, ``random.Random``), so tests drive them
without sleeping."""
from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol, TypeVar

T = TypeVar("T")


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


class Transient(Exception):
    """A failure worth another try: a timeout, a reset, a short body, 429, 5xx. ``retry_after``
    is the server's Retry-After in seconds, when it sent one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class GaveUp(OSError):
    """Still failing after the policy's attempts or time: the range is a dead letter."""


@dataclass(frozen=True)
class RetryPolicy:
    """Defaults in docs/remote.md. ``max_elapsed`` bounds one range's attempts in seconds."""

    attempts: int = 6
    base: float = 0.2  # seconds: the first backoff's ceiling
    cap: float = 20.0  # seconds: no backoff ceiling above this
    max_elapsed: float = 120.0
    max_retry_after: float = 120.0  # a server asking for a longer wait is not waited for
    breaker_threshold: int = 5  # consecutive failures that open an endpoint's breaker
    breaker_cooldown: float = 10.0  # seconds open before a half-open probe

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
        return rng.uniform(0.0, min(self.cap, self.base * (2 ** attempt)))


class BreakerState:
    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


@dataclass
class CircuitBreaker:
    """Per endpoint: opens after ``threshold`` consecutive failures; after ``cooldown`` one probe
    goes through (half-open); its success closes it, its failure opens it again."""

    threshold: int
    cooldown: float
    clock: Clock
    state: str = BreakerState.CLOSED
    failures: int = 0
    opened_at: float = 0.0
    probing: bool = False
    last_error: str = ""  # what opened it: named by a request it kept from being made
    transitions: list[str] = field(default_factory=list)  # for tests and logs: "closed->open", ...
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def wait_before(self) -> float:
        """0 when a request may go now; else the seconds until it may."""
        with self.lock:
            if self.state == BreakerState.CLOSED:
                return 0.0
            left = self.opened_at + self.cooldown - self.clock.monotonic()
            if self.state == BreakerState.OPEN and left <= 0:
                self._move(BreakerState.HALF_OPEN)
            if self.state == BreakerState.HALF_OPEN and not self.probing:
                self.probing = True  # this request is the probe
                return 0.0
            return max(left, 0.0) or self.cooldown / 4  # a probe is out: wait for its answer

    def succeeded(self) -> None:
        with self.lock:
            self.failures, self.probing = 0, False
            if self.state != BreakerState.CLOSED:
                self._move(BreakerState.CLOSED)

    def released(self) -> None:
        """A probe that ended without an answer: another request may probe."""
        with self.lock:
            self.probing = False

    def failed(self, error: str = "") -> None:
        with self.lock:
            self.failures += 1
            self.last_error = error or self.last_error
            if self.state == BreakerState.HALF_OPEN or (self.state == BreakerState.CLOSED
                                                       and self.failures >= self.threshold):
                self.probing = False
                self.opened_at = self.clock.monotonic()
                self._move(BreakerState.OPEN)

    def _move(self, state: str) -> None:
        self.transitions.append(f"{self.state}->{state}")
        self.state = state


_breakers: dict[str, CircuitBreaker] = {}
_breakers_lock = threading.Lock()


def breaker_for(endpoint: str, policy: RetryPolicy, clock: Clock) -> CircuitBreaker:
    """One breaker per endpoint in this process, shared by its readers."""
    with _breakers_lock:
        breaker = _breakers.get(endpoint)
        if breaker is None:
            breaker = _breakers[endpoint] = CircuitBreaker(policy.breaker_threshold, policy.breaker_cooldown, clock)
        return breaker


def with_retries(request: Callable[[], T], what: str, policy: RetryPolicy, breaker: CircuitBreaker,
                 clock: Clock, rng: random.Random) -> T:
    """``request()`` until it succeeds, raises something not Transient, or the policy gives up
    (GaveUp, naming the last error and the attempts made). Waiting out an open breaker is not
    an attempt: only ``max_elapsed`` bounds it, so an outage shorter than that is ridden out."""
    started = clock.monotonic()
    last, attempts = "no attempt made", 0
    while True:
        blocked = breaker.wait_before()
        if blocked > 0:
            delay, waiting = blocked, " (the endpoint's circuit breaker is open)"
            if attempts == 0:
                last = breaker.last_error or last
        else:
            waiting = ""
            attempts += 1
            try:
                result = request()
            except Transient as exc:
                last = str(exc)
                breaker.failed(last)
                if exc.retry_after is not None and exc.retry_after > policy.max_retry_after:
                    raise GaveUp(5, f"{what}: the server asks to wait {exc.retry_after:g}s, more than "
                                    f"{policy.max_retry_after:g}s: {last}") from None
                delay = exc.retry_after if exc.retry_after is not None else policy.backoff(attempts - 1, rng)
            except Exception:
                breaker.succeeded()  # an answer (a 404, a 412, a 403): the endpoint is up
                raise
            except BaseException:
                breaker.released()  # interrupted: a probe in flight must not hold the breaker half-open
                raise
            else:
                breaker.succeeded()
                return result
        if attempts >= policy.attempts or clock.monotonic() - started + delay > policy.max_elapsed:
            raise GaveUp(5, f"{what}: failed after {attempts} attempts in {clock.monotonic() - started:.1f}s: "
                            f"{last}{waiting}")
        clock.sleep(delay)


def retrying(request: Callable[[], T], what: str, policy: RetryPolicy, endpoint: str) -> T:
    """with_retries on the real clock, through the endpoint's breaker in this process."""
    clock = SystemClock()
    return with_retries(request, what, policy, breaker_for(endpoint, policy, clock), clock, random.Random())


def parse_retry_after(value: str | None, now_epoch: float | None = None) -> float | None:
    """Retry-After as seconds: delta-seconds, or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    from email.utils import parsedate_to_datetime
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now_epoch is None else now_epoch))
