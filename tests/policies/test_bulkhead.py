"""
Bulkhead: the concurrency cap, the bounded FIFO queue, max_wait, cancellation that never
leaks a slot, the async-with form, events, statistics and parameter checks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from typing import Any

import pytest

from resilient import (
    Bulkhead,
    BulkheadFullError,
    BulkheadStatistics,
    Event,
    Rejected,
    RejectedError,
    RejectionReason,
    ResilienceError,
)
from resilient.testing import FakeClock
from tests._aio import settle, within


class Boom(Exception):
    """The dependency's failure in these tests."""


class Held:
    """
    A call through a bulkhead that, once it has a slot, holds it until released.
    """

    def __init__(
        self, bulkhead: Bulkhead, label: object = None, log: list[object] | None = None
    ) -> None:
        self.gate = asyncio.Event()
        self.running = False
        self.label = label
        self.log = log
        self.task = asyncio.create_task(bulkhead.call(self._body))

    async def _body(self) -> object:
        self.running = True
        if self.log is not None:
            self.log.append(self.label)
        try:
            await self.gate.wait()
        finally:
            self.running = False
        return self.label

    async def release(self) -> None:
        self.gate.set()
        await within(self.task)


async def hold(bulkhead: Bulkhead, count: int = 1) -> list[Held]:
    """Start `count` calls and let them take slots or queue."""
    calls = [Held(bulkhead, label=i) for i in range(count)]
    await settle()
    return calls


async def rejected_at_once(bulkhead: Bulkhead) -> BulkheadFullError:
    """Call through a full bulkhead: BulkheadFullError, and fn never runs."""
    called = False

    async def fn() -> None:
        nonlocal called
        called = True

    with pytest.raises(BulkheadFullError) as info:
        await within(bulkhead.call(fn))
    assert not called
    return info.value


# --- the cap ------------------------------------------------------------------------


async def test_max_concurrent_limits_calls_in_flight() -> None:
    """At most max_concurrent calls run at once; the rest queue; all complete in the end."""
    bulkhead = Bulkhead(2, max_queue=10)
    active = peak = 0
    gate = asyncio.Event()

    async def work(i: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await gate.wait()
        active -= 1
        return i

    tasks = [asyncio.create_task(bulkhead.call(work, i)) for i in range(7)]
    await settle()
    assert (bulkhead.in_flight, bulkhead.queued, active) == (2, 5, 2)
    gate.set()
    assert await within(asyncio.gather(*tasks)) == list(range(7))
    assert peak == 2
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)
    assert bulkhead.statistics().accepted == 7


async def test_free_slot_is_taken_without_waiting() -> None:
    """Below the cap a call runs at once and its result is returned."""
    bulkhead = Bulkhead(3)

    async def add(a: int, b: int) -> int:
        assert bulkhead.in_flight == 1
        return a + b

    assert await bulkhead.call(add, 2, b=3) == 5
    assert bulkhead.in_flight == 0


async def test_no_queue_rejects_at_once_with_details() -> None:
    """With max_queue=0 a call finding no free slot fails at once with BulkheadFullError."""
    bulkhead = Bulkhead(1, name="payments")
    (holder,) = await hold(bulkhead)
    error = await rejected_at_once(bulkhead)
    assert isinstance(error, RejectedError)
    assert isinstance(error, ResilienceError)
    assert (error.name, error.max_concurrent, error.max_queue) == ("payments", 1, 0)
    assert "payments" in str(error)
    assert "max_concurrent=1" in str(error)
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    await holder.release()
    assert bulkhead.in_flight == 0


async def test_full_queue_rejects_further_callers() -> None:
    """Once max_queue callers wait, the next is rejected at once."""
    bulkhead = Bulkhead(1, max_queue=2)
    calls = await hold(bulkhead, 3)
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 2)
    error = await rejected_at_once(bulkhead)
    assert (error.max_concurrent, error.max_queue) == (1, 2)
    for call in calls:
        await call.release()
    stats = bulkhead.statistics()
    assert (stats.accepted, stats.rejected) == (3, 1)


async def test_queue_is_fifo() -> None:
    """Waiters get slots in the order they arrived."""
    bulkhead = Bulkhead(1, max_queue=5)
    order: list[object] = []
    calls = [Held(bulkhead, label=i, log=order) for i in range(6)]
    await settle()
    assert order == [0]
    for call in calls:
        await call.release()
        await settle()
    assert order == list(range(6))


async def test_released_slot_goes_to_the_waiter_not_a_newcomer() -> None:
    """A released slot is handed to the first waiter; a newcomer can't overtake the queue."""
    bulkhead = Bulkhead(1, max_queue=2)
    order: list[object] = []
    async with bulkhead:
        waiter = Held(bulkhead, label="waiter", log=order)
        await settle()
        assert bulkhead.queued == 1
    # The slot already belongs to the waiter, which has not run yet.
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    newcomer = Held(bulkhead, label="newcomer", log=order)
    await settle()
    assert order == ["waiter"]
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 1)
    await waiter.release()
    await newcomer.release()
    assert order == ["waiter", "newcomer"]


async def test_decorated_function_is_limited() -> None:
    """A function decorated with the bulkhead is subject to its cap."""
    bulkhead = Bulkhead(1)
    gate = asyncio.Event()

    @bulkhead
    async def guarded() -> str:
        await gate.wait()
        return "done"

    first = asyncio.create_task(guarded())
    await settle()
    with pytest.raises(BulkheadFullError):
        await within(guarded())
    gate.set()
    assert await within(first) == "done"


# --- max_wait -----------------------------------------------------------------------


async def test_max_wait_expiry_rejects_with_fake_clock() -> None:
    """A waiter still queued after max_wait is rejected; the slot holder is unaffected."""
    clock = FakeClock(auto_advance=False)
    bulkhead = Bulkhead(1, max_queue=1, max_wait=5.0, clock=clock)
    holder, waiter = await hold(bulkhead, 2)
    clock.advance(4.9)
    await settle()
    assert not waiter.task.done()
    assert bulkhead.queued == 1
    clock.advance(0.1)
    await settle()
    with pytest.raises(BulkheadFullError, match="waited 5s") as info:
        await within(waiter.task)
    assert info.value.max_queue == 1
    assert not waiter.running
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    assert bulkhead.statistics().rejected == 1
    await holder.release()
    assert bulkhead.in_flight == 0


async def test_waiter_served_before_max_wait_runs_and_its_timer_is_cancelled() -> None:
    """A waiter given a slot in time runs normally; its expiry timer is called off."""
    clock = FakeClock(auto_advance=False)
    bulkhead = Bulkhead(1, max_queue=1, max_wait=5.0, clock=clock)
    holder, waiter = await hold(bulkhead, 2)
    assert clock.pending_timers == 1
    clock.advance(3.0)
    await holder.release()
    await settle()
    assert waiter.running
    assert clock.pending_timers == 0
    clock.advance(10.0)
    await waiter.release()
    assert bulkhead.statistics().rejected == 0


async def test_max_wait_expiry_with_the_real_clock() -> None:
    """With the system clock, a waiter is rejected after about max_wait seconds."""
    bulkhead = Bulkhead(1, max_queue=1, max_wait=0.05)
    (holder,) = await hold(bulkhead)
    started = time.monotonic()
    error = await rejected_at_once(bulkhead)
    waited = time.monotonic() - started
    assert 0.04 <= waited < 1.0
    assert "waited" in error.why
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    await holder.release()


async def test_max_wait_zero_does_not_wait() -> None:
    """max_wait=0 rejects a caller that would have to wait, on the next loop turn."""
    clock = FakeClock(auto_advance=False)
    bulkhead = Bulkhead(1, max_queue=3, max_wait=0, clock=clock)
    (holder,) = await hold(bulkhead)
    await rejected_at_once(bulkhead)
    assert bulkhead.queued == 0
    await holder.release()


async def test_expired_waiter_ahead_is_skipped_when_a_slot_frees() -> None:
    """A slot freed just as the first waiter expires goes to the next live waiter."""
    clock = FakeClock(auto_advance=False)
    bulkhead = Bulkhead(1, max_queue=2, max_wait=5.0, clock=clock)
    holder, expiring = await hold(bulkhead, 2)
    clock.advance(3.0)
    (later,) = await hold(bulkhead, 1)
    # Same loop turn: the first waiter's timer fires, then the holder releases.
    clock.advance(2.0)
    holder.gate.set()
    await settle()
    with pytest.raises(BulkheadFullError):
        await within(expiring.task)
    assert later.running
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    await within(holder.task)
    await later.release()
    assert bulkhead.in_flight == 0


# --- cancellation -------------------------------------------------------------------


async def test_cancelled_waiter_leaves_the_queue_and_leaks_nothing() -> None:
    """A waiter cancelled while queued is removed; slots are unaffected."""
    bulkhead = Bulkhead(1, max_queue=2)
    holder, waiter = await hold(bulkhead, 2)
    waiter.task.cancel()
    await settle()
    assert waiter.task.cancelled()
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    await holder.release()
    assert bulkhead.in_flight == 0
    (fresh,) = await hold(bulkhead)
    assert fresh.running
    await fresh.release()
    assert bulkhead.statistics().accepted == 2


async def test_waiter_cancelled_after_being_handed_a_slot_gives_it_back() -> None:
    """A waiter handed a slot and cancelled before it resumed releases the slot."""
    bulkhead = Bulkhead(1, max_queue=1)
    async with bulkhead:
        waiter = Held(bulkhead)
        await settle()
        assert bulkhead.queued == 1
    # Released in this loop turn: the slot is the waiter's, but it has not resumed yet.
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    assert waiter.task.cancel()
    await settle()
    assert waiter.task.cancelled()
    assert not waiter.running
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)
    (fresh,) = await hold(bulkhead)
    assert fresh.running
    assert bulkhead.in_flight == 1
    await fresh.release()
    assert bulkhead.statistics().accepted == 2  # the cancelled waiter never counted


async def test_slot_handed_to_a_cancelled_waiter_passes_to_the_next() -> None:
    """When the waiter handed the slot is cancelled, the next waiter gets the slot."""
    bulkhead = Bulkhead(1, max_queue=2)
    async with bulkhead:
        first, second = Held(bulkhead, "first"), Held(bulkhead, "second")
        await settle()
    first.task.cancel()
    await settle()
    assert first.task.cancelled()
    assert second.running
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    await second.release()
    assert bulkhead.in_flight == 0


async def test_expired_waiter_cancelled_before_resuming_leaks_nothing() -> None:
    """A waiter whose max_wait ran out and that is then cancelled takes no slot."""
    clock = FakeClock(auto_advance=False)
    bulkhead = Bulkhead(1, max_queue=1, max_wait=1.0, clock=clock)
    holder, waiter = await hold(bulkhead, 2)
    clock.advance(1.0)  # the expiry runs on the next loop turn ...
    asyncio.get_running_loop().call_soon(waiter.task.cancel)  # ... then the cancel
    await settle()
    assert waiter.task.cancelled()
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    await holder.release()
    assert bulkhead.in_flight == 0


async def test_cancel_in_the_same_turn_as_the_expiry_wins() -> None:
    """A waiter cancelled in the loop turn its max_wait runs out ends cancelled, not rejected."""
    clock = FakeClock(auto_advance=False)
    bulkhead = Bulkhead(1, max_queue=1, max_wait=1.0, clock=clock)
    holder, waiter = await hold(bulkhead, 2)
    clock.advance(1.0)  # the expiry is scheduled first ...
    waiter.task.cancel()  # ... and finds the waiter already cancelled
    await settle()
    assert waiter.task.cancelled()
    assert bulkhead.statistics().rejected == 0
    assert (bulkhead.in_flight, bulkhead.queued) == (1, 0)
    await holder.release()
    assert bulkhead.in_flight == 0


async def test_cancelled_running_call_releases_its_slot() -> None:
    """Cancelling a call that holds a slot frees the slot and propagates."""
    bulkhead = Bulkhead(1)
    (running,) = await hold(bulkhead)
    running.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(running.task)
    assert bulkhead.in_flight == 0
    (fresh,) = await hold(bulkhead)
    assert fresh.running
    await fresh.release()


async def test_failing_call_releases_its_slot() -> None:
    """A call that raises frees its slot and its exception propagates unchanged."""
    bulkhead = Bulkhead(1)
    error = Boom("down")

    async def broken() -> None:
        raise error

    with pytest.raises(Boom) as info:
        await bulkhead.call(broken)
    assert info.value is error
    assert bulkhead.in_flight == 0


# --- async with ---------------------------------------------------------------------


async def test_async_with_holds_a_slot_for_the_block() -> None:
    """`async with bulkhead` takes a slot for the block and returns the bulkhead."""
    bulkhead = Bulkhead(2)
    async with bulkhead as entered:
        assert entered is bulkhead
        assert bulkhead.in_flight == 1
    assert bulkhead.in_flight == 0


async def test_async_with_releases_on_error() -> None:
    """An exception inside `async with` frees the slot and propagates."""
    bulkhead = Bulkhead(1)
    with pytest.raises(Boom):
        async with bulkhead:
            raise Boom
    assert bulkhead.in_flight == 0


async def test_async_with_rejects_when_full() -> None:
    """`async with` on a full bulkhead raises BulkheadFullError and takes nothing."""
    bulkhead = Bulkhead(1)
    entered = False
    async with bulkhead:
        with pytest.raises(BulkheadFullError):
            async with bulkhead:
                entered = True
        assert bulkhead.in_flight == 1
    assert not entered
    assert bulkhead.in_flight == 0


async def test_async_with_waits_in_the_queue() -> None:
    """`async with` queues like .call() and enters once a slot is free."""
    bulkhead = Bulkhead(1, max_queue=1)
    (holder,) = await hold(bulkhead)
    inside = asyncio.Event()

    async def block() -> None:
        async with bulkhead:
            inside.set()

    task = asyncio.create_task(block())
    await settle()
    assert bulkhead.queued == 1
    assert not inside.is_set()
    await holder.release()
    await within(task)
    assert inside.is_set()
    assert bulkhead.in_flight == 0


# --- events, statistics, repr -------------------------------------------------------


async def test_rejections_are_events_with_reason_bulkhead_full() -> None:
    """Each rejection, at once or after max_wait, emits Rejected(reason=BULKHEAD_FULL)."""
    clock = FakeClock(auto_advance=False)
    events: list[Event] = []
    bulkhead = Bulkhead(1, max_queue=1, max_wait=2.0, name="db", clock=clock, hooks=[events.append])
    holder, waiter = await hold(bulkhead, 2)
    await rejected_at_once(bulkhead)
    clock.advance(2.0)
    await settle()
    assert waiter.task.done()
    await holder.release()
    rejected = [e for e in events if isinstance(e, Rejected)]
    assert rejected == [
        Rejected(kind="bulkhead", name="db", time=0.0, reason=RejectionReason.BULKHEAD_FULL),
        Rejected(kind="bulkhead", name="db", time=2.0, reason=RejectionReason.BULKHEAD_FULL),
    ]
    with pytest.raises(BulkheadFullError):
        waiter.task.result()


async def test_statistics_snapshot() -> None:
    """statistics() reports limits, slots taken, waiters, accepted and rejected."""
    bulkhead = Bulkhead(2, max_queue=1)
    assert bulkhead.statistics() == BulkheadStatistics(
        max_concurrent=2, max_queue=1, in_flight=0, queued=0, accepted=0, rejected=0
    )
    calls = await hold(bulkhead, 3)
    await rejected_at_once(bulkhead)
    assert bulkhead.statistics() == BulkheadStatistics(
        max_concurrent=2, max_queue=1, in_flight=2, queued=1, accepted=2, rejected=1
    )
    for call in calls:
        await call.release()
    stats = bulkhead.statistics()
    # The queued call was timed (real clock): its duration is the service time.
    assert stats.service_time >= 0
    assert dataclasses.replace(stats, service_time=0.0) == BulkheadStatistics(
        max_concurrent=2, max_queue=1, in_flight=0, queued=0, accepted=3, rejected=1
    )


async def test_repr_shows_live_slots_and_queue() -> None:
    """repr shows name, slots in use and waiters against their limits."""
    bulkhead = Bulkhead(2, max_queue=3, name="search")
    assert repr(bulkhead) == "<Bulkhead 'search' 0/2 in flight, 0/3 queued>"
    calls = await hold(bulkhead, 3)
    assert repr(bulkhead) == "<Bulkhead 'search' 2/2 in flight, 1/3 queued>"
    for call in calls:
        await call.release()
    assert Bulkhead(1).name == "bulkhead"


# --- construction -------------------------------------------------------------------

BAD_PARAMETERS: list[tuple[dict[str, Any], str, type[Exception]]] = [
    ({"max_concurrent": 0}, "max_concurrent", ValueError),
    ({"max_concurrent": -1}, "max_concurrent", ValueError),
    ({"max_concurrent": 1.5}, "max_concurrent", TypeError),
    ({"max_concurrent": True}, "max_concurrent", TypeError),
    ({"max_concurrent": "4"}, "max_concurrent", TypeError),
    ({"max_concurrent": 1, "max_queue": -1}, "max_queue", ValueError),
    ({"max_concurrent": 1, "max_queue": 2.0}, "max_queue", TypeError),
    ({"max_concurrent": 1, "max_queue": False}, "max_queue", TypeError),
    ({"max_concurrent": 1, "max_wait": -0.5}, "max_wait", ValueError),
    ({"max_concurrent": 1, "max_wait": math.nan}, "max_wait", ValueError),
    ({"max_concurrent": 1, "max_wait": math.inf}, "max_wait", ValueError),
    ({"max_concurrent": 1, "max_wait": "1"}, "max_wait", TypeError),
    ({"max_concurrent": 1, "max_wait": True}, "max_wait", TypeError),
    ({"max_concurrent": 1, "name": ""}, "name", ValueError),
    ({"max_concurrent": 1, "clock": object()}, "clock", TypeError),
    ({"max_concurrent": 1, "hooks": ["nope"]}, "hooks", TypeError),
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
        Bulkhead(**kwargs)
    assert type(info.value) is error
    assert param in str(info.value)
    assert "Bulkhead" in str(info.value)


def test_edge_values_are_accepted() -> None:
    """max_concurrent=1, max_queue=0 and max_wait=0 are valid."""
    bulkhead = Bulkhead(1, max_queue=0, max_wait=0)
    assert (bulkhead.max_concurrent, bulkhead.max_queue, bulkhead.max_wait) == (1, 0, 0.0)


def test_max_wait_needs_a_queue() -> None:
    """max_wait with max_queue=0 would never apply: ValueError naming it."""
    with pytest.raises(ValueError, match="max_wait"):
        Bulkhead(2, max_wait=5.0)
