"""
Property test: a Bulkhead's queue by priority, with shedding and deadlines, against a
model, under any mix of callers (each with a priority and maybe a deadline), finishing,
cancelling and fake time passing: no slot leaks, every caller is resolved exactly once
(ran, or was refused with the model's reason, or was cancelled), priorities respected.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine
from dataclasses import dataclass, field
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

from resilient import (
    AIMD,
    AdaptiveConcurrency,
    Bulkhead,
    BulkheadFullError,
    ConcurrencyLimitError,
    Priority,
    RejectionReason,
    deadline,
    priority,
)
from resilient.testing import FakeClock
from tests._aio import settle

T = TypeVar("T")
FULL, SHED = RejectionReason.BULKHEAD_FULL, RejectionReason.PRIORITY_SHED
EXCEEDED, TOO_SHORT = RejectionReason.DEADLINE_EXCEEDED, RejectionReason.DEADLINE_TOO_SHORT


@dataclass(eq=False)
class Call:
    """
    One caller at a priority, with a deadline or none; holds its slot until its gate opens.
    """

    level: Priority
    budget: float | None
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    running: bool = False
    task: asyncio.Task[str] | None = None
    # The model's view.
    leave_at: float = math.inf  # when the model expects it out of the queue
    leave_why: RejectionReason = FULL
    started: float = 0.0  # when it got its slot
    waited: bool = False  # whether it got it from the queue
    filled: bool = False  # whether it took the last slot
    expected: str = "queued"
    reason: RejectionReason | None = None

    async def enter(self, bulkhead: Bulkhead, clock: FakeClock) -> str:
        with priority(self.level):
            if self.budget is None:
                return await bulkhead.call(self._body)
            with deadline(self.budget, clock=clock):
                return await bulkhead.call(self._body)

    async def _body(self) -> str:
        self.running = True
        try:
            await self.gate.wait()
        finally:
            self.running = False
        return "done"

    def status(self) -> str:
        assert self.task is not None
        if not self.task.done():
            return "running" if self.running else "queued"
        if self.task.cancelled():
            return "cancelled"
        error = self.task.exception()
        if isinstance(error, BulkheadFullError | ConcurrencyLimitError):
            assert error.reason == self.reason, (error.reason, self.reason)
            return "rejected"
        assert error is None, error
        return "finished"


class SheddingMachine(RuleBasedStateMachine):
    """
    A bulkhead and a model: who runs, who waits (by priority then arrival, each with the
    time it must leave), the service-time average, and what each caller must end as.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock(auto_advance=False)
        self._bulkhead: Bulkhead | None = None
        self.calls: list[Call] = []
        self.running: list[Call] = []
        self.queue: list[Call] = []  # highest priority first, then oldest first
        self.service_time = 0.0
        self.shed = self.expired = 0

    @property
    def bulkhead(self) -> Bulkhead:
        assert self._bulkhead is not None
        return self._bulkhead

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    @initialize(
        max_concurrent=st.integers(1, 2),
        max_queue=st.integers(0, 3),
        max_wait=st.sampled_from([None, 4]),
    )
    def build(self, max_concurrent: int, max_queue: int, max_wait: int | None) -> None:
        wait = max_wait if max_queue else None
        self._bulkhead = self.make(max_concurrent, max_queue, wait)

    full = FULL  # the reason of a plain refusal (and of a max_wait run out)

    def make(self, max_concurrent: int, max_queue: int, max_wait: int | None) -> Bulkhead:
        return Bulkhead(max_concurrent, max_queue=max_queue, max_wait=max_wait, clock=self.clock)

    def is_sample(self, call: Call) -> bool:
        """A Bulkhead times the calls that waited for their slot or took the last."""
        return call.waited or call.filled

    # --- the model's moves ---

    def refuse(self, call: Call, why: RejectionReason) -> None:
        call.expected, call.reason = "rejected", why

    def admit(self, call: Call) -> None:
        bulkhead, now = self.bulkhead, self.clock.monotonic()
        if len(self.running) < bulkhead.max_concurrent and not self.queue:
            call.expected, call.started = "running", now
            self.running.append(call)
            call.filled = len(self.running) == bulkhead.max_concurrent
            return
        full = len(self.queue) >= bulkhead.max_queue
        if full and not (self.queue and self.queue[-1].level < call.level):
            self.refuse(call, self.full)
            return
        # The deadline as the bulkhead sees it: remaining_time(), computed the same way.
        left = None if call.budget is None else max(0.0, (now + call.budget) - now)
        if left is not None and left <= self.service_time:
            self.expired += 1
            self.refuse(call, EXCEEDED if left <= 0 else TOO_SHORT)
            return
        if full:
            self.refuse(self.queue.pop(), SHED)
            self.shed += 1
        self.plan_leaving(call, now, left)
        position = len(self.queue)
        while position and self.queue[position - 1].level < call.level:
            position -= 1
        self.queue.insert(position, call)

    def plan_leaving(self, call: Call, now: float, left: float | None) -> None:
        if self.bulkhead.max_wait is not None:
            call.leave_at, call.leave_why = now + self.bulkhead.max_wait, self.full
        if left is not None and now + left - self.service_time < call.leave_at:
            call.leave_at = now + left - self.service_time
            call.leave_why = TOO_SHORT if self.service_time else EXCEEDED

    def hand_over(self) -> None:
        if self.queue:
            heir = self.queue.pop(0)
            heir.expected, heir.started = "running", self.clock.monotonic()
            heir.waited = True
            self.running.append(heir)
            heir.filled = len(self.running) == self.bulkhead.max_concurrent

    def expire(self) -> None:
        now = self.clock.monotonic()
        for call in [c for c in self.queue if c.leave_at <= now]:
            self.queue.remove(call)
            self.refuse(call, call.leave_why)
            self.expired += call.leave_why != self.full

    # --- rules ---

    @rule(
        levels=st.lists(st.sampled_from(list(Priority)), min_size=1, max_size=4),
        budget=st.sampled_from([None, None, 0, 1, 3, 6]),
    )
    def start(self, levels: list[Priority], budget: int | None) -> None:
        for level in levels:
            call = Call(level, budget)
            call.task = self.loop.create_task(call.enter(self.bulkhead, self.clock))
            self.calls.append(call)
            self.admit(call)
            self.run(settle(10))

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def finish_running(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.running))
        call.gate.set()
        self.run(settle(10))
        sample = self.is_sample(call)
        self.running.remove(call)
        call.expected = "finished"
        if sample:
            duration = self.clock.monotonic() - call.started
            average = self.service_time
            self.service_time = duration if not average else average + 0.1 * (duration - average)
        self.hand_over()
        self.run(settle(10))

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def cancel_running(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.running))
        assert call.task is not None
        call.task.cancel()
        self.run(settle(10))
        self.running.remove(call)
        call.expected = "cancelled"
        self.hand_over()
        self.run(settle(10))

    @precondition(lambda self: bool(self.queue))
    @rule(data=st.data())
    def cancel_queued(self, data: st.DataObject) -> None:
        call = data.draw(st.sampled_from(self.queue))
        assert call.task is not None
        call.task.cancel()
        self.run(settle(10))
        self.queue.remove(call)
        call.expected = "cancelled"

    @rule(seconds=st.sampled_from([1, 2, 5]))
    def advance(self, seconds: int) -> None:
        async def step() -> None:
            self.clock.advance(seconds)
            await settle(10)

        self.run(step())
        self.expire()

    # --- invariants ---

    @invariant()
    def every_caller_is_where_the_model_says(self) -> None:
        for call in self.calls:
            assert call.status() == call.expected, (call, self.queue)

    @invariant()
    def slots_are_neither_leaked_nor_idle(self) -> None:
        if self._bulkhead is None:
            return
        stats = self.bulkhead.statistics()
        assert (stats.in_flight, stats.queued) == (len(self.running), len(self.queue))
        assert stats.in_flight <= stats.max_concurrent
        assert stats.queued <= stats.max_queue
        if stats.queued:
            assert stats.in_flight == stats.max_concurrent, "a slot idles while callers wait"
        assert (stats.shed, stats.expired) == (self.shed, self.expired)
        assert stats.service_time == self.service_time
        ended = sum(c.expected in {"rejected", "finished", "cancelled"} for c in self.calls)
        assert stats.in_flight + stats.queued + ended == len(self.calls)
        rejected = sum(c.expected == "rejected" for c in self.calls)
        assert stats.rejected == rejected

    @invariant()
    def the_queue_is_by_priority_then_arrival(self) -> None:
        if self._bulkhead is None:
            return
        levels = [waiter.priority for waiter in self.bulkhead._waiters]
        assert levels == sorted(levels, reverse=True)
        assert levels == [call.level for call in self.queue]

    def teardown(self) -> None:
        try:
            for call in self.calls:
                assert call.task is not None
                call.task.cancel()
            self.run(settle(10))
            if self._bulkhead is not None:
                assert (self.bulkhead.in_flight, self.bulkhead.queued) == (0, 0)
        finally:
            self.loop.close()


class AdaptiveSheddingMachine(SheddingMachine):
    """
    The same, through AdaptiveConcurrency at a fixed limit (AIMD with min = max): it
    inherits the queue, and samples every call that finishes while others wait or
    that took the last slot.
    """

    full = RejectionReason.CONCURRENCY_LIMIT

    def make(self, max_concurrent: int, max_queue: int, max_wait: int | None) -> Bulkhead:
        fixed = AIMD(initial=max_concurrent, min_limit=max_concurrent, max_limit=max_concurrent)
        return AdaptiveConcurrency(fixed, max_queue=max_queue, max_wait=max_wait, clock=self.clock)

    def is_sample(self, call: Call) -> bool:
        return bool(self.queue) or call.filled


def test_adaptive_concurrency_queue_invariants_hold() -> None:
    """AdaptiveConcurrency's queue keeps the same promises as the bulkhead's."""
    run_state_machine_as_test(
        AdaptiveSheddingMachine,
        settings=settings(max_examples=100, stateful_step_count=30, deadline=None),
    )


def test_priority_queue_invariants_hold() -> None:
    """
    Every caller ends once, as the model says (ran, refused with its reason, or
    cancelled); the queue is by priority then arrival; no slot leaks or idles.
    """
    run_state_machine_as_test(
        SheddingMachine,
        settings=settings(max_examples=100, stateful_step_count=30, deadline=None),
    )
