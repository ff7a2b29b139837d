"""
CircuitBreaker in consecutive-failure mode: transitions, rejections, exclusions, events,
statistics, stale outcomes, cancellation, and many concurrent callers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
from collections import Counter
from typing import Any

import pytest

from resilient import (
    BreakerStatistics,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Event,
    Rejected,
    RejectedError,
    RejectionReason,
    ResilienceError,
    StateChanged,
)
from resilient.testing import FakeClock
from tests._aio import settle

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Boom(Exception):
    """The dependency's failure in these tests."""


class Ignorable(Exception):
    """An error the breakers under test are told to exclude."""


async def ok() -> str:
    return "ok"


async def boom() -> str:
    raise Boom


async def succeed(breaker: CircuitBreaker) -> None:
    assert await breaker.call(ok) == "ok"


async def fail(breaker: CircuitBreaker, times: int = 1) -> None:
    for _ in range(times):
        with pytest.raises(Boom):
            await breaker.call(boom)


async def rejection(breaker: CircuitBreaker) -> CircuitOpenError:
    """Call through `breaker`, expect CircuitOpenError, and check fn was not called."""
    called = False

    async def fn() -> str:
        nonlocal called
        called = True
        return "ran"

    with pytest.raises(CircuitOpenError) as info:
        await breaker.call(fn)
    assert not called
    return info.value


class Pending:
    """
    A call parked inside a breaker until the test says how it ends.
    """

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.gate = asyncio.Event()
        self.error: BaseException | None = None
        self.entered = False
        self.task = asyncio.create_task(breaker.call(self._body))

    async def _body(self) -> str:
        self.entered = True
        await self.gate.wait()
        if self.error is not None:
            raise self.error
        return "done"

    async def succeed(self) -> None:
        self.gate.set()
        assert await self.task == "done"

    async def fail(self, error: Exception | None = None) -> None:
        self.error = error or Boom()
        self.gate.set()
        with pytest.raises(type(self.error)):
            await self.task

    async def cancel(self) -> None:
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task
        assert self.task.cancelled()


async def pending(breaker: CircuitBreaker) -> Pending:
    call = Pending(breaker)
    await settle()
    assert call.entered
    return call


async def open_breaker(
    clock: FakeClock | None = None, **options: Any
) -> tuple[CircuitBreaker, FakeClock]:
    """A breaker (threshold 1 unless given) opened at the clock's current time."""
    clock = clock or FakeClock()
    options.setdefault("failure_threshold", 1)
    options.setdefault("reset_timeout", 10.0)
    breaker = CircuitBreaker(clock=clock, **options)
    await fail(breaker, breaker.failure_threshold or 1)
    assert breaker.state is OPEN
    return breaker, clock


# --- closed -> open -----------------------------------------------------------------


async def test_opens_after_failure_threshold_consecutive_failures() -> None:
    """Opens after 5 consecutive failures, not after 4."""
    breaker = CircuitBreaker(failure_threshold=5, clock=FakeClock())
    await fail(breaker, 4)
    assert breaker.state is CLOSED
    await fail(breaker)
    assert breaker.state is OPEN
    assert breaker.statistics().opened == 1


async def test_default_failure_threshold_is_five() -> None:
    """Without options the breaker is in consecutive mode with a threshold of 5."""
    breaker = CircuitBreaker(clock=FakeClock())
    assert breaker.failure_threshold == 5
    await fail(breaker, 4)
    assert breaker.state is CLOSED
    await fail(breaker)
    assert breaker.state is OPEN


async def test_success_resets_the_failure_run() -> None:
    """A success between failures starts the count of consecutive failures over."""
    breaker = CircuitBreaker(failure_threshold=3, clock=FakeClock())
    await fail(breaker, 2)
    await succeed(breaker)
    await fail(breaker, 2)
    assert breaker.state is CLOSED
    assert breaker.statistics().window_failures == 2
    await fail(breaker)
    assert breaker.state is OPEN


async def test_results_and_arguments_pass_through() -> None:
    """A closed breaker returns the wrapped function's result and passes its arguments."""
    breaker = CircuitBreaker(clock=FakeClock())

    async def add(a: int, b: int, *, scale: int) -> int:
        return (a + b) * scale

    assert await breaker.call(add, 1, 2, scale=10) == 30


async def test_decorated_function_goes_through_the_breaker() -> None:
    """A function decorated with the breaker is counted and rejected like .call()."""
    breaker = CircuitBreaker(failure_threshold=2, clock=FakeClock())

    @breaker
    async def flaky(fail_it: bool) -> str:
        if fail_it:
            raise Boom
        return "fine"

    assert await flaky(False) == "fine"
    for _ in range(2):
        with pytest.raises(Boom):
            await flaky(True)
    with pytest.raises(CircuitOpenError):
        await flaky(False)
    assert breaker.statistics().calls == 3


# --- open ---------------------------------------------------------------------------


async def test_open_rejects_with_name_and_retry_in_without_calling() -> None:
    """An open breaker raises CircuitOpenError with its name and the wait; fn is not run."""
    breaker, clock = await open_breaker(name="inventory", reset_timeout=30.0)
    error = await rejection(breaker)
    assert isinstance(error, RejectedError)
    assert isinstance(error, ResilienceError)
    assert error.name == "inventory"
    assert error.retry_in == 30.0
    assert "inventory" in str(error)
    clock.advance(12.5)
    assert (await rejection(breaker)).retry_in == 17.5
    assert breaker.retry_in() == 17.5
    assert breaker.statistics().rejections == 2


async def test_default_name_in_rejection() -> None:
    """A breaker without a name reports itself as 'circuit_breaker'."""
    breaker, _ = await open_breaker()
    assert breaker.name == "circuit_breaker"
    assert (await rejection(breaker)).name == "circuit_breaker"


async def test_stays_open_until_reset_timeout_has_elapsed() -> None:
    """Calls are rejected until reset_timeout has passed; the state stays OPEN meanwhile."""
    breaker, clock = await open_breaker(reset_timeout=10.0)
    clock.advance(9.999)
    assert (await rejection(breaker)).retry_in == pytest.approx(0.001)
    assert breaker.state is OPEN


async def test_state_turns_half_open_only_on_the_next_call() -> None:
    """After reset_timeout the state reads OPEN until a call arrives and becomes a probe."""
    breaker, clock = await open_breaker(reset_timeout=10.0)
    clock.advance(10.0)
    assert breaker.state is OPEN
    assert breaker.retry_in() == 0.0
    seen: list[CircuitState] = []

    async def probe() -> str:
        seen.append(breaker.state)
        return "probed"

    assert await breaker.call(probe) == "probed"
    assert seen == [HALF_OPEN]
    assert breaker.state is CLOSED


# --- half-open ----------------------------------------------------------------------


async def test_success_threshold_successful_probes_close_it() -> None:
    """With success_threshold=3 the breaker closes on the third successful probe."""
    breaker, clock = await open_breaker(success_threshold=3)
    clock.advance(10.0)
    await succeed(breaker)
    await succeed(breaker)
    assert breaker.state is HALF_OPEN
    await succeed(breaker)
    assert breaker.state is CLOSED


async def test_failed_probe_reopens_for_another_reset_timeout() -> None:
    """A failed probe opens the breaker again, with a fresh reset_timeout."""
    breaker, clock = await open_breaker(success_threshold=2, reset_timeout=10.0)
    clock.advance(15.0)
    await succeed(breaker)
    await fail(breaker)
    assert breaker.state is OPEN
    assert breaker.statistics().opened == 2
    assert (await rejection(breaker)).retry_in == 10.0


async def test_closing_forgets_failures_counted_before_opening() -> None:
    """After recovering, a closed breaker needs a full new run of failures to open."""
    breaker, clock = await open_breaker(failure_threshold=3)
    clock.advance(10.0)
    await succeed(breaker)
    assert breaker.state is CLOSED
    assert breaker.statistics().window_failures == 0
    await fail(breaker, 2)
    assert breaker.state is CLOSED


async def test_half_open_max_calls_limits_concurrent_probes() -> None:
    """Only half_open_max_calls probes run at once; others get retry_in 0."""
    breaker, clock = await open_breaker(half_open_max_calls=2, success_threshold=2)
    clock.advance(10.0)
    first, second = await pending(breaker), await pending(breaker)
    assert breaker.state is HALF_OPEN
    error = await rejection(breaker)
    assert error.retry_in == 0.0
    await first.succeed()
    assert breaker.state is HALF_OPEN
    await second.succeed()
    assert breaker.state is CLOSED
    assert breaker.statistics().rejections == 1


async def test_finished_probe_frees_its_permit() -> None:
    """With one permit, a finished probe lets the next probe through."""
    breaker, clock = await open_breaker(half_open_max_calls=1, success_threshold=2)
    clock.advance(10.0)
    probe = await pending(breaker)
    await rejection(breaker)
    await probe.succeed()
    assert breaker.state is HALF_OPEN
    await succeed(breaker)
    assert breaker.state is CLOSED


# --- exclusions ---------------------------------------------------------------------


async def test_excluded_types_are_neither_success_nor_failure() -> None:
    """An excluded error neither counts toward opening nor resets the failure run."""
    breaker = CircuitBreaker(failure_threshold=2, exclude=(Ignorable, KeyError), clock=FakeClock())

    async def ignorable() -> str:
        raise Ignorable

    await fail(breaker)
    for _ in range(5):
        with pytest.raises(Ignorable):
            await breaker.call(ignorable)
    assert breaker.state is CLOSED
    stats = breaker.statistics()
    assert (stats.failures, stats.successes, stats.ignored) == (1, 0, 5)
    await fail(breaker)
    assert breaker.state is OPEN


@pytest.mark.parametrize(
    "make",
    [lambda: Ignorable, lambda: iter([Ignorable]), lambda: [Ignorable]],
    ids=["one class", "iterator", "list"],
)
async def test_excluded_types_may_be_one_class_or_any_iterable(make: Any) -> None:
    """exclude= takes a single exception class as well as a tuple, a list or an iterator
    (read once: validation does not consume it before the breaker keeps it)."""
    breaker = CircuitBreaker(failure_threshold=1, exclude=make(), clock=FakeClock())

    async def ignorable() -> str:
        raise Ignorable

    with pytest.raises(Ignorable):
        await breaker.call(ignorable)
    assert breaker.state is CLOSED
    assert breaker.statistics().ignored == 1


async def test_exclude_predicate_decides_per_error() -> None:
    """A predicate excludes the errors it returns True for and counts the rest."""
    breaker = CircuitBreaker(
        failure_threshold=1,
        exclude=lambda error: isinstance(error, Boom) and error.args == ("client",),
        clock=FakeClock(),
    )

    async def client_error() -> str:
        raise Boom("client")

    with pytest.raises(Boom):
        await breaker.call(client_error)
    assert breaker.state is CLOSED
    await fail(breaker)
    assert breaker.state is OPEN
    stats = breaker.statistics()
    assert (stats.ignored, stats.failures) == (1, 1)


async def test_excluded_probe_keeps_half_open_and_returns_its_permit() -> None:
    """An excluded error from a probe neither closes nor reopens; the permit comes back."""
    breaker, clock = await open_breaker(exclude=Ignorable)
    clock.advance(10.0)
    probe = await pending(breaker)
    await probe.fail(Ignorable())
    assert breaker.state is HALF_OPEN
    await succeed(breaker)
    assert breaker.state is CLOSED


async def test_inner_bulkhead_rejection_is_not_counted() -> None:
    """A BulkheadFullError from inside the call is neither failure nor success."""
    bulkhead = Bulkhead(1, name="inner")
    breaker = CircuitBreaker(failure_threshold=1, clock=FakeClock())

    async def through_bulkhead() -> str:
        return await bulkhead.call(ok)

    async with bulkhead:
        for _ in range(3):
            with pytest.raises(BulkheadFullError):
                await breaker.call(through_bulkhead)
    assert breaker.state is CLOSED
    stats = breaker.statistics()
    assert (stats.failures, stats.successes, stats.ignored) == (0, 0, 3)
    assert await breaker.call(through_bulkhead) == "ok"


async def test_inner_breaker_rejection_is_not_counted() -> None:
    """A CircuitOpenError from an inner breaker does not open the outer one."""
    inner, _ = await open_breaker(name="inner")
    outer = CircuitBreaker(name="outer", failure_threshold=1, clock=FakeClock())

    async def through_inner() -> str:
        return await inner.call(ok)

    with pytest.raises(CircuitOpenError) as info:
        await outer.call(through_inner)
    assert info.value.name == "inner"
    assert outer.state is CLOSED
    assert outer.statistics().ignored == 1


async def test_rejection_inside_a_probe_returns_the_permit() -> None:
    """A probe ending in an inner RejectedError keeps the breaker half-open."""
    breaker, clock = await open_breaker()
    clock.advance(10.0)
    bulkhead = Bulkhead(1)

    async def through_bulkhead() -> str:
        return await bulkhead.call(ok)

    async with bulkhead:
        with pytest.raises(BulkheadFullError):
            await breaker.call(through_bulkhead)
    assert breaker.state is HALF_OPEN
    assert await breaker.call(through_bulkhead) == "ok"
    assert breaker.state is CLOSED


# --- events, statistics, repr -------------------------------------------------------


async def test_state_changes_are_events_with_old_and_new() -> None:
    """Every transition emits StateChanged(old, new) at the clock's time."""
    events: list[Event] = []
    clock = FakeClock()
    breaker = CircuitBreaker(
        name="db", failure_threshold=1, reset_timeout=10.0, clock=clock, hooks=[events.append]
    )
    await fail(breaker)
    clock.advance(10.0)
    await succeed(breaker)
    await fail(breaker)
    clock.advance(10.0)
    await fail(breaker)
    changes = [e for e in events if isinstance(e, StateChanged)]
    assert [(e.old, e.new, e.time) for e in changes] == [
        (CLOSED, OPEN, 0.0),
        (OPEN, HALF_OPEN, 10.0),
        (HALF_OPEN, CLOSED, 10.0),
        (CLOSED, OPEN, 10.0),
        (OPEN, HALF_OPEN, 20.0),
        (HALF_OPEN, OPEN, 20.0),
    ]
    assert {(e.kind, e.name) for e in changes} == {("circuit_breaker", "db")}


async def test_rejections_are_events_with_reason_circuit_open() -> None:
    """Each rejection emits Rejected(reason=CIRCUIT_OPEN), open or half-open and full."""
    events: list[Event] = []
    breaker, clock = await open_breaker(name="db", hooks=[events.append])
    await rejection(breaker)
    clock.advance(10.0)
    probe = await pending(breaker)
    await rejection(breaker)
    await probe.succeed()
    rejected = [e for e in events if isinstance(e, Rejected)]
    assert rejected == [
        Rejected(kind="circuit_breaker", name="db", time=0.0, reason=RejectionReason.CIRCUIT_OPEN),
        Rejected(kind="circuit_breaker", name="db", time=10.0, reason=RejectionReason.CIRCUIT_OPEN),
    ]


async def test_hook_added_later_sees_events_and_can_be_removed() -> None:
    """add_hook starts delivering events; calling its remover stops them."""
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=10.0, clock=FakeClock())
    events: list[Event] = []
    remove = breaker.add_hook(events.append)
    await fail(breaker)
    assert any(isinstance(e, StateChanged) for e in events)
    remove()
    seen = len(events)
    breaker.reset()
    assert len(events) == seen


async def test_statistics_snapshot() -> None:
    """statistics() reports state, counters, window counts, opened and retry_in."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        "stats", failure_threshold=2, reset_timeout=10.0, exclude=Ignorable, clock=clock
    )

    async def ignorable() -> str:
        raise Ignorable

    await succeed(breaker)
    await fail(breaker)
    with pytest.raises(Ignorable):
        await breaker.call(ignorable)
    assert breaker.statistics() == BreakerStatistics(
        state=CLOSED,
        calls=3,
        successes=1,
        failures=1,
        ignored=1,
        rejections=0,
        slow_calls=0,
        window_calls=1,
        window_failures=1,
        opened=0,
        retry_in=0.0,
    )
    await fail(breaker)
    clock.advance(3.0)
    await rejection(breaker)
    stats = breaker.statistics()
    assert stats == BreakerStatistics(
        state=OPEN,
        calls=4,
        successes=1,
        failures=2,
        ignored=1,
        rejections=1,
        slow_calls=0,
        window_calls=2,
        window_failures=2,
        opened=1,
        retry_in=7.0,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.calls = 0  # type: ignore[misc]  # proving the snapshot is frozen


async def test_repr_shows_name_state_and_failure_count() -> None:
    """repr shows the name, the state and the failure run against the threshold."""
    breaker = CircuitBreaker("inventory", failure_threshold=3, clock=FakeClock())
    assert repr(breaker) == "<CircuitBreaker 'inventory' closed failures=0/3>"
    await fail(breaker)
    assert repr(breaker) == "<CircuitBreaker 'inventory' closed failures=1/3>"
    await fail(breaker, 2)
    assert repr(breaker) == "<CircuitBreaker 'inventory' open failures=3/3>"


# --- trip and reset -----------------------------------------------------------------


async def test_trip_opens_now_and_reset_closes_now() -> None:
    """trip() opens whatever the counts; reset() closes and forgets the failure run."""
    events: list[Event] = []
    clock = FakeClock()
    breaker = CircuitBreaker(
        failure_threshold=2, reset_timeout=10.0, clock=clock, hooks=[events.append]
    )
    await fail(breaker)
    breaker.trip()
    assert breaker.state is OPEN
    assert (await rejection(breaker)).retry_in == 10.0
    assert breaker.statistics().opened == 1
    breaker.reset()
    assert breaker.state is CLOSED
    await fail(breaker)
    assert breaker.state is CLOSED
    breaker.reset()
    await fail(breaker)
    assert breaker.state is CLOSED
    assert breaker.statistics().window_failures == 1
    changes = [(e.old, e.new) for e in events if isinstance(e, StateChanged)]
    assert changes == [(CLOSED, OPEN), (OPEN, CLOSED)]


async def test_trip_from_half_open_reopens() -> None:
    """trip() during half-open reopens the breaker and strands the running probe."""
    breaker, clock = await open_breaker()
    clock.advance(10.0)
    probe = await pending(breaker)
    breaker.trip()
    assert breaker.state is OPEN
    await probe.succeed()
    assert breaker.state is OPEN
    assert breaker.statistics().opened == 2


# --- stale outcomes -----------------------------------------------------------------


async def test_stale_failure_after_opening_does_not_change_state() -> None:
    """A slow call admitted while closed that fails after the breaker opened changes nothing."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=10.0, clock=clock)
    slow = await pending(breaker)
    await fail(breaker, 2)
    assert breaker.state is OPEN
    clock.advance(4.0)
    await slow.fail()
    assert breaker.state is OPEN
    stats = breaker.statistics()
    assert stats.opened == 1
    assert stats.retry_in == 6.0
    assert stats.failures == 3


async def test_stale_outcomes_while_half_open_are_ignored() -> None:
    """Calls admitted while closed neither close nor reopen a half-open breaker."""
    clock = FakeClock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=10.0, clock=clock)
    stale_failure, stale_success = await pending(breaker), await pending(breaker)
    await fail(breaker)
    clock.advance(10.0)
    probe = await pending(breaker)
    assert breaker.state is HALF_OPEN
    await stale_failure.fail()
    assert breaker.state is HALF_OPEN
    await stale_success.succeed()
    assert breaker.state is HALF_OPEN
    # The probe's permit is still taken: the stale success did not free it.
    assert (await rejection(breaker)).retry_in == 0.0
    await probe.succeed()
    assert breaker.state is CLOSED


async def test_stale_failure_after_reset_is_not_in_the_new_run() -> None:
    """A call admitted before reset() that fails afterwards does not count toward opening."""
    breaker = CircuitBreaker(failure_threshold=2, clock=FakeClock())
    stale = await pending(breaker)
    breaker.trip()
    breaker.reset()
    await fail(breaker)
    await stale.fail()
    assert breaker.state is CLOSED
    assert breaker.statistics().window_failures == 1


async def test_stale_probe_failing_after_reset_does_not_reopen() -> None:
    """A probe that fails after an operator reset() closed the breaker changes nothing."""
    breaker, clock = await open_breaker()
    clock.advance(10.0)
    probe = await pending(breaker)
    breaker.reset()
    await probe.fail()
    assert breaker.state is CLOSED
    assert breaker.statistics().opened == 1


async def test_stale_probe_success_does_not_close_a_reopened_breaker() -> None:
    """With two probes, one fails (reopening); the other's later success is ignored."""
    breaker, clock = await open_breaker(half_open_max_calls=2)
    clock.advance(10.0)
    first, second = await pending(breaker), await pending(breaker)
    await first.fail()
    assert breaker.state is OPEN
    await second.succeed()
    assert breaker.state is OPEN
    assert (await rejection(breaker)).retry_in == 10.0


# --- cancellation -------------------------------------------------------------------


async def test_cancelled_probe_returns_its_permit_and_is_not_a_failure() -> None:
    """A cancelled probe frees its permit (the next call probes) and is not a failure."""
    breaker, clock = await open_breaker(half_open_max_calls=1)
    clock.advance(10.0)
    probe = await pending(breaker)
    assert (await rejection(breaker)).retry_in == 0.0
    await probe.cancel()
    assert breaker.state is HALF_OPEN
    stats = breaker.statistics()
    assert (stats.failures, stats.ignored) == (1, 1)
    await succeed(breaker)
    assert breaker.state is CLOSED


async def test_cancellation_while_closed_is_never_a_failure() -> None:
    """Cancelled calls do not open a breaker with failure_threshold=1, nor reset its run."""
    breaker = CircuitBreaker(failure_threshold=2, clock=FakeClock())
    await fail(breaker)
    for _ in range(3):
        await (await pending(breaker)).cancel()
    assert breaker.state is CLOSED
    stats = breaker.statistics()
    assert (stats.failures, stats.successes, stats.ignored) == (1, 0, 3)
    await fail(breaker)
    assert breaker.state is OPEN


async def test_stale_cancellation_changes_nothing() -> None:
    """A call admitted while closed and cancelled after opening leaves the breaker open."""
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=10.0, clock=FakeClock())
    stale = await pending(breaker)
    await fail(breaker)
    await stale.cancel()
    assert breaker.state is OPEN
    stats = breaker.statistics()
    assert (stats.failures, stats.ignored, stats.opened) == (1, 1, 1)


async def test_cancelled_error_raised_by_the_call_propagates_uncounted() -> None:
    """A CancelledError raised by the wrapped function propagates and is not a failure."""
    breaker = CircuitBreaker(failure_threshold=1, exclude=(), clock=FakeClock())

    async def cancelled() -> str:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        await breaker.call(cancelled)
    assert breaker.state is CLOSED
    assert breaker.statistics().ignored == 1


# --- many concurrent callers --------------------------------------------------------


def planned(i: int) -> str:
    """What task i does: a deterministic mix of outcomes."""
    if i % 10 == 3:
        return "self-cancel"
    if i % 10 == 7:
        return "cancelled"
    if i % 10 == 9:
        return "excluded"
    if 300 <= i < 500 or i % 4 == 1:
        return "failed"
    return "ok"


class Crowd:
    """
    Tasks sharing one breaker, logging admissions and outcomes in the order it sees them.
    """

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.breaker = breaker
        self.log: list[tuple[str, int]] = []

    async def work(self, i: int) -> int:
        self.log.append(("enter", i))
        plan = planned(i)
        task = asyncio.current_task()
        assert task is not None
        try:
            for _ in range(i % 3):
                await asyncio.sleep(0)
            if plan == "self-cancel":
                task.cancel()
                await asyncio.sleep(0)
            elif plan == "cancelled":
                asyncio.get_running_loop().call_soon(task.cancel)
                await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.log.append(("cancelled", i))
            raise
        self.log.append((plan, i))
        if plan == "failed":
            raise Boom
        if plan == "excluded":
            raise Ignorable
        return i

    async def worker(self, i: int) -> str:
        for _ in range(i // 100):
            await asyncio.sleep(0)
        try:
            await self.breaker.call(self.work, i)
        except CircuitOpenError:
            self.log.append(("rejected", i))
            return "rejected"
        except Boom:
            return "failed"
        except Ignorable:
            return "excluded"
        return "ok"

    def replay(self, threshold: int) -> tuple[CircuitState, int, int]:
        """
        Run the log through the documented semantics; return (state, opened, run).
        """
        state, generation, run, opened = CLOSED, 0, 0, 0
        admitted_in: dict[int, int] = {}
        for kind, i in self.log:
            if kind == "enter":
                assert state is CLOSED, f"task {i} admitted while {state}"
                admitted_in[i] = generation
            elif kind == "rejected":
                assert state is OPEN, f"task {i} rejected while {state}"
            elif kind in {"ok", "failed"} and admitted_in[i] == generation:
                run = run + 1 if kind == "failed" else 0
                if run >= threshold:
                    state, generation, opened = OPEN, generation + 1, opened + 1
        return state, opened, run


async def test_thousand_concurrent_tasks_keep_consistent_counts() -> None:
    """1,000 tasks sharing one breaker: counters add up and match a replay of the calls."""
    threshold = 25
    breaker = CircuitBreaker(failure_threshold=threshold, exclude=Ignorable, clock=FakeClock())
    crowd = Crowd(breaker)
    results = await asyncio.gather(*(crowd.worker(i) for i in range(1000)), return_exceptions=True)
    outcomes = Counter(r if isinstance(r, str) else type(r).__name__ for r in results)
    entered = {i for kind, i in crowd.log if kind == "enter"}
    stats = breaker.statistics()

    # The counters add up, and agree with what the tasks saw.
    assert stats.calls == stats.successes + stats.failures + stats.ignored == len(entered)
    assert stats.calls + stats.rejections == 1000
    assert stats.successes == outcomes["ok"]
    assert stats.failures == outcomes["failed"]
    assert stats.ignored == outcomes["excluded"] + outcomes["CancelledError"]
    assert stats.rejections == outcomes["rejected"]
    plans = Counter(planned(i) for i in entered)
    assert (outcomes["ok"], outcomes["failed"]) == (plans["ok"], plans["failed"])
    assert outcomes["CancelledError"] == plans["cancelled"] + plans["self-cancel"]
    # Every kind of outcome happened, and the breaker opened part-way through.
    assert set(outcomes) == {"ok", "failed", "excluded", "rejected", "CancelledError"}
    # Replaying the log through the documented semantics gives the same state.
    state, opened, run = crowd.replay(threshold)
    assert (stats.state, stats.opened) == (state, opened) == (OPEN, 1)
    assert stats.window_failures == run == threshold


async def test_thousand_concurrent_callers_while_half_open_admit_only_the_permits() -> None:
    """Of 1,000 simultaneous callers after reset_timeout, exactly half_open_max_calls probe."""
    breaker, clock = await open_breaker(half_open_max_calls=5, success_threshold=5)
    clock.advance(10.0)
    gate = asyncio.Event()
    entered = 0

    async def probe() -> str:
        nonlocal entered
        entered += 1
        await gate.wait()
        return "ok"

    tasks = [asyncio.create_task(breaker.call(probe)) for _ in range(1000)]
    await settle()
    assert entered == 5
    rejected = [t for t in tasks if t.done()]
    assert len(rejected) == 995
    errors = [t.exception() for t in rejected]
    assert all(isinstance(e, CircuitOpenError) and e.retry_in == 0 for e in errors)
    gate.set()
    running = [t for t in tasks if not t.done()]
    assert await asyncio.gather(*running) == ["ok"] * 5
    assert breaker.state is CLOSED
    stats = breaker.statistics()
    assert (stats.calls, stats.successes, stats.rejections) == (6, 5, 995)


# --- construction -------------------------------------------------------------------


BAD_PARAMETERS: list[tuple[dict[str, Any], str, type[Exception]]] = [
    ({"failure_threshold": 0}, "failure_threshold", ValueError),
    ({"failure_threshold": -3}, "failure_threshold", ValueError),
    ({"failure_threshold": 2.5}, "failure_threshold", TypeError),
    ({"failure_threshold": True}, "failure_threshold", TypeError),
    ({"failure_threshold": "5"}, "failure_threshold", TypeError),
    ({"failure_rate": 0}, "failure_rate", ValueError),
    ({"failure_rate": 2}, "failure_rate", ValueError),
    ({"failure_rate": -0.5}, "failure_rate", ValueError),
    ({"failure_rate": math.nan}, "failure_rate", ValueError),
    ({"failure_rate": True}, "failure_rate", TypeError),
    ({"failure_rate": "0.5"}, "failure_rate", TypeError),
    ({"window": 0}, "window", ValueError),
    ({"window": 10.0}, "window", TypeError),
    ({"window": False}, "window", TypeError),
    ({"window_duration": 0}, "window_duration", ValueError),
    ({"window_duration": -1.0}, "window_duration", ValueError),
    ({"window_duration": math.inf}, "window_duration", ValueError),
    ({"window_duration": 5e-324}, "window_duration", ValueError),  # buckets divided by 0
    ({"min_calls": 0}, "min_calls", ValueError),
    ({"window_duration": 5.0, "min_calls": 0}, "min_calls", ValueError),
    ({"min_calls": "10"}, "min_calls", TypeError),
    # Accepted, this tried to allocate 10 GB (a byte per call in the window).
    ({"window": 10**10}, "window", ValueError),
    ({"slow_call_duration": 0}, "slow_call_duration", ValueError),
    ({"slow_call_duration": math.nan}, "slow_call_duration", ValueError),
    ({"slow_call_duration": True}, "slow_call_duration", TypeError),
    ({"slow_call_rate": 1.5}, "slow_call_rate", ValueError),
    ({"slow_call_rate": 0.0}, "slow_call_rate", ValueError),
    ({"reset_timeout": 0}, "reset_timeout", ValueError),
    ({"reset_timeout": -1}, "reset_timeout", ValueError),
    ({"reset_timeout": math.inf}, "reset_timeout", ValueError),
    ({"reset_timeout": math.nan}, "reset_timeout", ValueError),
    ({"reset_timeout": "30"}, "reset_timeout", TypeError),
    ({"reset_timeout": True}, "reset_timeout", TypeError),
    ({"success_threshold": 0}, "success_threshold", ValueError),
    ({"success_threshold": 1.0}, "success_threshold", TypeError),
    ({"half_open_max_calls": 0}, "half_open_max_calls", ValueError),
    ({"half_open_max_calls": True}, "half_open_max_calls", TypeError),
    ({"exclude": 42}, "exclude", TypeError),
    ({"exclude": (ValueError, "KeyError")}, "exclude", TypeError),
    ({"name": ""}, "name", ValueError),
    ({"clock": object()}, "clock", TypeError),
    ({"hooks": [42]}, "hooks", TypeError),
]


@pytest.mark.parametrize(
    ("kwargs", "param", "error"),
    BAD_PARAMETERS,
    ids=[f"{param}={kwargs}" for kwargs, param, _ in BAD_PARAMETERS],
)
def test_bad_parameter_raises_naming_it(
    kwargs: dict[str, Any], param: str, error: type[Exception]
) -> None:
    """A bad parameter fails at construction with ValueError/TypeError naming it."""
    with pytest.raises(error) as info:
        CircuitBreaker(**kwargs)
    assert type(info.value) is error
    assert param in str(info.value)
    assert "CircuitBreaker" in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "failures"),
    [
        ({"failure_threshold": 1, "success_threshold": 1, "half_open_max_calls": 1}, 1),
        ({"reset_timeout": 0.001}, 5),
        ({"reset_timeout": 5}, 5),
        (
            {
                "failure_rate": 1,
                "slow_call_rate": 1.0,
                "slow_call_duration": 1.0,
                "window": 1,
                "min_calls": 1,
            },
            1,
        ),
        ({"window_duration": 0.5, "min_calls": 1}, 1),
        ({"exclude": lambda error: False}, 5),
    ],
)
async def test_edge_values_are_accepted(kwargs: dict[str, Any], failures: int) -> None:
    """Boundary values in range build a breaker that honours them: it opens on the failure
    they imply and not before, and a probe once reset_timeout has passed closes it."""
    clock = FakeClock()
    breaker = CircuitBreaker(clock=clock, **kwargs)
    await fail(breaker, failures - 1)
    assert breaker.state is CLOSED
    await fail(breaker)
    assert breaker.state is OPEN
    clock.advance(kwargs.get("reset_timeout", 30.0))
    await succeed(breaker)
    assert breaker.state is CLOSED


def test_slow_call_rate_needs_slow_call_duration() -> None:
    """slow_call_rate without slow_call_duration is a ValueError, not a silent mode switch."""
    with pytest.raises(ValueError, match="slow_call_rate"):
        CircuitBreaker(slow_call_rate=0.2)
