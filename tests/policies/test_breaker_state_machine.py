"""
Property test: a CircuitBreaker (consecutive mode) against a reference model of the
documented semantics, driven by Hypothesis through its public API on a private loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
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

from resilient import CircuitBreaker, CircuitOpenError, CircuitState
from resilient.testing import FakeClock
from tests._aio import settle

T = TypeVar("T")
CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN
RESET = 10  # integer seconds throughout, so fake time is exact
OUTCOMES = st.sampled_from(["success", "failure", "excluded"])


class Boom(Exception):
    """A failure of the dependency."""


class Excluded(Exception):
    """An error the breaker is told to exclude."""


@dataclass(frozen=True)
class Ticket:
    """An admitted call: the generation (state epoch) it entered in, and if it probes."""

    generation: int
    probe: bool


@dataclass(frozen=True)
class Refusal:
    """A rejected call and the retry_in it must carry."""

    retry_in: float


class Model:
    """
    The documented semantics, written as plainly as possible.
    """

    def __init__(self, failure_threshold: int, success_threshold: int, max_probes: int) -> None:
        self.failure_threshold = failure_threshold
        self.success_threshold = success_threshold
        self.max_probes = max_probes
        self.state = CLOSED
        self.generation = 0
        self.opened_at = 0.0
        self.run = 0  # consecutive failures while closed
        self.probes = 0  # probes of the current half-open period in flight
        self.probe_successes = 0
        self.successes = self.failures = self.ignored = self.rejections = self.opened = 0
        self.admitted = 0

    def move(self, new: CircuitState, now: float) -> None:
        if new is self.state:
            return
        self.state = new
        self.generation += 1
        self.probes = self.probe_successes = 0
        if new is OPEN:
            self.opened += 1
            self.opened_at = now
        elif new is CLOSED:
            self.run = 0

    def admit(self, now: float) -> Ticket | Refusal:
        if self.state is OPEN:
            if now < self.opened_at + RESET:
                self.rejections += 1
                return Refusal(self.opened_at + RESET - now)
            self.move(HALF_OPEN, now)
        if self.state is HALF_OPEN:
            if self.probes >= self.max_probes:
                self.rejections += 1
                return Refusal(0.0)
            self.probes += 1
            self.admitted += 1
            return Ticket(self.generation, probe=True)
        self.admitted += 1
        return Ticket(self.generation, probe=False)

    def finish(self, ticket: Ticket, outcome: str, now: float) -> None:
        current = ticket.generation == self.generation
        if ticket.probe and current:
            self.probes -= 1
        if outcome in {"excluded", "cancelled"}:
            self.ignored += 1
            return
        failed = outcome == "failure"
        if failed:
            self.failures += 1
        else:
            self.successes += 1
        if not current:
            return  # stale: admitted in an earlier state
        if not ticket.probe:
            self.run = self.run + 1 if failed else 0
            if self.run >= self.failure_threshold:
                self.move(OPEN, now)
        elif failed:
            self.move(OPEN, now)
        else:
            self.probe_successes += 1
            if self.probe_successes >= self.success_threshold:
                self.move(CLOSED, now)


class InFlight:
    """
    A call parked inside the breaker until a rule finishes or cancels it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, breaker: CircuitBreaker) -> None:
        self.gate = asyncio.Event()
        self.outcome = "success"
        self.entered = False
        self.task = loop.create_task(breaker.call(self._body))

    async def _body(self) -> str:
        self.entered = True
        await self.gate.wait()
        if self.outcome == "failure":
            raise Boom
        if self.outcome == "excluded":
            raise Excluded
        return "ok"


class BreakerMachine(RuleBasedStateMachine):
    """
    Calls, in-flight calls, time and operator switches against the model.
    """

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        self._breaker: CircuitBreaker | None = None
        self._model: Model | None = None
        self.in_flight: list[tuple[InFlight, Ticket]] = []

    @property
    def breaker(self) -> CircuitBreaker:
        assert self._breaker is not None
        return self._breaker

    @property
    def model(self) -> Model:
        assert self._model is not None
        return self._model

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def now(self) -> float:
        return self.clock.monotonic()

    @initialize(
        failure_threshold=st.integers(1, 3),
        success_threshold=st.integers(1, 3),
        half_open_max_calls=st.integers(1, 3),
    )
    def build(
        self, failure_threshold: int, success_threshold: int, half_open_max_calls: int
    ) -> None:
        self._breaker = CircuitBreaker(
            "machine",
            failure_threshold=failure_threshold,
            success_threshold=success_threshold,
            half_open_max_calls=half_open_max_calls,
            reset_timeout=RESET,
            exclude=Excluded,
            clock=self.clock,
        )
        self._model = Model(failure_threshold, success_threshold, half_open_max_calls)

    def call(self, outcome: str) -> None:
        expected = self.model.admit(self.now())
        ran: list[bool] = []

        async def fn() -> str:
            ran.append(True)
            if outcome == "failure":
                raise Boom
            if outcome == "excluded":
                raise Excluded
            return "ok"

        async def attempt() -> CircuitOpenError | None:
            try:
                await self.breaker.call(fn)
            except CircuitOpenError as error:
                return error
            except (Boom, Excluded):
                pass
            return None

        error = self.run(attempt())
        if isinstance(expected, Refusal):
            assert error is not None, f"admitted while the model is {self.model.state}"
            assert error.retry_in == expected.retry_in
            assert error.name == "machine"
            assert not ran
        else:
            assert error is None, f"rejected ({error}) while the model admits"
            assert ran
            self.model.finish(expected, outcome, self.now())

    @rule()
    def succeed(self) -> None:
        self.call("success")

    @rule()
    def fail(self) -> None:
        self.call("failure")

    @rule()
    def raise_excluded(self) -> None:
        self.call("excluded")

    @rule()
    def fail_in_a_row(self) -> None:
        # Enough failures to open a closed breaker: makes stale outcomes (calls admitted
        # before it opened) common in short runs.
        for _ in range(self.model.failure_threshold):
            self.call("failure")

    @rule(seconds=st.sampled_from([1, 3, RESET - 1, RESET, RESET + 1, 3 * RESET]))
    def advance(self, seconds: int) -> None:
        async def step() -> None:
            self.clock.advance(seconds)

        self.run(step())

    @rule(count=st.integers(1, 3))
    def start(self, count: int) -> None:
        for _ in range(count):
            expected = self.model.admit(self.now())
            call = InFlight(self.loop, self.breaker)
            self.run(settle())
            if isinstance(expected, Refusal):
                assert call.task.done()
                assert not call.entered
                error = call.task.exception()
                assert isinstance(error, CircuitOpenError)
                assert error.retry_in == expected.retry_in
            else:
                assert call.entered
                assert not call.task.done()
                self.in_flight.append((call, expected))

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data(), outcome=OUTCOMES)
    def finish(self, data: st.DataObject, outcome: str) -> None:
        call, ticket = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
        call.outcome = outcome
        call.gate.set()
        self.run(settle())
        assert call.task.done()
        if outcome == "success":
            assert call.task.result() == "ok"
        else:
            assert isinstance(call.task.exception(), Boom if outcome == "failure" else Excluded)
        self.model.finish(ticket, outcome, self.now())

    @precondition(lambda self: bool(self.in_flight))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        call, ticket = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
        call.task.cancel()
        self.run(settle())
        assert call.task.cancelled()
        self.model.finish(ticket, "cancelled", self.now())

    @rule()
    def trip(self) -> None:
        self.breaker.trip()
        self.model.move(OPEN, self.now())

    @rule()
    def reset(self) -> None:
        self.breaker.reset()
        self.model.move(CLOSED, self.now())
        self.model.run = 0

    @invariant()
    def state_matches_the_model(self) -> None:
        if self._breaker is None:
            return
        assert isinstance(self.breaker.state, CircuitState)
        assert self.breaker.state is self.model.state

    @invariant()
    def probes_never_exceed_the_limit(self) -> None:
        if self._breaker is None:
            return
        current = self.model.generation
        probing = sum(1 for _, t in self.in_flight if t.probe and t.generation == current)
        assert probing == self.model.probes == self.breaker._probes
        assert 0 <= probing <= self.breaker.half_open_max_calls
        if self.breaker.state is not HALF_OPEN:
            assert probing == 0

    @invariant()
    def open_means_rejecting_until_reset_timeout(self) -> None:
        if self._breaker is None:
            return
        wait = max(0.0, self.model.opened_at + RESET - self.now())
        if self.breaker.state is OPEN:
            assert self.breaker.retry_in() == wait
            if wait > 0:
                # A real call must be refused with that wait (call() checks it against
                # the model, which counts the rejection too).
                before = self.breaker.statistics().rejections
                self.call("success")
                assert self.breaker.statistics().rejections == before + 1
        else:
            assert self.breaker.retry_in() == 0.0

    @invariant()
    def counts_are_consistent(self) -> None:
        if self._breaker is None:
            return
        stats = self.breaker.statistics()
        model = self.model
        assert stats.state is model.state
        assert stats.calls == stats.successes + stats.failures + stats.ignored
        assert (stats.successes, stats.failures, stats.ignored) == (
            model.successes,
            model.failures,
            model.ignored,
        )
        assert (stats.rejections, stats.opened) == (model.rejections, model.opened)
        assert stats.window_failures == model.run
        # `calls` counts admitted calls once they finish; the rest are still in flight.
        assert stats.calls + len(self.in_flight) == model.admitted

    def teardown(self) -> None:
        try:
            for call, _ in self.in_flight:
                call.task.cancel()
            self.run(settle())
        finally:
            self.loop.close()


def test_breaker_follows_the_reference_model() -> None:
    """Any sequence of calls, probes, cancellations and time steps matches the model."""
    run_state_machine_as_test(
        BreakerMachine,
        settings=settings(max_examples=100, stateful_step_count=30, deadline=None),
    )
