"""
Property test: Bulkhead invariants under any mix of starting, finishing and cancelling
calls, cancelling waiters, the hand-over race, and fake time running out queue waits.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from typing import Any, TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from resilient import Bulkhead, BulkheadFullError
from resilient.testing import FakeClock
from tests._aio import settle

T = TypeVar("T")


class Call:
    """
    One caller: queues or takes a slot, then holds it until its gate opens.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, bulkhead: Bulkhead) -> None:
        self.gate = asyncio.Event()
        self.running = False
        self.task = loop.create_task(bulkhead.call(self._body))

    async def _body(self) -> str:
        self.running = True
        try:
            await self.gate.wait()
        finally:
            self.running = False
        return "done"

    def status(self) -> str:
        if not self.task.done():
            return "running" if self.running else "queued"
        if self.task.cancelled():
            return "cancelled"
        if isinstance(self.task.exception(), BulkheadFullError):
            return "rejected"
        assert self.task.result() == "done"
        return "finished"


class BulkheadMachine(RuleBasedStateMachine):
    """
    A bulkhead and a model of it: who holds a slot, who waits (FIFO, with deadlines).
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock(auto_advance=False)
        self._bulkhead: Bulkhead | None = None
        self.calls: list[Call] = []
        # The model.
        self.running: list[Call] = []
        self.queue: list[tuple[Call, float]] = []  # (caller, deadline), oldest first
        self.accepted = self.rejected = self.finished = self.cancelled = 0

    @property
    def bulkhead(self) -> Bulkhead:
        assert self._bulkhead is not None
        return self._bulkhead

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    @initialize(
        max_concurrent=st.integers(1, 3),
        max_queue=st.integers(0, 3),
        max_wait=st.sampled_from([None, 0, 2, 5]),
    )
    def build(self, max_concurrent: int, max_queue: int, max_wait: int | None) -> None:
        # A wait limit only means something with a queue (Bulkhead rejects it otherwise).
        wait = max_wait if max_queue else None
        self._bulkhead = Bulkhead(
            max_concurrent, max_queue=max_queue, max_wait=wait, clock=self.clock
        )

    # --- the model's moves ---

    def hand_over(self) -> None:
        """A slot was freed: the oldest waiter gets it, else it is free."""
        if self.queue:
            call, _ = self.queue.pop(0)
            self.running.append(call)
            self.accepted += 1

    def expire(self) -> None:
        now = self.clock.monotonic()
        expired = [c for c, deadline in self.queue if deadline <= now]
        self.queue = [(c, d) for c, d in self.queue if d > now]
        self.rejected += len(expired)

    # --- rules ---

    @rule(count=st.integers(1, 4))
    def start(self, count: int) -> None:
        # Several callers per step, so that queues (and hand-overs) are common.
        for _ in range(count):
            call = Call(self.loop, self.bulkhead)
            self.calls.append(call)
            if len(self.running) < self.bulkhead.max_concurrent and not self.queue:
                self.running.append(call)
                self.accepted += 1
            elif len(self.queue) < self.bulkhead.max_queue:
                wait = self.bulkhead.max_wait
                deadline = math.inf if wait is None else self.clock.monotonic() + wait
                self.queue.append((call, deadline))
                self.expire()  # max_wait=0: the wait is over at once
            else:
                self.rejected += 1
            self.run(settle(10))

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def finish_running(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.running))
        call.gate.set()
        self.run(settle(10))
        assert call.status() == "finished"
        self.running.remove(call)
        self.finished += 1
        self.hand_over()

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def cancel_running(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.running))
        call.task.cancel()
        self.run(settle(10))
        assert call.status() == "cancelled"
        self.running.remove(call)
        self.cancelled += 1
        self.hand_over()

    @precondition(lambda self: bool(self.queue))
    @rule(data=st.data())
    def cancel_queued(self, data: st.DataObject) -> None:
        call, deadline = data.draw(st.sampled_from(self.queue))
        call.task.cancel()
        self.run(settle(10))
        assert call.status() == "cancelled"
        self.queue.remove((call, deadline))
        self.cancelled += 1

    @precondition(lambda self: bool(self.running and self.queue))
    @rule(data=st.data())
    def finish_and_cancel_the_heir(self, data: st.DataObject) -> None:
        # The race: a slot is handed to the first waiter, which is cancelled in the same
        # loop turn, before it resumes. It must pass the slot on.
        call = data.draw(st.sampled_from(self.running))
        heir, deadline = self.queue[0]
        queued_when_cancelled: list[int] = []

        def cancel_heir() -> None:
            queued_when_cancelled.append(self.bulkhead.queued)
            heir.task.cancel()

        async def race() -> None:
            call.gate.set()  # wakes `call` first, which releases on this turn ...
            asyncio.get_running_loop().call_soon(cancel_heir)  # ... then the cancel
            await settle(10)

        self.run(race())
        # The heir had already been handed the slot (it was out of the queue) when cancelled.
        assert queued_when_cancelled == [len(self.queue) - 1]
        assert (call.status(), heir.status()) == ("finished", "cancelled")
        self.running.remove(call)
        self.queue.remove((heir, deadline))
        self.finished += 1
        self.cancelled += 1
        self.hand_over()

    @rule(seconds=st.sampled_from([1, 2, 5]))
    def advance(self, seconds: int) -> None:
        async def step() -> None:
            self.clock.advance(seconds)
            await settle(10)

        self.run(step())
        self.expire()

    @rule()
    def drain(self) -> None:
        for call in self.calls:
            call.task.cancel()
        self.run(settle(10))
        assert all(call.task.done() for call in self.calls)
        assert (self.bulkhead.in_flight, self.bulkhead.queued) == (0, 0)
        self.cancelled += len(self.running) + len(self.queue)
        self.running.clear()
        self.queue.clear()

    # --- invariants ---

    @invariant()
    def slots_and_queue_stay_in_bounds(self) -> None:
        if self._bulkhead is None:
            return
        bulkhead = self.bulkhead
        assert 0 <= bulkhead.in_flight <= bulkhead.max_concurrent
        assert 0 <= bulkhead.queued <= bulkhead.max_queue
        if bulkhead.queued:
            assert bulkhead.in_flight == bulkhead.max_concurrent, "a slot idles while callers wait"

    @invariant()
    def matches_the_model(self) -> None:
        if self._bulkhead is None:
            return
        by_status = [(c.status(), id(c)) for c in self.calls]
        assert {i for s, i in by_status if s == "running"} == {id(c) for c in self.running}
        assert {i for s, i in by_status if s == "queued"} == {id(c) for c, _ in self.queue}
        assert self.bulkhead.in_flight == len(self.running)
        assert self.bulkhead.queued == len(self.queue)
        stats = self.bulkhead.statistics()
        assert (stats.accepted, stats.rejected) == (self.accepted, self.rejected)

    @invariant()
    def every_call_is_accounted_for(self) -> None:
        if self._bulkhead is None:
            return
        statuses = [call.status() for call in self.calls]
        stats = self.bulkhead.statistics()
        assert statuses.count("running") == stats.in_flight
        assert statuses.count("queued") == stats.queued
        assert statuses.count("rejected") == stats.rejected
        assert statuses.count("finished") == self.finished
        assert statuses.count("cancelled") == self.cancelled
        ended = stats.rejected + self.finished + self.cancelled
        assert stats.in_flight + stats.queued + ended == len(self.calls)
        # Every call that got a slot is running, finished, or was cancelled with it.
        assert stats.accepted <= stats.in_flight + self.finished + self.cancelled
        if all(call.task.done() for call in self.calls):
            assert (stats.in_flight, stats.queued) == (0, 0)

    def teardown(self) -> None:
        try:
            for call in self.calls:
                call.task.cancel()
            self.run(settle(10))
        finally:
            self.loop.close()


def test_bulkhead_invariants_hold() -> None:
    """Slots and queue stay in bounds, FIFO and accounted for, and never leak."""
    run_state_machine_as_test(
        BulkheadMachine,
        settings=settings(max_examples=100, stateful_step_count=30, deadline=None),
    )
