"""
Priority shedding and deadline-aware queues: the priority context variable, a saturated
Bulkhead's (and AdaptiveConcurrency's) queue by priority, shedding its lowest waiter,
waiters leaving for their deadline, and the RateLimiter's decisions, under FakeClock.
"""

from __future__ import annotations

import asyncio
import pickle
from collections import deque
from typing import Any, SupportsIndex, TypeVar

import pytest

from resilient import (
    AIMD,
    AdaptiveConcurrency,
    Bulkhead,
    BulkheadFullError,
    ConcurrencyLimitError,
    Priority,
    RateLimitedError,
    RateLimiter,
    Rejected,
    RejectionReason,
    current_priority,
    deadline,
    priority,
    remaining_time,
    remaining_time_and_priority,
)
from resilient._policies.wait_queue import Waiter, enqueue
from resilient.testing import FakeClock, capture_events
from tests._aio import settle, within

T = TypeVar("T")


class Held:
    """
    A call at a priority (and deadline) that, once it has a slot, holds it until released.
    """

    def __init__(
        self,
        policy: Bulkhead,
        log: list[str],
        label: str,
        level: Priority = Priority.CRITICAL,
        budget: float | None = None,
    ) -> None:
        self.gate = asyncio.Event()
        self.label = label
        self.log = log
        self.task = asyncio.create_task(self._enter(policy, level, budget))

    async def _enter(self, policy: Bulkhead, level: Priority, budget: float | None) -> str:
        with priority(level):
            if budget is None:
                return await policy.call(self._body)
            with deadline(budget, clock=policy._clock):  # the fake clock
                return await policy.call(self._body)

    async def _body(self) -> str:
        self.log.append(self.label)
        await self.gate.wait()
        return self.label

    async def release(self) -> None:
        self.gate.set()
        await within(self.task, 2.0)

    def error(self) -> BaseException | None:
        assert self.task.done()
        return self.task.exception()


async def queued_then_running(bulkhead: Bulkhead, log: list[str]) -> Held:
    """A call that waited in the queue (so it is timed) and now holds the slot."""
    running = Held(bulkhead, log, "running")
    await settle()
    queued = Held(bulkhead, log, "queued")
    await settle()
    await running.release()
    await settle()
    assert log[-1] == "queued"
    return queued


def reason_of(held: Held) -> RejectionReason:
    error = held.error()
    assert isinstance(error, BulkheadFullError | ConcurrencyLimitError), error
    return error.reason


# --- the priority context variable ---


async def test_priority_is_critical_by_default_and_scoped_to_the_block() -> None:
    """
    The default is CRITICAL; `priority()` sets it for the block and the tasks started
    in it, takes a name (any case) or a value, and restores the outer one on exit.
    """
    assert current_priority() is Priority.CRITICAL
    with priority("Sheddable") as level:
        assert level is Priority.SHEDDABLE
        assert await asyncio.create_task(_read()) is Priority.SHEDDABLE
        with priority(3):
            assert current_priority() is Priority.CRITICAL_PLUS
        assert current_priority() is Priority.SHEDDABLE
    assert current_priority() is Priority.CRITICAL
    assert Priority.SHEDDABLE < Priority.SHEDDABLE_PLUS < Priority.CRITICAL < Priority.CRITICAL_PLUS


async def _read() -> Priority:
    return current_priority()


@pytest.mark.parametrize("level", ["urgent", "", 7, -1, True, 2.0, None])
def test_a_bad_priority_is_a_value_error_naming_it(level: object) -> None:
    """A level that is not a priority, its name or its value is refused, named."""
    with pytest.raises(ValueError, match=r"priority\(level="), priority(level):  # type: ignore[arg-type]
        pass  # pragma: no cover


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("sheddable_plus", Priority.SHEDDABLE_PLUS),
        (" CRITICAL_PLUS ", Priority.CRITICAL_PLUS),
        ("critical-plus", None),
        ("2", None),
        ("x" * 10_000, None),
        ("sheddable\x00", None),
        (None, None),
    ],
)
def test_parse_priority_takes_names_only(value: str | None, expected: Priority | None) -> None:
    """Untrusted text gives a priority only when it is one's name; else None, no error."""
    assert Priority.parse(value) is expected


# --- the bulkhead's queue by priority ---


async def test_waiters_are_served_by_priority_then_in_arrival_order() -> None:
    """A freed slot goes to the highest-priority waiter, the oldest of that priority."""
    bulkhead = Bulkhead(1, max_queue=5, clock=FakeClock())
    log: list[str] = []
    first = Held(bulkhead, log, "running")
    await settle()
    levels = [
        ("s1", Priority.SHEDDABLE),
        ("c1", Priority.CRITICAL),
        ("p1", Priority.CRITICAL_PLUS),
        ("c2", Priority.CRITICAL),
        ("s2", Priority.SHEDDABLE),
    ]
    calls = [Held(bulkhead, log, label, level) for label, level in levels]
    await settle()
    assert bulkhead.queued == 5
    await first.release()
    for _ in calls:
        await settle()
        running = next(c for c in calls if c.label == log[-1])
        await running.release()
    assert log == ["running", "p1", "c1", "c2", "s1", "s2"]
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


class CountingQueue(deque[Waiter]):
    """A waiters' deque that counts the elements looked at by index."""

    looked_at = 0
    searched = 0

    def __getitem__(self, index: SupportsIndex) -> Waiter:  # type: ignore[override]
        self.looked_at += 1
        return super().__getitem__(index)

    def remove(self, value: Waiter) -> None:
        self.searched += 1
        super().remove(value)


async def test_a_higher_priority_waiter_joins_a_long_queue_in_logarithmic_steps() -> None:
    """
    A waiter that goes ahead of thousands of lower-priority ones finds its place
    looking at O(log n) of them, not all (a burst of critical arrivals into a long
    sheddable queue was quadratic and held the loop for seconds), and the queue stays
    by priority, then arrival.
    """
    loop = asyncio.get_running_loop()
    waiters = CountingQueue(Waiter(loop, Priority.SHEDDABLE) for _ in range(4096))
    for level in (Priority.CRITICAL, Priority.SHEDDABLE_PLUS, Priority.CRITICAL_PLUS):
        for _ in range(3):
            waiters.looked_at = 0
            enqueue(waiters, Waiter(loop, level))
            assert waiters.looked_at <= 2 * 13 + 2  # log2(4096) = 12
    order = [w.priority for w in list(waiters)]
    assert order == sorted(order, reverse=True)


async def test_shed_waiters_are_not_searched_for_in_the_queue() -> None:
    """
    A waiter shed for a higher priority was taken out of the queue when shed: it does
    not search the queue for itself on leaving (each search scanned it all, so a burst
    of shedding was quadratic).
    """
    bulkhead = Bulkhead(1, max_queue=50, clock=FakeClock())
    bulkhead._waiters = waiters = CountingQueue()  # instrumented
    log: list[str] = []
    first = Held(bulkhead, log, "running")
    low = [Held(bulkhead, log, f"s{i}", Priority.SHEDDABLE) for i in range(50)]
    await settle()
    high = [Held(bulkhead, log, f"c{i}", Priority.CRITICAL) for i in range(50)]
    await settle()
    assert bulkhead.statistics().shed == 50
    for call in low:
        with pytest.raises(BulkheadFullError):
            await call.task
    assert waiters.searched == 0
    await first.release()
    for call in high:
        await settle()
        await call.release()
    assert log == ["running", *(f"c{i}" for i in range(50))]


async def test_a_full_queue_sheds_its_lowest_latest_waiter_for_a_higher_priority() -> None:
    """
    A higher-priority caller finding the queue full takes the place of the lowest-
    priority waiter (the latest of those), which is rejected with PRIORITY_SHED; the
    shedding is an event, counted in statistics and shown in the repr.
    """
    bulkhead = Bulkhead(1, max_queue=2, name="db", clock=FakeClock())
    log: list[str] = []
    running = Held(bulkhead, log, "running")
    await settle()
    old = Held(bulkhead, log, "old", Priority.SHEDDABLE)
    new = Held(bulkhead, log, "new", Priority.SHEDDABLE)
    await settle()
    with capture_events(Rejected) as events:
        vip = Held(bulkhead, log, "vip", Priority.CRITICAL_PLUS)
        await settle()
    assert reason_of(new) == RejectionReason.PRIORITY_SHED
    assert "higher-priority" in str(new.error())
    assert [e.reason for e in events] == [RejectionReason.PRIORITY_SHED]  # type: ignore[attr-defined]
    stats = bulkhead.statistics()
    assert (stats.queued, stats.shed, stats.rejected, stats.expired) == (2, 1, 1, 0)
    assert repr(bulkhead) == "<Bulkhead 'db' 1/1 in flight, 2/2 queued, 1 shed, 0 expired>"
    await running.release()
    await settle()
    assert log == ["running", "vip"]
    await vip.release()
    await settle()
    await old.release()
    assert bulkhead.in_flight == 0


async def test_a_full_queue_refuses_a_caller_of_no_higher_priority() -> None:
    """
    A newcomer whose priority is no higher than every waiter's is refused as before
    (BULKHEAD_FULL); with no queue at all, priority changes nothing.
    """
    bulkhead = Bulkhead(1, max_queue=1, clock=FakeClock())
    log: list[str] = []
    running = Held(bulkhead, log, "running")
    await settle()
    waiting = Held(bulkhead, log, "waiting", Priority.SHEDDABLE_PLUS)
    same = Held(bulkhead, log, "same", Priority.SHEDDABLE_PLUS)
    lower = Held(bulkhead, log, "lower", Priority.SHEDDABLE)
    await settle()
    assert reason_of(same) == reason_of(lower) == RejectionReason.BULKHEAD_FULL
    await running.release()
    await settle()
    await waiting.release()
    unqueued = Bulkhead(1, clock=FakeClock())
    holder = Held(unqueued, log, "holder", Priority.SHEDDABLE)
    await settle()
    vip = Held(unqueued, log, "vip", Priority.CRITICAL_PLUS)
    await settle()
    assert reason_of(vip) == RejectionReason.BULKHEAD_FULL
    await holder.release()


async def test_a_shed_waiter_that_is_cancelled_too_leaks_nothing() -> None:
    """A waiter shed and cancelled in the same turn ends cancelled; no slot is lost."""
    bulkhead = Bulkhead(1, max_queue=1, clock=FakeClock())
    log: list[str] = []
    running = Held(bulkhead, log, "running")
    await settle()
    victim = Held(bulkhead, log, "victim", Priority.SHEDDABLE)
    await settle()
    vip = Held(bulkhead, log, "vip", Priority.CRITICAL)
    victim.task.cancel()
    await settle()
    assert victim.task.cancelled() or reason_of(victim) == RejectionReason.PRIORITY_SHED
    await running.release()
    await settle()
    await vip.release()
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


# --- deadline-aware queues ---


async def test_a_waiter_leaves_the_queue_when_its_deadline_passes() -> None:
    """
    A queued caller whose deadline (not enforced by any timeout here) passes is
    refused then, DEADLINE_EXCEEDED, not at its max_wait; the queue moves on.
    """
    clock = FakeClock(auto_advance=False)
    bulkhead = Bulkhead(1, max_queue=2, max_wait=10, clock=clock)
    log: list[str] = []
    running = Held(bulkhead, log, "running")
    await settle()
    with capture_events(Rejected) as events:
        hurried = Held(bulkhead, log, "hurried", budget=2.0)
        patient = Held(bulkhead, log, "patient")
        await settle()
        clock.advance(1.9)
        await settle()
        assert not hurried.task.done()
        clock.advance(0.1)
        await settle()
    assert reason_of(hurried) == RejectionReason.DEADLINE_EXCEEDED
    assert [e.reason for e in events] == [RejectionReason.DEADLINE_EXCEEDED]  # type: ignore[attr-defined]
    assert bulkhead.statistics().expired == 1
    await running.release()
    await settle()
    await patient.release()
    assert log == ["running", "patient"]


@pytest.mark.parametrize("build", [
    lambda clock: Bulkhead(1, max_queue=1, clock=clock),
    lambda clock: AdaptiveConcurrency(AIMD(initial=1, max_limit=1), max_queue=1, clock=clock),
])  # fmt: skip
async def test_a_stale_service_time_is_corrected_while_saturated(build: Any) -> None:
    """
    One slow call through the queue (60 s) sets the service time; the policy then
    stays saturated by short calls that take the slot as it frees, and callers with a
    5 s deadline are refused at the door. The calls that fill the last slot are samples
    too, so the estimate comes down and those callers queue again. (Only queued calls
    were samples: with every caller refused, none queued, and the estimate stayed 60 s
    for as long as the saturation lasted.)
    """
    clock = FakeClock(auto_advance=False)
    bulkhead = build(clock)
    log: list[str] = []
    first = Held(bulkhead, log, "first")
    await settle()
    slow = Held(bulkhead, log, "slow")
    await settle()
    await first.release()
    following = Held(bulkhead, log, "following")  # queued while the slow one runs
    await settle()
    clock.advance(60)
    await slow.release()
    await following.release()
    assert bulkhead.statistics().service_time >= 50
    refused = 0
    for i in range(100):
        holder = Held(bulkhead, log, f"h{i}")
        await settle()
        caller = Held(bulkhead, log, f"d{i}", budget=5.0)
        await settle()
        clock.advance(0.1)
        await holder.release()
        await settle()
        if caller.task.done():
            assert reason_of(caller) == RejectionReason.DEADLINE_TOO_SHORT
            refused += 1
        else:
            await caller.release()
    assert refused < 50
    assert bulkhead.statistics().service_time < 5


async def test_a_deadline_shorter_than_the_service_time_is_refused_or_leaves_early() -> None:
    """
    Once queued calls have shown the service time (an EWMA, in statistics), a caller
    whose deadline is shorter is refused without queueing (DEADLINE_TOO_SHORT), and a
    waiter leaves as soon as its time left falls below it; a caller with a spent
    deadline is refused DEADLINE_EXCEEDED. A free slot is taken whatever the deadline.
    """
    clock = FakeClock(auto_advance=False)
    bulkhead = Bulkhead(1, max_queue=3, clock=clock)
    log: list[str] = []
    queued = await queued_then_running(bulkhead, log)
    clock.advance(1.0)
    await queued.release()  # it waited in the queue, so its 1.0 s is a sample
    assert bulkhead.statistics().service_time == pytest.approx(1.0)
    free = Held(bulkhead, log, "free", budget=0.0)  # a free slot: no deadline check
    await settle()
    short = Held(bulkhead, log, "short", budget=0.5)
    spent = Held(bulkhead, log, "spent", budget=0.0)
    later = Held(bulkhead, log, "later", budget=3.0)
    await settle()
    assert reason_of(short) == RejectionReason.DEADLINE_TOO_SHORT
    assert "typical service time" in str(short.error())
    assert reason_of(spent) == RejectionReason.DEADLINE_EXCEEDED
    clock.advance(1.9)
    await settle()
    assert not later.task.done()
    clock.advance(0.1)  # 1.0 s left, the service time: it would not make it
    await settle()
    assert reason_of(later) == RejectionReason.DEADLINE_TOO_SHORT
    assert bulkhead.statistics().expired == 3
    await free.release()
    assert log == ["running", "queued", "free"]
    assert (bulkhead.in_flight, bulkhead.queued) == (0, 0)


async def test_a_cancelled_queued_call_is_not_a_service_time_sample() -> None:
    """Only queued calls that ran to an end (success or failure) move the average."""
    clock = FakeClock(auto_advance=False)
    bulkhead = Bulkhead(1, max_queue=1, clock=clock)
    queued = await queued_then_running(bulkhead, [])
    clock.advance(5.0)
    queued.task.cancel()
    await settle()
    assert queued.task.cancelled()
    assert bulkhead.statistics().service_time == 0.0
    assert bulkhead.in_flight == 0


async def test_a_queued_call_that_fails_is_a_service_time_sample() -> None:
    """A failure took the dependency's time too: its duration counts, its slot is freed."""
    clock = FakeClock(auto_advance=False)
    bulkhead = Bulkhead(1, max_queue=1, clock=clock)
    holder = Held(bulkhead, [], "holder")
    await settle()

    async def failing() -> None:
        await clock.sleep(2.0)
        raise LookupError

    queued = asyncio.create_task(bulkhead.call(failing))
    await settle()
    await holder.release()
    await settle()
    clock.advance(2.0)
    with pytest.raises(LookupError):
        await within(queued, 2.0)
    assert bulkhead.statistics().service_time == 2.0
    assert bulkhead.in_flight == 0


def test_rejections_with_a_reason_pickle() -> None:
    """The reason survives pickling, as the other fields do."""
    errors: list[BulkheadFullError | ConcurrencyLimitError | RateLimitedError] = [
        BulkheadFullError("b", 1, 2, "shed", RejectionReason.PRIORITY_SHED),
        ConcurrencyLimitError("a", 3, "late", RejectionReason.DEADLINE_TOO_SHORT),
        RateLimitedError("r", 0.5, 1, "sheddable", RejectionReason.PRIORITY_SHED),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301  # our own bytes
        assert (type(copy), copy.reason, str(copy)) == (type(error), error.reason, str(error))


# --- AdaptiveConcurrency inherits the queue ---


async def test_adaptive_concurrency_sheds_by_priority_and_deadline() -> None:
    """
    AdaptiveConcurrency's queue orders and sheds by priority and lets waiters go at
    their deadline, with ConcurrencyLimitError carrying the reason; every finished
    call is a service-time sample.
    """
    clock = FakeClock(auto_advance=False)
    policy = AdaptiveConcurrency(AIMD(initial=1, max_limit=1), max_queue=2, clock=clock)
    log: list[str] = []
    running = Held(policy, log, "running")
    await settle()
    low = Held(policy, log, "low", Priority.SHEDDABLE)
    late = Held(policy, log, "late", budget=1.0)
    vip = Held(policy, log, "vip", Priority.CRITICAL_PLUS)
    await settle()
    assert reason_of(low) == RejectionReason.PRIORITY_SHED
    clock.advance(1.0)
    await settle()
    assert reason_of(late) == RejectionReason.DEADLINE_EXCEEDED
    await running.release()
    await settle()
    await vip.release()
    assert log == ["running", "vip"]
    stats = policy.statistics()
    assert (stats.shed, stats.expired, stats.rejected, stats.in_flight) == (1, 1, 2, 0)
    assert stats.service_time > 0
    assert "1 shed, 1 expired" in repr(policy)


# --- RateLimiter ---


async def test_a_sheddable_call_does_not_wait_for_a_permit() -> None:
    """
    With max_wait, a critical call reserves a permit to come and waits for it; a
    sheddable one is refused at once (PRIORITY_SHED, with the wait as retry_after),
    leaving the permit to the critical calls.
    """
    clock = FakeClock(auto_advance=False)
    limiter = RateLimiter(1, burst=1, max_wait=5, clock=clock)
    await limiter.call(_ok)
    with (
        capture_events(Rejected) as events,
        priority(Priority.SHEDDABLE_PLUS),
        pytest.raises(RateLimitedError) as refused,
    ):
        await limiter.call(_ok)
    assert refused.value.reason == RejectionReason.PRIORITY_SHED
    assert refused.value.retry_after == pytest.approx(1.0)
    assert [e.reason for e in events] == [RejectionReason.PRIORITY_SHED]  # type: ignore[attr-defined]
    waiting = asyncio.create_task(limiter.call(_ok))
    await settle()
    clock.advance(1.0)
    assert await within(waiting, 2.0) == "ok"


async def test_a_call_does_not_wait_past_its_deadline_for_a_permit() -> None:
    """
    A call whose permit comes after its deadline is refused at once
    (DEADLINE_TOO_SHORT); one whose deadline leaves time waits; one that would wait
    longer than max_wait anyway is refused as rate limited.
    """
    clock = FakeClock(auto_advance=False)
    limiter = RateLimiter(1, burst=1, max_wait=3, clock=clock)
    await limiter.call(_ok)
    with deadline(0.5, clock=clock), pytest.raises(RateLimitedError) as refused:
        await limiter.call(_ok)
    assert refused.value.reason == RejectionReason.DEADLINE_TOO_SHORT
    with deadline(2.0, clock=clock):
        waiting = asyncio.create_task(limiter.call(_ok))
        await settle()
    clock.advance(1.0)
    assert await within(waiting, 2.0) == "ok"
    brief = RateLimiter(1, burst=1, max_wait=0.5, clock=clock)
    await brief.call(_ok)
    with priority(Priority.SHEDDABLE), pytest.raises(RateLimitedError) as too_far:
        await brief.call(_ok)  # 1 s away: over max_wait whatever its priority
    assert too_far.value.reason == RejectionReason.RATE_LIMITED


async def test_a_critical_plus_call_waits_for_a_permit_and_a_shed_one_says_its_cost() -> None:
    """
    CRITICAL_PLUS waits for its permit like CRITICAL (only priorities below CRITICAL are
    refused a wait), and a call refused a wait reports the permits it asked for.
    """
    clock = FakeClock(auto_advance=False)
    limiter = RateLimiter(4, burst=2, max_wait=5, cost=1.5, clock=clock)
    await limiter.call(_ok)
    with priority(Priority.SHEDDABLE), pytest.raises(RateLimitedError) as refused:
        await limiter.call(_ok)
    assert refused.value.reason == RejectionReason.PRIORITY_SHED
    assert refused.value.permits == 1.5
    with priority(Priority.CRITICAL_PLUS):
        waiting = asyncio.create_task(limiter.call(_ok))
        await settle()
    assert limiter.statistics().waiting == 1
    clock.advance(0.25)
    assert await within(waiting, 2.0) == "ok"


async def _ok() -> str:
    return "ok"


async def test_remaining_time_and_priority_is_both_in_one_call() -> None:
    """What an outgoing request carries, read at once: as the two functions say it."""
    clock = FakeClock()
    assert remaining_time_and_priority() == (None, Priority.CRITICAL)
    with deadline(4.0, clock=clock), priority(Priority.SHEDDABLE):
        clock.advance(1.5)
        assert remaining_time_and_priority() == (remaining_time(), current_priority())
        assert remaining_time_and_priority() == (2.5, Priority.SHEDDABLE)
        clock.advance(10.0)
        assert remaining_time_and_priority() == (0.0, Priority.SHEDDABLE)  # never negative
