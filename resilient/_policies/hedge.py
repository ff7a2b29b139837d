"""
Hedging: when an attempt is slow, start another; the first success wins.

The first attempt starts at once; each `delay` without a success starts one more, up to
`max_hedged` extra attempts. An attempt that fails starts the next one at once instead
of waiting out the delay (Polly's hedging does the same). The first success is returned
and the other attempts are cancelled; when every attempt fails, the last error is raised.

Attempts run as tasks, each in its own copy of the caller's context (taken when the call
starts, not when a timer fires), so trace context and the remaining deadline reach every
attempt. Cancelling the caller cancels them all.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from .._engine.clock import Clock, TimerHandle
from .._engine.context import retries_allowed
from .._engine.errors import PROGRAMMING_ERRORS
from .._engine.events import HedgeSent, Hook
from .._engine.policy import Args, AsyncFn, Kwargs, Policy
from .._engine.validate import check_int, check_seconds, error_matcher, retryable_by_default

__all__ = ["Hedge", "HedgeStatistics"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class HedgeStatistics:
    """
    A snapshot of a `Hedge`.

    Attributes:
        calls: Calls made.
        hedges: Extra attempts started.
        hedge_wins: Calls answered by an extra attempt rather than the first.
    """

    calls: int
    hedges: int
    hedge_wins: int


async def _attempt(fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
    return await fn(*args, **kwargs)


def _retrieve(task: asyncio.Task[Any]) -> None:
    # Losers are cancelled and not awaited; read their outcome so asyncio doesn't log
    # "exception was never retrieved".
    if not task.cancelled():
        task.exception()


class _Race:
    """
    The attempts of one hedged call and the signal that something changed.
    """

    __slots__ = ("changed", "context", "failed", "last_error", "tasks", "timer")

    def __init__(self) -> None:
        # The caller's context: a hedge launched from a clock timer runs in whatever
        # context the clock fires it in (a FakeClock's is the advancing task's).
        self.context = contextvars.copy_context()
        self.tasks: list[asyncio.Task[Any]] = []
        self.changed = asyncio.Event()
        self.timer: TimerHandle | None = None
        self.failed = 0
        self.last_error: BaseException | None = None

    def stop_hedging(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def cancel_all(self) -> None:
        self.stop_hedging()
        for task in self.tasks:
            task.cancel()


class Hedge(Policy):
    """
    Start another attempt when the current ones are slow; take the first success.

    Args:
        delay: Seconds to wait for a success before starting another attempt, > 0.
        max_hedged: Extra attempts allowed, >= 1.
        on: Which attempt errors start the next attempt at once: exception types or a
            predicate (default: any `Exception` but a `RejectedError` or a programming
            error, `PROGRAMMING_ERRORS`, unless named here). Other errors end the call.
        name: A label for events and metrics (default ``"hedge"``).
        clock: Time source (default: the system clock).
        hooks: Event hooks for this policy only.

    Raises:
        ValueError: A parameter is out of range.
    """

    kind = "hedge"
    __slots__ = ("_calls", "_hedges", "_on", "_wins", "delay", "max_hedged")

    def __init__(
        self,
        delay: float,
        *,
        max_hedged: int = 1,
        on: Any = None,
        name: str | None = None,
        clock: Clock | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock, hooks=hooks)
        self.delay = check_seconds("Hedge", "delay", delay)
        self.max_hedged = check_int("Hedge", "max_hedged", max_hedged, minimum=1)
        self._on = (
            retryable_by_default
            if on is None
            else error_matcher("Hedge", "on", on, spare_programming_errors=True)
        )
        self._calls = self._hedges = self._wins = 0

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        self._calls += 1
        if not retries_allowed():
            return await fn(*args, **kwargs)  # inside no_retries(): one attempt, no task
        race = _Race()
        closed = False
        try:
            self._launch(race, fn, args, kwargs)
            return await self._settle(race, fn, args, kwargs)
        except GeneratorExit:
            # The coroutine is being closed (`coro.close()`, or collected unfinished):
            # it may not await any more, so the attempts are cancelled and left to unwind.
            closed = True
            raise
        finally:
            race.cancel_all()
            # Wait for the losers to unwind, so their cleanup (an inner bulkhead's slot,
            # say) is done when the call returns, as a TaskGroup would.
            pending = [task for task in race.tasks if not task.done()]
            if pending and not closed:
                await asyncio.wait(pending)

    def _launch(self, race: _Race, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> None:
        task = asyncio.get_running_loop().create_task(
            _attempt(fn, args, kwargs), context=race.context.copy()
        )
        task.add_done_callback(lambda _: race.changed.set())
        task.add_done_callback(_retrieve)
        race.tasks.append(task)
        if len(race.tasks) > 1:
            self._hedges += 1
            if self._listening(HedgeSent):
                self._emit(HedgeSent, attempt=len(race.tasks))
        if len(race.tasks) <= self.max_hedged:
            if race.timer is not None:
                race.timer.cancel()
            at = self._clock.monotonic() + self.delay
            race.timer = self._clock.call_at(at, lambda: self._launch(race, fn, args, kwargs))

    async def _settle(self, race: _Race, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        while True:
            race.changed.clear()
            failed, retryable, fatal = 0, 0, None
            for index, task in enumerate(race.tasks):
                if not task.done():
                    continue
                failed += 1
                error = None if task.cancelled() else task.exception()
                if error is None and not task.cancelled():
                    self._wins += index > 0
                    return task.result()  # type: ignore[no-any-return]  # the attempt's T
                if error is not None and self._on(error):
                    retryable += 1
                    race.last_error = error
                elif error is not None:
                    fatal = fatal or error
            if fatal is not None:
                # A refused or non-retryable attempt stops new ones, but an attempt still
                # running may yet succeed (a hedge refused by an inner bulkhead or a
                # half-open breaker's taken probe must not cancel the primary).
                race.stop_hedging()
                if failed == len(race.tasks):
                    # The real failure over a refusal; but a programming error over
                    # both, or an outer Retry would repeat the call for a bug.
                    if isinstance(fatal, PROGRAMMING_ERRORS):
                        raise fatal
                    raise race.last_error or fatal
            elif retryable > race.failed:
                race.failed = retryable
                if len(race.tasks) <= self.max_hedged:
                    self._launch(race, fn, args, kwargs)  # don't wait out the delay
                    continue
            if failed == len(race.tasks):
                raise race.last_error or asyncio.CancelledError()
            await race.changed.wait()

    def statistics(self) -> HedgeStatistics:
        """
        Return a snapshot of this policy's counters.
        """
        return HedgeStatistics(calls=self._calls, hedges=self._hedges, hedge_wins=self._wins)

    def __repr__(self) -> str:
        return (
            f"<Hedge {self.name!r} delay={self.delay:g}s max_hedged={self.max_hedged}"
            f" calls={self._calls} hedges={self._hedges} wins={self._wins}>"
        )
