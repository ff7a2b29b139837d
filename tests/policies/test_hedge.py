"""
Tests for `Hedge`: extra attempts for slow calls, first success wins.
"""

from __future__ import annotations

import asyncio
import contextvars
import math
import time
from typing import Any, TypeVar

import pytest

from resilient import (
    Bulkhead,
    CircuitOpenError,
    Hedge,
    HedgeSent,
    HedgeStatistics,
    Retry,
    Timeout,
    pipeline,
    remaining_time,
)
from resilient.testing import FakeClock, capture_events
from tests._aio import promptly, result_of, settle

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="unset")

T = TypeVar("T")


def others() -> set[asyncio.Task[Any]]:
    """
    Tasks alive besides the current one.
    """
    return asyncio.all_tasks() - {asyncio.current_task()}


class Attempts:
    """
    Scripted attempts: attempt n waits `plans[n-1][0]` seconds on the clock, then returns
    (or raises) `plans[n-1][1]`. Records which attempts started and which were cancelled.
    """

    def __init__(self, clock: FakeClock, *plans: tuple[float, object]) -> None:
        self.clock = clock
        self.plans = plans
        self.started: list[int] = []
        self.cancelled: list[int] = []
        self.seen: list[tuple[str, float | None]] = []

    async def __call__(self) -> Any:
        number = len(self.started) + 1
        self.started.append(number)
        self.seen.append((request_id.get(), remaining_time()))
        request_id.set(f"changed by attempt {number}")
        delay, outcome = self.plans[min(number, len(self.plans)) - 1]
        try:
            await self.clock.sleep(delay)
        except asyncio.CancelledError:
            self.cancelled.append(number)
            raise
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


# -- winning -------------------------------------------------------------------------


async def test_fast_first_attempt_sends_no_hedge() -> None:
    """When the first attempt answers within the delay, no hedge is sent."""
    clock = FakeClock(auto_advance=False)
    hedge = Hedge(1.0, clock=clock)
    attempts = Attempts(clock, (0, "first"))
    with capture_events(HedgeSent) as sent:
        assert await promptly(hedge.call(attempts)) == "first"
    assert attempts.started == [1]
    assert sent == []
    assert clock.pending_timers == 0  # the hedge timer was called off
    assert hedge.statistics() == HedgeStatistics(calls=1, hedges=0, hedge_wins=0)
    await settle()
    assert others() == set()


async def test_hedge_sent_after_delay_and_first_success_wins() -> None:
    """After `delay` a second attempt starts; the first success wins, the other is cancelled."""
    clock = FakeClock(auto_advance=False)
    hedge = Hedge(1.0, name="search", clock=clock)
    attempts = Attempts(clock, (10, "slow"), (0.5, "fast"))
    with capture_events(HedgeSent) as sent:
        task = asyncio.create_task(hedge.call(attempts))
        await settle()
        clock.advance(0.75)
        await settle()
        assert attempts.started == [1]
        clock.advance(0.25)
        await settle()
        assert attempts.started == [1, 2]
        clock.advance(0.5)
        assert await result_of(task) == "fast"
    await settle()
    assert attempts.cancelled == [1]
    assert sent == [HedgeSent(kind="hedge", name="search", time=1.0, attempt=2)]
    assert hedge.statistics() == HedgeStatistics(calls=1, hedges=1, hedge_wins=1)
    assert others() == set()


async def test_first_attempt_can_still_win_after_hedge() -> None:
    """If the first attempt answers after the hedge was sent, it wins and the hedge is cancelled."""
    clock = FakeClock(auto_advance=False)
    hedge = Hedge(1.0, clock=clock)
    attempts = Attempts(clock, (1.5, "primary"), (10, "hedge"))
    task = asyncio.create_task(hedge.call(attempts))
    await settle()
    clock.advance(1.0)
    await settle()
    clock.advance(0.5)
    assert await result_of(task) == "primary"
    await settle()
    assert attempts.cancelled == [2]
    assert hedge.statistics() == HedgeStatistics(calls=1, hedges=1, hedge_wins=0)


async def test_real_clock_hedge_wins() -> None:
    """On the real clock, a hedge sent after 0.02 s answers long before a 10 s first attempt."""
    started = time.monotonic()
    cancelled: list[str] = []
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.append("first")
                raise
            return "slow"
        return "fast"

    assert await Hedge(0.02).call(attempt) == "fast"
    assert time.monotonic() - started < 5.0  # the first attempt was not waited for
    await settle()
    assert cancelled == ["first"]
    assert others() == set()


# -- failures ------------------------------------------------------------------------


async def test_failed_attempt_starts_next_at_once() -> None:
    """A failing first attempt starts the next one immediately, without waiting the delay."""
    clock = FakeClock(auto_advance=False)
    hedge = Hedge(5.0, clock=clock)
    attempts = Attempts(clock, (0, ValueError("primary failed")), (0, "second"))
    with capture_events(HedgeSent) as sent:
        assert await promptly(hedge.call(attempts)) == "second"
    assert clock.monotonic() == 0.0
    assert attempts.started == [1, 2]
    assert [e.attempt for e in sent if isinstance(e, HedgeSent)] == [2]
    assert hedge.statistics() == HedgeStatistics(calls=1, hedges=1, hedge_wins=1)


async def test_failed_hedge_starts_next_while_first_is_still_slow() -> None:
    """A failing hedge starts the next attempt at once even while an earlier one runs."""
    clock = FakeClock(auto_advance=False)
    hedge = Hedge(1.0, max_hedged=2, clock=clock)
    attempts = Attempts(clock, (10, "slow"), (0, ValueError("hedge failed")), (0.5, "third"))
    task = asyncio.create_task(hedge.call(attempts))
    await settle()
    clock.advance(1.0)  # the first hedge starts and fails at once
    await settle(20)
    assert attempts.started == [1, 2, 3]  # no second delay waited out
    clock.advance(0.5)
    assert await result_of(task) == "third"
    await settle()
    assert attempts.cancelled == [1]
    assert hedge.statistics() == HedgeStatistics(calls=1, hedges=2, hedge_wins=1)


async def test_all_attempts_failing_raises_last_error() -> None:
    """When every attempt fails, the last attempt's error is raised."""
    clock = FakeClock(auto_advance=False)
    errors = [ValueError("1"), ValueError("2"), ValueError("3")]
    attempts = Attempts(clock, *[(0, e) for e in errors])
    with pytest.raises(ValueError, match="3") as info:
        await promptly(Hedge(1.0, max_hedged=2, clock=clock).call(attempts))
    assert info.value is errors[-1]
    assert attempts.started == [1, 2, 3]


async def test_slow_failures_raise_last_error() -> None:
    """Attempts failing at different times: the call fails when the last one does."""
    clock = FakeClock(auto_advance=False)
    first, second = ConnectionError("first"), ConnectionError("second")
    attempts = Attempts(clock, (1.5, first), (1.0, second))
    task = asyncio.create_task(Hedge(1.0, clock=clock).call(attempts))
    await settle()
    clock.advance(1.0)  # hedge sent
    await settle()
    clock.advance(0.5)  # the first attempt fails; the hedge is still running
    await settle()
    assert not task.done()
    clock.advance(0.5)  # the hedge fails too
    with pytest.raises(ConnectionError) as info:
        await result_of(task)
    assert info.value is second


async def test_non_matching_error_ends_call() -> None:
    """An error not matching `on=` ends the call at once, without a hedge."""
    clock = FakeClock(auto_advance=False)
    attempts = Attempts(clock, (0, KeyError("fatal")), (0, "never"))
    with pytest.raises(KeyError, match="fatal"):
        await promptly(Hedge(1.0, on=ValueError, clock=clock).call(attempts))
    assert attempts.started == [1]


async def test_non_matching_error_from_hedge_lets_the_others_finish() -> None:
    """A non-matching error from a hedge stops new hedges, but an attempt still running
    may yet answer: the call waits for it instead of cancelling it."""
    clock = FakeClock(auto_advance=False)
    attempts = Attempts(clock, (10, "slow"), (0, KeyError("fatal")), (0, "never"))
    task = asyncio.create_task(Hedge(1.0, max_hedged=2, on=ValueError, clock=clock).call(attempts))
    await settle()
    clock.advance(1.0)
    await settle(20)
    assert not task.done()
    clock.advance(9.0)
    assert await result_of(task) == "slow"
    assert attempts.started == [1, 2]  # no third attempt after the fatal error
    assert attempts.cancelled == []
    assert others() == set()


async def test_non_matching_error_is_raised_once_nothing_else_runs() -> None:
    """When the attempts still running fail too, the retryable error is raised."""
    clock = FakeClock(auto_advance=False)
    primary = ConnectionError("primary")
    attempts = Attempts(clock, (2, primary), (0, KeyError("fatal")))
    task = asyncio.create_task(Hedge(1.0, on=ConnectionError, clock=clock).call(attempts))
    await settle()
    clock.advance(1.0)
    await settle(20)
    clock.advance(1.0)
    with pytest.raises(ConnectionError) as info:
        await result_of(task)
    assert info.value is primary  # the real failure, not the refusal


@pytest.mark.parametrize("first", ["programming error", "connection error"])
async def test_programming_error_is_raised_over_a_retryable_one(first: str) -> None:
    """
    When one attempt hits a programming error and another a retryable failure, the call
    raises the programming error, whichever came last: an outer Retry must not repeat
    the call's side effects for a bug it would hit again.
    """
    clock = FakeClock(auto_advance=False)
    bug = TypeError("bug")
    primary = (2, ConnectionError("primary")) if first == "programming error" else (2, bug)
    hedged = (0, bug) if first == "programming error" else (0, ConnectionError("hedge"))
    attempts = Attempts(clock, primary, hedged)
    retry = Retry(3, clock=clock)
    task = asyncio.create_task(retry.call(Hedge(1.0, clock=clock).call, attempts))
    await settle()
    clock.advance(1.0)
    await settle(20)
    clock.advance(1.0)
    with pytest.raises(TypeError) as info:
        await result_of(task)
    assert info.value is bug
    assert attempts.started == [1, 2]  # not retried


async def test_refused_hedge_does_not_cancel_the_primary() -> None:
    """A hedge refused by an inner bulkhead leaves the primary running; it answers."""
    clock = FakeClock(auto_advance=False)
    bulkhead = Bulkhead(1)
    attempts = Attempts(clock, (2.0, "primary"), (0, "hedge"))
    task = asyncio.create_task(pipeline(Hedge(1.0, clock=clock), bulkhead).call(attempts))
    await settle()
    clock.advance(1.0)  # the hedge is sent, and the full bulkhead refuses it
    await settle()
    assert bulkhead.statistics().rejected == 1
    assert not task.done()
    clock.advance(1.0)
    assert await result_of(task) == "primary"
    assert (attempts.started, attempts.cancelled) == ([1], [])


async def test_losers_have_unwound_when_the_call_returns() -> None:
    """The cancelled attempts' cleanup has run by the time the call returns."""
    bulkhead = Bulkhead(5)
    cleaned: list[int] = []
    calls = 0

    async def attempt() -> int:
        nonlocal calls
        calls += 1
        number = calls
        try:
            await asyncio.sleep(10 if number == 1 else 0.01)
            return number
        finally:
            cleaned.append(number)

    assert await pipeline(Hedge(0.02), bulkhead).call(attempt) == 2
    assert sorted(cleaned) == [1, 2]
    assert bulkhead.in_flight == 0


async def test_rejection_ends_call_by_default() -> None:
    """By default a RejectedError (e.g. an open circuit) is not hedged."""
    clock = FakeClock(auto_advance=False)
    attempts = Attempts(clock, (0, CircuitOpenError("db", 1.0)), (0, "never"))
    with pytest.raises(CircuitOpenError):
        await promptly(Hedge(1.0, clock=clock).call(attempts))
    assert attempts.started == [1]


async def test_max_hedged_limits_attempts() -> None:
    """At most `max_hedged` extra attempts start, one per `delay`."""
    clock = FakeClock(auto_advance=False)
    hedge = Hedge(1.0, max_hedged=3, clock=clock)
    attempts = Attempts(clock, (100, "slow"))
    with capture_events(HedgeSent) as sent:
        task = asyncio.create_task(hedge.call(attempts))
        for _ in range(6):
            await settle()
            clock.advance(1.0)
        await settle()
    assert attempts.started == [1, 2, 3, 4]
    assert [e.attempt for e in sent if isinstance(e, HedgeSent)] == [2, 3, 4]
    assert hedge.statistics().hedges == 3
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await result_of(task)


# -- cancellation and context ------------------------------------------------------------


async def test_cancelling_caller_cancels_every_attempt() -> None:
    """Cancelling the caller cancels all attempts and sends no more hedges."""
    clock = FakeClock(auto_advance=False)
    attempts = Attempts(clock, (100, "slow"))
    task = asyncio.create_task(Hedge(1.0, max_hedged=2, clock=clock).call(attempts))
    await settle()
    for _ in range(2):
        clock.advance(1.0)
        await settle()
    assert attempts.started == [1, 2, 3]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await result_of(task)
    await settle()
    assert sorted(attempts.cancelled) == [1, 2, 3]
    assert others() == set()
    clock.advance(10)
    await settle()
    assert attempts.started == [1, 2, 3]


async def test_context_reaches_hedged_attempts() -> None:
    """Every attempt sees the caller's context vars and deadline, even one sent by a timer."""
    clock = FakeClock(auto_advance=False)
    attempts = Attempts(clock, (10, "slow"), (1, "hedge"))
    policy = pipeline(Timeout(5.0, clock=clock), Hedge(1.0, clock=clock))

    async def caller() -> Any:
        request_id.set("caller")
        return await policy.call(attempts)

    task = asyncio.create_task(caller())
    await settle()
    clock.advance(1.0)  # the hedge is sent from a timer driven by this (other) task
    await settle()
    clock.advance(1.0)
    assert await result_of(task) == "hedge"
    # Each attempt gets its own copy: the first attempt's change doesn't reach the second.
    assert attempts.seen == [("caller", 5.0), ("caller", 4.0)]
    assert request_id.get() == "unset"


async def test_context_reaches_hedged_attempts_real_clock() -> None:
    """On the real clock, a hedged attempt sees the caller's context vars."""
    seen: list[str] = []

    async def attempt() -> str:
        seen.append(request_id.get())
        if len(seen) == 1:
            await asyncio.sleep(10)  # cancelled when the hedge answers
        return "done"

    async def caller() -> str:
        request_id.set("caller")
        return await Hedge(0.01).call(attempt)

    assert await asyncio.create_task(caller()) == "done"
    assert seen == ["caller", "caller"]


# -- statistics, repr, decorator ----------------------------------------------------------


async def test_statistics_and_repr() -> None:
    """`statistics()` counts calls, hedges and hedge wins; `repr` shows them."""
    clock = FakeClock(auto_advance=False)
    hedge = Hedge(0.5, max_hedged=2, name="search", clock=clock)
    await promptly(hedge.call(Attempts(clock, (0, "first"))))
    await promptly(hedge.call(Attempts(clock, (0, ValueError("x")), (0, "second"))))
    assert hedge.statistics() == HedgeStatistics(calls=2, hedges=1, hedge_wins=1)
    assert repr(hedge) == "<Hedge 'search' delay=0.5s max_hedged=2 calls=2 hedges=1 wins=1>"


async def test_decorator() -> None:
    """As a decorator, Hedge keeps the function's name and passes its arguments."""

    @Hedge(1.0)
    async def lookup(key: str, *, default: int) -> int:
        """Look a key up."""
        return len(key) + default

    assert lookup.__name__ == "lookup"
    assert lookup.__doc__ == "Look a key up."
    assert await lookup("abc", default=1) == 4


# -- misconfiguration -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "param"),
    [
        ((0,), {}, ValueError, "delay"),
        ((-1,), {}, ValueError, "delay"),
        ((math.nan,), {}, ValueError, "delay"),
        (("0.1",), {}, TypeError, "delay"),
        ((None,), {}, TypeError, "delay"),
        ((1,), {"max_hedged": 0}, ValueError, "max_hedged"),
        ((1,), {"max_hedged": 1.5}, TypeError, "max_hedged"),
        ((1,), {"max_hedged": True}, TypeError, "max_hedged"),
        ((1,), {"on": 42}, TypeError, "on"),
        ((1,), {"on": (ValueError, "x")}, TypeError, "on"),
        ((1,), {"name": ""}, ValueError, "name"),
        ((1,), {"clock": "fake"}, TypeError, "clock"),
        ((1,), {"hooks": [1]}, TypeError, "hooks"),
    ],
)
def test_misconfiguration_names_parameter(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], param: str
) -> None:
    """A bad parameter fails at construction with an error naming it."""
    with pytest.raises(error, match=rf"\b{param}\b"):
        Hedge(*args, **kwargs)
