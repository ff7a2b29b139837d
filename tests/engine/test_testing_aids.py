"""
Tests for `resilient.testing`: FakeClock, instant_retries and capture_events.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, TypeVar

import pytest
import tenacity

from resilient import (
    CallStarted,
    CallSucceeded,
    Clock,
    Event,
    Fallback,
    Retry,
    RetryScheduled,
    Timeout,
)
from resilient._engine.hooks import global_hooks
from resilient._policies.retry import instant_retries_enabled
from resilient.testing import FakeClock, capture_events, instant_retries, set_instant_retries
from tests._aio import result_of, settle

T = TypeVar("T")


async def fail() -> None:
    raise ValueError("boom")


# -- FakeClock ---------------------------------------------------------------------------


def test_fake_clock_is_a_clock() -> None:
    """FakeClock satisfies the Clock protocol and starts where told."""
    clock = FakeClock(start=5.0, wall_start=1000.0)
    assert isinstance(clock, Clock)
    assert clock.monotonic() == 5.0
    assert clock.wall() == 1000.0


async def test_auto_advance_sleep_moves_time_at_once() -> None:
    """With auto_advance, sleep moves time by its duration without real waiting."""
    clock = FakeClock(wall_start=1000.0)
    started = time.monotonic()
    await clock.sleep(3600)
    await clock.sleep(0.5)
    assert time.monotonic() - started < 1.0
    assert clock.monotonic() == 3600.5
    assert clock.wall() == 1000.0 + 3600.5
    assert clock.sleeps == [3600, 0.5]


async def test_sleep_zero_yields_but_is_not_recorded() -> None:
    """`sleep(0)` (and negative) takes no time, is not recorded, and still yields once."""
    clock = FakeClock()
    ran: list[str] = []

    async def other() -> None:
        ran.append("other")

    task = asyncio.create_task(other())
    await clock.sleep(0)
    assert ran == ["other"]
    await clock.sleep(-1)
    assert clock.sleeps == []
    assert clock.monotonic() == 0.0
    await result_of(task)


async def test_manual_mode_sleep_waits_for_advance() -> None:
    """With auto_advance=False, sleep returns only once advance() passes its end."""
    clock = FakeClock(auto_advance=False)
    task = asyncio.create_task(clock.sleep(2.0))
    await settle(3)
    assert clock.sleeps == [2.0]
    clock.advance(1.5)
    await settle(3)
    assert not task.done()
    clock.advance(0.5)
    await settle(3)
    assert task.done()
    assert clock.monotonic() == 2.0


async def test_cancelled_manual_sleep_is_harmless() -> None:
    """Cancelling a manual-mode sleep and later advancing past its end raises nothing."""
    clock = FakeClock(auto_advance=False)
    task = asyncio.create_task(clock.sleep(1.0))
    await settle(3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await result_of(task)
    clock.advance(2.0)
    await settle(3)
    assert clock.pending_timers == 0


async def test_advance_fires_due_timers_in_order_from_the_loop() -> None:
    """advance() runs due timers in time order (ties by scheduling order), via the loop."""
    clock = FakeClock(auto_advance=False)
    fired: list[str] = []
    clock.call_at(3.0, lambda: fired.append("t3"))
    clock.call_at(1.0, lambda: fired.append("t1"))
    clock.call_at(2.0, lambda: fired.append("t2a"))
    clock.call_at(2.0, lambda: fired.append("t2b"))
    clock.call_at(9.0, lambda: fired.append("t9"))
    assert clock.pending_timers == 5
    clock.advance(5.0)
    assert fired == []  # not inside advance(): from the event loop
    await settle(3)
    assert fired == ["t1", "t2a", "t2b", "t3"]
    assert clock.pending_timers == 1
    clock.advance(4.0)
    await settle(3)
    assert fired[-1] == "t9"
    assert clock.pending_timers == 0


async def test_cancelled_timer_does_not_fire() -> None:
    """A timer cancelled before it is due, or after it is due but before it ran, never runs."""
    clock = FakeClock(auto_advance=False)
    fired: list[str] = []
    early = clock.call_at(1.0, lambda: fired.append("early"))
    late = clock.call_at(2.0, lambda: fired.append("late"))
    early.cancel()
    assert clock.pending_timers == 1
    clock.advance(2.0)
    late.cancel()  # due and queued on the loop, but not yet run
    await settle(3)
    assert fired == []


async def test_timer_in_the_past_fires_soon() -> None:
    """A timer scheduled at or before the current time fires on the next loop turn."""
    clock = FakeClock(start=10.0, auto_advance=False)
    fired: list[float] = []
    clock.call_at(5.0, lambda: fired.append(clock.monotonic()))
    assert fired == []
    await settle(3)
    assert fired == [10.0]


def test_negative_advance_raises() -> None:
    """Time can't go backwards: advance(-1) is a ValueError."""
    clock = FakeClock(start=3.0)
    with pytest.raises(ValueError, match="backwards"):
        clock.advance(-1)
    assert clock.monotonic() == 3.0


def test_a_fake_timer_due_outside_a_loop_is_not_lost() -> None:
    """advance() outside a running loop, with a timer coming due, is refused before
    anything moves: the timer stays, the Timeout that armed it still fires later
    (adversary adv24: the timer was popped, then get_running_loop() raised, and the
    watchdog, still believing itself armed, never enforced another deadline)."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(1.0, clock=clock)
    loop = asyncio.new_event_loop()
    try:
        assert loop.run_until_complete(timeout.call(asyncio.sleep, 0, "ok")) == "ok"
        assert clock.pending_timers == 1  # the watchdog's, for the ended call
        with pytest.raises(RuntimeError, match="no event loop is running"):
            clock.advance(2.0)
        assert clock.monotonic() == 0.0  # refused whole: time did not move either
        assert clock.pending_timers == 1

        async def overrun() -> str:
            task = asyncio.ensure_future(timeout.call(asyncio.Event().wait))
            await asyncio.sleep(0)
            clock.advance(5.0)  # well past its deadline (1.0)
            for _ in range(5):
                await asyncio.sleep(0)
            if not task.done():
                task.cancel()
                return "still running"
            return type(task.exception()).__name__

        assert loop.run_until_complete(overrun()) == "TimeoutExceeded"
    finally:
        loop.close()


def test_advance_outside_a_loop_is_fine_when_no_live_timer_comes_due() -> None:
    """No timer due (or only cancelled ones): advance() needs no loop, as a breaker's
    reset_timeout test advancing time in plain code expects."""
    clock = FakeClock(auto_advance=False)
    clock.advance(3.0)
    cancelled = clock.call_at(4.0, lambda: None)
    cancelled.cancel()
    later = clock.call_at(100.0, lambda: None)
    clock.advance(10.0)
    assert clock.monotonic() == 13.0
    assert clock.pending_timers == 1
    later.cancel()


def test_a_timer_due_at_once_outside_a_loop_is_refused_and_not_scheduled() -> None:
    """call_at() for a time already reached needs the loop to run it: refused, not
    half-done (no handle returned yet a timer queued)."""
    clock = FakeClock(auto_advance=False)
    clock.advance(5.0)
    with pytest.raises(RuntimeError, match="no event loop is running"):
        clock.call_at(5.0, lambda: None)
    assert clock.pending_timers == 0
    clock.call_at(6.0, lambda: None).cancel()  # a future time needs no loop yet


def test_repr() -> None:
    """The repr shows the time and pending timers."""
    clock = FakeClock(start=2.5)
    assert repr(clock) == "<FakeClock t=2.5 pending_timers=0>"


async def test_fake_clock_drives_policies() -> None:
    """A policy built with the fake clock times out exactly when the clock is advanced."""
    clock = FakeClock(auto_advance=False)
    task = asyncio.create_task(Timeout(30.0, clock=clock).call(clock.sleep, 60))
    await settle(3)
    clock.advance(29.0)
    await settle(3)
    assert not task.done()
    clock.advance(1.0)
    await settle(3)
    assert task.done()
    assert isinstance(task.exception(), TimeoutError)


# -- instant_retries ---------------------------------------------------------------------


async def test_instant_retries_skip_real_sleeps() -> None:
    """Within instant_retries(), a Retry on the real clock doesn't sleep."""
    retry = Retry(attempts=3, wait=tenacity.wait_fixed(30))
    started = time.monotonic()
    with instant_retries(), pytest.raises(ValueError, match="boom"):
        await retry.call(fail)
    assert time.monotonic() - started < 1.0
    assert retry.statistics().retries == 2


def test_instant_retries_restores_previous_state() -> None:
    """instant_retries() restores whatever setting was in force, even on error."""
    assert instant_retries_enabled() is False
    with instant_retries():
        assert instant_retries_enabled() is True
        with instant_retries():
            assert instant_retries_enabled() is True
        assert instant_retries_enabled() is True  # the outer block still holds
    assert instant_retries_enabled() is False

    with pytest.raises(RuntimeError), instant_retries():
        raise RuntimeError
    assert instant_retries_enabled() is False

    set_instant_retries(True)
    try:
        with instant_retries():
            pass
        assert instant_retries_enabled() is True  # it was on before the block
    finally:
        set_instant_retries(False)
    assert instant_retries_enabled() is False


async def test_set_instant_retries_switch() -> None:
    """set_instant_retries(True/False) turns skipping on and off for every Retry."""
    clock = FakeClock()
    retry = Retry(attempts=2, wait=tenacity.wait_fixed(4), clock=clock)
    set_instant_retries(True)
    try:
        with pytest.raises(ValueError, match="boom"):
            await retry.call(fail)
    finally:
        set_instant_retries(False)
    assert clock.sleeps == []
    with pytest.raises(ValueError, match="boom"):
        await retry.call(fail)
    assert clock.sleeps == [4.0]


# -- capture_events ----------------------------------------------------------------------


async def test_capture_events_collects_in_order() -> None:
    """capture_events() collects every event emitted within the block, in order."""
    clock = FakeClock()
    with capture_events() as events:
        await Fallback(0, name="f", clock=clock).call(fail)
    assert [type(e).__name__ for e in events] == ["CallStarted", "FallbackUsed", "CallSucceeded"]
    assert all(isinstance(e, Event) and e.name == "f" for e in events)


async def test_capture_events_filters_by_kind() -> None:
    """capture_events(kind=...) keeps only events of that type."""
    retry = Retry(attempts=3, wait=tenacity.wait_fixed(1), clock=FakeClock())
    with (
        capture_events(RetryScheduled) as scheduled,
        capture_events(CallStarted) as started,
        pytest.raises(ValueError, match="boom"),
    ):
        await retry.call(fail)
    assert [type(e) for e in scheduled] == [RetryScheduled, RetryScheduled]
    assert [type(e) for e in started] == [CallStarted]


async def test_capture_events_unregisters_on_exit() -> None:
    """Leaving the block (normally or by an exception) removes the hook."""
    before = list(global_hooks())
    with capture_events() as events:
        assert len(global_hooks()) == len(before) + 1
    assert global_hooks() == before
    await Fallback(0).call(fail)
    assert events == []

    with pytest.raises(RuntimeError), capture_events():
        raise RuntimeError
    assert global_hooks() == before


async def test_capture_events_takes_a_tuple_or_union_of_kinds() -> None:
    """Several event classes at once, as `isinstance` takes them, still filter; only
    what is no event class is refused."""
    retry = Retry(attempts=2, wait=tenacity.wait_fixed(1), clock=FakeClock())
    with (
        capture_events((RetryScheduled, CallStarted)) as as_tuple,
        capture_events(RetryScheduled | CallStarted) as as_union,  # type: ignore[arg-type]
        pytest.raises(ValueError, match="boom"),
    ):
        await retry.call(fail)
    assert [type(e) for e in as_tuple] == [CallStarted, RetryScheduled]
    assert [type(e) for e in as_union] == [CallStarted, RetryScheduled]
    with (
        pytest.raises(TypeError, match="expected an event class"),
        capture_events((RetryScheduled, 1)),  # type: ignore[arg-type]
    ):
        pass


@pytest.mark.parametrize("kind", [Timeout(1.0), "retry", None, (), (CallSucceeded, "x")])
def test_capture_events_of_something_not_an_event_class_is_a_type_error(kind: Any) -> None:
    """A policy (or its kind, or nothing) passed as the kind fails at once, saying how to
    keep one policy's events, not in every hook call after."""
    with (
        pytest.raises(
            TypeError, match=r"expected an event class .* filter the list on event\.name"
        ),
        capture_events(kind),
    ):
        pass


def test_capture_events_of_a_policy_names_it() -> None:
    """The message shows what was passed."""
    with (
        pytest.raises(TypeError, match=r"capture_events\(kind=<Timeout"),
        capture_events(
            Timeout(1.0)  # type: ignore[arg-type]
        ),
    ):
        pass
