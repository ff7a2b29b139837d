"""
RateLimiter: GCRA against a token-bucket reference model, waiting up to max_wait in
arrival order, weighted permits, RateLimitedError and Retry, events, statistics, checks.
"""

from __future__ import annotations

import asyncio
import pickle
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tenacity import wait_none

from resilient import (
    Fallback,
    Hedge,
    RateLimitedError,
    RateLimiter,
    RateLimiterStatistics,
    Rejected,
    RejectedError,
    RejectionReason,
    Retry,
    pipeline,
)
from resilient.testing import FakeClock, capture_events
from tests._aio import settle


async def ok(value: object = 42) -> object:
    return value


class TokenBucket:
    """
    The reference: a token bucket in exact arithmetic, with reservations (tokens may go
    negative, down to what max_wait allows), as the rate limiter claims to behave.
    """

    def __init__(self, rate: Fraction, burst: int, max_wait: Fraction) -> None:
        self.rate = rate  # tokens per second
        self.burst = burst
        self.max_wait = max_wait
        self.tokens = Fraction(burst)
        self.now = Fraction(0)

    def advance(self, seconds: Fraction) -> None:
        self.now += seconds
        self.tokens = min(Fraction(self.burst), self.tokens + seconds * self.rate)

    def take(self, permits: int) -> tuple[bool, Fraction]:
        """(admitted, wait): the wait before starting, or the retry_after of a refusal."""
        wait = max(Fraction(0), (permits - self.tokens) / self.rate)
        if wait > self.max_wait:
            return False, wait
        self.tokens -= permits
        if wait:
            self.advance(wait)  # the caller sleeps; the fake clock moves with it
        return True, wait


# Rates, periods and times are powers of two (or small multiples), so every float the
# limiter computes is exact and can be compared with the model's fractions.
@settings(max_examples=150, deadline=None)
@given(
    rate=st.sampled_from([1, 2, 4, 8, 16]),
    per=st.sampled_from([Fraction(1, 2), Fraction(1), Fraction(2)]),
    burst=st.integers(1, 8),
    max_wait=st.sampled_from([Fraction(0), Fraction(1, 4), Fraction(1), Fraction(4)]),
    weighted=st.booleans(),
    steps=st.lists(
        st.tuples(st.integers(0, 64).map(lambda n: Fraction(n, 64)), st.integers(1, 8)),
        min_size=1,
        max_size=40,
    ),
)
def test_matches_token_bucket_model(  # noqa: PLR0917  # hypothesis draws
    rate: int,
    per: Fraction,
    burst: int,
    max_wait: Fraction,
    weighted: bool,
    steps: list[tuple[Fraction, int]],
) -> None:
    """
    Every admission, wait, refusal and retry_after equals a token bucket's of capacity
    `burst` refilled at rate/per, and the available count equals its tokens; for calls
    of one permit each (the constant-cost path) and of drawn weights (a cost function).
    """
    model = TokenBucket(Fraction(rate) / per, burst, max_wait)

    async def scenario() -> None:
        clock = FakeClock()
        limiter = RateLimiter(
            rate, per=float(per), burst=burst, max_wait=float(max_wait), clock=clock,
            cost=(lambda n: n) if weighted else 1,
        )  # fmt: skip
        for gap, drawn in steps:
            clock.advance(float(gap))
            model.advance(gap)
            permits = min(drawn, burst) if weighted else 1  # more never fits
            admitted, wait = model.take(permits)
            sleeps = len(clock.sleeps)
            if admitted:
                assert await limiter.call(ok, permits) == permits
                assert clock.sleeps[sleeps:] == ([float(wait)] if wait else [])
            else:
                with pytest.raises(RateLimitedError) as caught:
                    await limiter.call(ok, permits)
                assert caught.value.retry_after == float(wait)
                assert caught.value.permits == permits
            assert clock.monotonic() == float(model.now)
            assert limiter.statistics().available == float(max(Fraction(0), model.tokens))

    asyncio.run(scenario())


async def test_bucket_starts_full_then_refills_at_the_rate() -> None:
    """
    `burst` calls pass at once, the next is refused with the time to one permit, and
    one more passes after that time.
    """
    clock = FakeClock()
    limiter = RateLimiter(10, burst=3, clock=clock)
    for _ in range(3):
        await limiter.call(ok)
    with pytest.raises(RateLimitedError) as caught:
        await limiter.call(ok)
    assert caught.value.retry_after == pytest.approx(0.1)
    clock.advance(0.1)
    assert await limiter.call(ok) == 42
    assert limiter.statistics() == RateLimiterStatistics(
        rate=10, per=1, burst=3, available=0, waiting=0, waited=0, rejected=1
    )


async def test_a_call_never_awaited_takes_no_permit() -> None:
    """`.call` hands back a coroutine that decides when awaited: one dropped unawaited
    takes nothing from the bucket (the limiter's `_run` decides at once when run)."""
    clock = FakeClock()
    limiter = RateLimiter(10, burst=1, clock=clock)
    for _ in range(3):
        limiter.call(ok).close()
    assert limiter.statistics().available == 1
    assert await limiter.call(ok) == 42
    with pytest.raises(RateLimitedError):
        await limiter.call(ok)


async def test_default_burst_is_the_rate_rounded_up() -> None:
    """
    Without `burst`, a full period's permits pass at once (as aiolimiter).
    """
    assert RateLimiter(5).burst == 5
    assert RateLimiter(2.5).burst == 3
    assert RateLimiter(0.1).burst == 1


async def test_waiters_are_served_in_arrival_order_at_their_times() -> None:
    """
    With max_wait, callers beyond the burst sleep until their permit is due, one
    interval apart, in the order they came.
    """
    clock = FakeClock(auto_advance=False)
    limiter = RateLimiter(4, burst=1, max_wait=1.0, clock=clock)
    order: list[int] = []

    async def note(i: int) -> None:
        order.append(i)

    tasks = [asyncio.create_task(limiter.call(note, i)) for i in range(4)]
    await settle()
    assert order == [0]
    assert limiter.statistics().waiting == 3
    assert "3 waiting" in repr(limiter)
    for due in (1, 2, 3):
        clock.advance(0.25)
        await settle()
        assert order == list(range(due + 1))
    await asyncio.gather(*tasks)
    assert limiter.statistics().waited == 3


async def test_a_caller_that_would_wait_too_long_is_refused_at_once() -> None:
    """
    A wait longer than max_wait is refused without sleeping, with that wait as
    retry_after, and takes no permit.
    """
    clock = FakeClock(auto_advance=False)
    limiter = RateLimiter(2, burst=1, max_wait=0.5, clock=clock)
    await limiter.call(ok)
    waiter = asyncio.create_task(limiter.call(ok))  # waits 0.5 s
    await settle()
    with pytest.raises(RateLimitedError) as caught:
        await limiter.call(ok)  # would wait 1 s
    assert caught.value.retry_after == pytest.approx(1.0)
    assert clock.sleeps == [0.5]
    clock.advance(0.5)
    assert await waiter == 42
    clock.advance(0.5)
    await asyncio.wait_for(limiter.call(ok), 1)  # the refused call took nothing
    assert clock.sleeps == [0.5]


async def test_a_cancelled_waiter_gives_its_permits_back() -> None:
    """
    Cancelling a caller that sleeps for its permit returns the permit: the next caller
    gets it at the time the cancelled one would have.
    """
    clock = FakeClock(auto_advance=False)
    limiter = RateLimiter(1, burst=1, max_wait=5.0, clock=clock)
    await limiter.call(ok)
    waiter = asyncio.create_task(limiter.call(ok))
    await settle()
    waiter.cancel()
    await settle()
    assert waiter.cancelled()
    assert limiter.statistics().waiting == 0
    clock.advance(1.0)
    assert await asyncio.wait_for(limiter.call(ok), 1) == 42  # no wait: permit is back


async def test_cancelled_waiters_ahead_of_others_do_not_raise_the_rate() -> None:
    """
    Waiters cancelled ahead of others that still wait free no permit for newcomers to
    take alongside those others: over any window the calls started stay within
    ``burst + window * rate`` (the permits they had are lost, as in Go's limiter).
    """
    clock = FakeClock(auto_advance=False)
    limiter = RateLimiter(1, burst=1, max_wait=20.0, clock=clock)
    started: list[float] = []

    async def note() -> None:
        started.append(clock.monotonic())

    await limiter.call(note)
    waiting = [asyncio.create_task(limiter.call(note)) for _ in range(10)]  # due at 1..10
    await settle()
    for task in waiting[:5]:
        task.cancel()
    await settle()
    newcomers = [asyncio.create_task(limiter.call(note)) for _ in range(5)]
    await settle()
    for _ in range(15):
        clock.advance(1.0)
        await settle()
    await asyncio.gather(*waiting[5:], *newcomers)
    assert len(started) == 11
    begin = started[0]
    for first in started:
        for width in (0.0, 1.0, 4.0):
            inside = [t for t in started if first <= t <= first + width]
            assert len(inside) <= 1 + width, (first, width, [t - begin for t in started])


async def test_weighted_calls_take_their_cost() -> None:
    """
    A constant `cost` takes that many permits per call; a cost function is called with
    the call's arguments.
    """
    clock = FakeClock()
    heavy = RateLimiter(10, burst=10, cost=4, clock=clock)
    await heavy.call(ok)
    await heavy.call(ok)
    with pytest.raises(RateLimitedError) as caught:
        await heavy.call(ok)
    assert caught.value.permits == 4
    assert caught.value.retry_after == pytest.approx(0.2)

    batches = RateLimiter(10, burst=10, cost=len, clock=clock)
    await batches.call(ok, [1] * 10)
    with pytest.raises(RateLimitedError):
        await batches.call(ok, [1])


@pytest.mark.parametrize("returned", [0, -1, 11, "3"])
async def test_a_cost_function_returning_nonsense_is_an_error(returned: object) -> None:
    """
    A cost function's result must be a number in (0, burst]; else the call fails with a
    clear error and the wrapped function is not called.
    """
    limiter = RateLimiter(10, cost=lambda: returned)  # type: ignore[arg-type, return-value]
    called = False

    async def dependency() -> None:
        nonlocal called
        called = True

    with pytest.raises((ValueError, TypeError), match="cost"):
        await limiter.call(dependency)
    assert not called


def test_rate_limited_error_is_picklable_and_says_when() -> None:
    """
    The error is a RejectedError, survives pickling, and its message (built when read)
    names the limiter and the wait.
    """
    error = RateLimitedError("api", 0.25, 2)
    assert isinstance(error, RejectedError)
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301  # our own bytes
    assert (copy.name, copy.retry_after, copy.permits) == ("api", 0.25, 2)
    assert str(copy) == "rate limit 'api' reached; 2 permit(s) available in 0.250s"
    why = RateLimitedError("api", 1.0, 1, "redis unreachable")
    assert "redis unreachable" in str(pickle.loads(pickle.dumps(why)))  # noqa: S301


async def test_retry_waits_the_retry_after_of_a_rate_limit() -> None:
    """
    A Retry told to retry RateLimitedError sleeps its retry_after (Retry's existing
    `retry_after` support) and then gets through; by default it does not retry it.
    """
    clock = FakeClock()
    limiter = RateLimiter(4, burst=1, clock=clock)
    retry = Retry(3, on=RateLimitedError, wait=wait_none(), clock=clock)
    policy = pipeline(retry, limiter)
    await policy.call(ok)
    assert await policy.call(ok) == 42
    assert clock.sleeps == [pytest.approx(0.25)]

    default = pipeline(Retry(3, wait=wait_none(), clock=clock), limiter)
    with pytest.raises(RateLimitedError):
        await default.call(ok)


async def test_rejections_are_events_with_a_reason() -> None:
    """
    A refusal emits Rejected(reason=RATE_LIMITED) from the limiter.
    """
    limiter = RateLimiter(1, name="api", clock=FakeClock())
    with capture_events(Rejected) as events:
        await limiter.call(ok)
        with pytest.raises(RateLimitedError):
            await limiter.call(ok)
    assert [(e.kind, e.name, e.reason) for e in events] == [  # type: ignore[attr-defined]
        ("rate_limiter", "api", RejectionReason.RATE_LIMITED)
    ]


async def test_decorator_and_repr() -> None:
    """
    The limiter decorates an async function; its repr shows the rate and the bucket.
    """
    limiter = RateLimiter(5, per=2, name="api", clock=FakeClock())

    @limiter
    async def get() -> int:
        return 7

    assert await get() == 7
    assert repr(limiter) == "<RateLimiter 'api' 5/2s 4.0/5 available, 0 waiting>"


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"rate": 0}, ValueError, "rate"),
        ({"rate": float("inf")}, ValueError, "rate"),
        ({"rate": "10"}, TypeError, "rate"),
        ({"rate": 1, "per": 0}, ValueError, "per"),
        ({"rate": 1, "burst": 0}, ValueError, "burst"),
        ({"rate": 1, "max_wait": -1}, ValueError, "max_wait"),
        ({"rate": 10, "burst": 2, "cost": 3}, ValueError, "cost"),
        ({"rate": 10, "cost": 0}, ValueError, "cost"),
        ({"rate": 10**400}, ValueError, "rate"),
        ({"rate": 1, "cost": 10**400}, ValueError, "cost"),
        ({"rate": 1, "burst": 10**400}, ValueError, "burst"),
        # per / rate overflows to inf, or rounds to 0: every call would be free.
        ({"rate": 5e-324}, ValueError, "rate"),
        ({"rate": 1e-300, "per": 1e10}, ValueError, "rate"),
        ({"rate": 1e300, "per": 1e-300}, ValueError, "rate"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict[str, object], error: type, named: str) -> None:
    """
    A bad parameter raises at construction, naming it and its value.
    """
    with pytest.raises(error, match=rf"RateLimiter\({named}="):
        RateLimiter(**kwargs)  # type: ignore[arg-type]


async def test_a_refusal_surfaces_where_the_layer_is_awaited() -> None:
    """
    Inside a pipeline the limiter's refusal is raised when its layer is awaited, so an
    outer Fallback or Hedge sees it as it sees any failure.
    """
    limiter = RateLimiter(1, clock=FakeClock())
    policy = pipeline(Fallback(value="later", on=RateLimitedError), limiter)
    assert await policy.call(ok, "now") == "now"
    assert await policy.call(ok, "now") == "later"
    hedged = pipeline(Hedge(0.01, clock=FakeClock()), limiter)
    with pytest.raises(RateLimitedError):
        await hedged.call(ok)
