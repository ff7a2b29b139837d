"""
Property test: `RedisBreakerStore`'s Lua script against the in-memory breaker as the
reference model. Hypothesis drives two breakers with the same settings and clock, one
native and one over Redis, through the same calls, in-flight calls (finished, slow or
cancelled), time steps and operator switches, in every mode; they must agree at every
step on admissions, rejections (with their retry_in), states and counters.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any, ClassVar, TypeVar

import pytest
import redis.asyncio
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

from resilient import CircuitBreaker, CircuitOpenError, RedisBreakerStore
from resilient.testing import FakeClock
from tests._aio import until
from tests._redis import RedisServer

T = TypeVar("T")
RESET = 10
SLOW = 2.0  # slow_call_duration where the mode has one

MODES: dict[str, dict[str, Any]] = {
    "consecutive": {"failure_threshold": 2},
    "count-window": {"window": 4, "min_calls": 3, "failure_rate": 0.5},
    "time-window": {"window_duration": 10.0, "min_calls": 2, "failure_rate": 0.5},
    "slow-calls": {
        "window": 3,
        "min_calls": 2,
        "failure_rate": 0.6,
        "slow_call_duration": SLOW,
        "slow_call_rate": 0.5,
    },
}


class Boom(Exception):
    """A failure of the dependency."""


class Excluded(Exception):
    """An error the breakers are told to exclude."""


class Pending:
    """
    A call parked inside a breaker until a rule finishes or cancels it.
    """

    def __init__(self, breaker: CircuitBreaker) -> None:
        self.gate = asyncio.Event()
        self.outcome = "success"
        self.entered = False
        self.task = asyncio.get_running_loop().create_task(breaker.call(self._body))

    async def _body(self) -> str:
        self.entered = True
        await self.gate.wait()
        if self.outcome == "failure":
            raise Boom
        if self.outcome == "excluded":
            raise Excluded
        return "ok"

    def result(self) -> str:
        if self.task.cancelled():
            return "cancelled"
        error = self.task.exception()
        if isinstance(error, CircuitOpenError):
            return f"rejected {error.retry_in:.6f}"
        return "ok" if error is None else type(error).__name__


class RedisAgainstMemory(RuleBasedStateMachine):
    """
    The same steps on a native breaker (the reference) and a Redis-backed one.
    """

    server: ClassVar[RedisServer]

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self.client = redis.asyncio.Redis(host=self.server.host, port=self.server.port)
        self.pair: tuple[CircuitBreaker, CircuitBreaker] | None = None
        self.pending: list[tuple[Pending, Pending]] = []

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    @property
    def breakers(self) -> tuple[CircuitBreaker, CircuitBreaker]:
        assert self.pair is not None
        return self.pair

    @initialize(
        mode=st.sampled_from(sorted(MODES)),
        success_threshold=st.integers(1, 2),
        half_open_max_calls=st.integers(1, 2),
    )
    def build(self, mode: str, success_threshold: int, half_open_max_calls: int) -> None:
        options = {
            **MODES[mode],
            "success_threshold": success_threshold,
            "half_open_max_calls": half_open_max_calls,
            "reset_timeout": RESET,
            "exclude": Excluded,
            "clock": self.clock,
        }
        store = RedisBreakerStore(
            self.client,
            prefix=f"resilient-model:{uuid.uuid4().hex}:",
            probe_lease=1e6,  # no lease lapses here: the model has none
            now=self.clock.monotonic,
        )
        # A generous bound: on a loaded machine the store must still decide every step.
        shared = CircuitBreaker("model", storage=store, storage_timeout=30, **options)
        self.pair = (CircuitBreaker("model", **options), shared)

    async def _drained(self) -> None:
        # Give-backs and operator switches reach Redis in the background.
        link = self.breakers[1]._shared
        assert link is not None
        await until(lambda: not link._background)

    def call(self, outcome: str) -> None:
        async def one(breaker: CircuitBreaker) -> str:
            call = Pending(breaker)
            call.outcome = outcome
            call.gate.set()
            await until(call.task.done)
            return call.result()

        native, shared = (self.run(one(breaker)) for breaker in self.breakers)
        assert native == shared

    @rule(outcome=st.sampled_from(["success", "failure", "excluded"]))
    def call_once(self, outcome: str) -> None:
        self.call(outcome)

    @rule()
    def fail_in_a_row(self) -> None:
        for _ in range(3):
            self.call("failure")

    @rule(seconds=st.sampled_from([1, SLOW, RESET - 1, RESET, 3 * RESET]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def start(self) -> None:
        async def begin() -> tuple[Pending, Pending]:
            calls = (Pending(self.breakers[0]), Pending(self.breakers[1]))
            await until(lambda: all(call.entered or call.task.done() for call in calls))
            return calls

        calls = self.run(begin())
        native, shared = calls
        assert (native.entered, native.task.done()) == (shared.entered, shared.task.done())
        if native.task.done():
            assert native.result() == shared.result()
        else:
            self.pending.append(calls)

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data(), outcome=st.sampled_from(["success", "failure", "excluded"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        calls = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))

        async def end(call: Pending) -> str:
            call.outcome = outcome
            call.gate.set()
            await until(call.task.done)
            return call.result()

        assert self.run(end(calls[0])) == self.run(end(calls[1]))

    @precondition(lambda self: bool(self.pending))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        calls = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        for call in calls:
            call.task.cancel()
        self.run(until(lambda: all(call.task.done() for call in calls)))
        self.run(self._drained())

    async def _switch(self, to: str) -> None:
        for breaker in self.breakers:
            breaker.trip() if to == "open" else breaker.reset()
        await self._drained()

    @rule()
    def trip(self) -> None:
        self.run(self._switch("open"))

    @rule()
    def reset(self) -> None:
        self.run(self._switch("closed"))

    @invariant()
    def the_two_agree(self) -> None:
        if self.pair is None:
            return
        native, shared = self.breakers
        assert "deciding locally" not in repr(shared)  # Redis decided every step
        assert native.state is shared.state
        assert native.retry_in() == pytest.approx(shared.retry_in(), abs=1e-6)
        mine, theirs = native.statistics(), shared.statistics()
        for field in ("successes", "failures", "ignored", "rejections", "opened", "slow_calls"):
            assert getattr(mine, field) == getattr(theirs, field), field
        if native.failure_threshold is not None:
            assert mine.window_failures == theirs.window_failures

    def teardown(self) -> None:
        try:
            # Cancelling a call may start its permit's give-back: until none are left.
            for _ in range(10):
                left = asyncio.all_tasks(self.loop)
                if not left:
                    break
                for task in left:
                    task.cancel()
                self.run(asyncio.wait(left, timeout=30))
            self.run(self.client.aclose())
        finally:
            self.loop.close()


def test_lua_store_follows_the_in_memory_breaker(redis_server: RedisServer) -> None:
    """
    Any sequence of calls, slow and stale outcomes, cancellations, time steps and
    switches gives the same admissions, states and counters over Redis as in memory.
    """
    RedisAgainstMemory.server = redis_server
    run_state_machine_as_test(
        RedisAgainstMemory,
        settings=settings(max_examples=60, stateful_step_count=30, deadline=None),
    )
