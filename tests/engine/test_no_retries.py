"""
Tests for `no_retries()`: one attempt inside the block, whatever the policies say.
"""

from __future__ import annotations

import asyncio

import pytest

from resilient import CircuitBreaker, Hedge, Retry, no_retries, pipeline
from resilient.testing import FakeClock, instant_retries
from tests._aio import result_of, settle


class Flaky:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        raise ConnectionError(f"attempt {self.calls}")


async def test_retry_makes_one_attempt_inside_no_retries() -> None:
    """Inside no_retries() a failing call is attempted once and its error re-raised."""
    flaky = Flaky()
    with no_retries(), pytest.raises(ConnectionError, match="attempt 1"):
        await Retry(attempts=5).call(flaky)
    assert flaky.calls == 1


async def test_retries_resume_after_the_block() -> None:
    """The switch is scoped: after the block, Retry retries again."""
    flaky = Flaky()
    with no_retries():
        pass
    with instant_retries(), pytest.raises(ConnectionError, match="attempt 3"):
        await Retry(attempts=3).call(flaky)
    assert flaky.calls == 3


async def test_breaker_still_counts_the_failure() -> None:
    """Breakers still see the single attempt: the failure counts toward opening."""
    breaker = CircuitBreaker(name="svc", failure_threshold=2)
    policy = pipeline(Retry(attempts=5), breaker)
    flaky = Flaky()
    for _ in range(2):
        with no_retries(), pytest.raises(ConnectionError):
            await policy.call(flaky)
    assert flaky.calls == 2
    assert breaker.statistics().failures == 2
    assert breaker.state.value == "open"


async def test_hedge_sends_no_extra_attempt_inside_no_retries() -> None:
    """Inside no_retries() Hedge runs a call slower than its delay once, in the caller's
    task; the same call outside the block is hedged."""
    clock = FakeClock(auto_advance=False)
    hedge = Hedge(1.0, clock=clock)
    started: list[asyncio.Task[object] | None] = []

    async def slow() -> str:
        started.append(asyncio.current_task())
        await clock.sleep(2.0)
        return "done"

    async def once() -> str:
        with no_retries():
            return await hedge.call(slow)

    for call, attempts in ((hedge.call(slow), 2), (once(), 1)):
        started.clear()
        task = asyncio.create_task(call)
        await settle()
        clock.advance(1.0)  # past the delay: a hedge is due
        await settle()
        assert len(started) == attempts
        clock.advance(1.0)
        assert await result_of(task) == "done"
    assert started == [task]
    assert hedge.statistics().hedges == 1  # the one sent outside no_retries()


async def test_no_retries_reaches_tasks_started_inside() -> None:
    """Tasks created inside the block inherit the switch through their context."""
    flaky = Flaky()
    with no_retries():
        task = asyncio.create_task(Retry(attempts=4).call(flaky))
    with pytest.raises(ConnectionError):
        await task
    assert flaky.calls == 1
