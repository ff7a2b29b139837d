"""
Aids for testing code that uses `resilient`, without real waiting.

- `FakeClock`: pass it as ``clock=`` to any policy; time moves only when you (or a
  sleeping policy) say so.
- `instant_retries()`: every `Retry` skips its sleeps while it is in force.
- `capture_events()`: collect the events policies emit.

    clock = FakeClock()
    breaker = CircuitBreaker(name="db", failure_threshold=2, reset_timeout=30, clock=clock)
    ...
    clock.advance(30)          # the breaker is ready to probe, no sleep taken
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import UnionType
from typing import get_args

from ._engine.clock import TimerHandle
from ._engine.events import Event
from ._engine.hooks import add_hook
from ._engine.public import publish
from ._policies.retry import instant_retries_enabled, set_instant_retries

__all__ = ["FakeClock", "capture_events", "instant_retries", "set_instant_retries"]

_LARGEST = sys.float_info.max  # seconds beyond it (an int may be) are as infinite


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """
    A clock whose time only moves when told to; implements `resilient.Clock`.

    Args:
        start: The initial monotonic time.
        wall_start: The wall-clock (epoch) time matching `start`.
        auto_advance: When True (the default) `sleep(s)` moves time forward by `s` at
            once, so retries and backoffs take no real time. When False, `sleep` waits
            until `advance()` moves time past its end, for tests that step time by hand.

    Attributes:
        sleeps: Every positive duration passed to `sleep`, in order.
    """

    def __init__(
        self, start: float = 0.0, *, wall_start: float = 1_700_000_000.0, auto_advance: bool = True
    ) -> None:
        self._now = float(start)
        self._wall_offset = float(wall_start) - float(start)
        self.auto_advance = auto_advance
        self.sleeps: list[float] = []
        self._timers: list[tuple[float, int, _FakeTimer]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        """
        Return the fake monotonic time.
        """
        return self._now

    def wall(self) -> float:
        """
        Return the fake epoch time (moves with `monotonic`).
        """
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        """
        Sleep in fake time; always yields to the event loop once.

        Raises:
            ValueError: `seconds` is infinite and time advances by itself (it can't
                reach the end); with ``auto_advance=False`` such a sleep just waits.
        """
        if seconds > 0:
            self.sleeps.append(seconds)
            if self.auto_advance:
                if seconds > _LARGEST or not math.isfinite(seconds):  # an int may exceed any float
                    raise ValueError(
                        f"FakeClock.sleep(seconds={seconds!r}): time that advances by itself"
                        " can't reach the end of an infinite sleep"
                    )
                self.advance(seconds)
            else:
                woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

                def wake() -> None:
                    if not woken.done():  # the sleeper may have been cancelled
                        woken.set_result(None)

                timer = self.call_at(self._now + seconds, wake)
                try:
                    await woken
                finally:
                    timer.cancel()  # a cancelled sleeper leaves no pending timer behind
                return
        await asyncio.sleep(0)

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        """
        Run `callback` from the event loop once fake time reaches `when`.

        Raises:
            RuntimeError: `when` has come and no event loop runs in this thread to run
                the callback (nothing is scheduled).
        """
        if when <= self._now and not _loop_running():
            raise RuntimeError(
                f"FakeClock.call_at({when!r}, ...): the timer is due now (t={self._now:g})"
                " and no event loop is running in this thread to run it"
            )
        timer = _FakeTimer(when, callback)
        heapq.heappush(self._timers, (when, next(self._order), timer))
        if when <= self._now:
            self._fire_due()
        return timer

    def advance(self, seconds: float) -> None:
        """
        Move time forward and run every timer that came due, in order, from the loop.

        Raises:
            ValueError: `seconds` is negative, infinite or NaN.
            TypeError: `seconds` is not a number.
            RuntimeError: A timer would come due and no event loop runs in this thread
                to run it (time is left as it was: advance from inside the loop).
        """
        if isinstance(seconds, bool) or not isinstance(seconds, int | float):
            raise TypeError(f"FakeClock.advance(seconds=...): expected a number, got {seconds!r}")
        if seconds < 0:
            raise ValueError(f"FakeClock.advance(seconds={seconds!r}): time can't go backwards")
        if seconds > _LARGEST or not math.isfinite(seconds):  # an int may exceed any float
            # nan would freeze every comparison with the timers; inf would fire them all.
            raise ValueError(f"FakeClock.advance(seconds={seconds!r}): seconds must be finite")
        now = self._now + seconds
        timers = self._timers
        while timers and timers[0][2].cancelled:
            heapq.heappop(timers)  # cancelled: nothing to run, whenever it was due
        if timers and timers[0][0] <= now and not _loop_running():
            # Checked before anything moves: a timer popped here would be lost, and the
            # policy that armed it would wait for it forever (a Timeout never firing).
            raise RuntimeError(
                f"FakeClock.advance({seconds!r}): a timer comes due and no event loop is"
                " running in this thread to run it; advance from inside the loop (in the"
                " test's coroutine)"
            )
        self._now = now
        self._fire_due()

    def _fire_due(self) -> None:
        loop = None
        while self._timers and self._timers[0][0] <= self._now:
            if loop is None:  # asked before the first pop: a RuntimeError loses no timer
                loop = asyncio.get_running_loop()
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                # Through the loop, as real timers run: never inside the caller's frame.
                loop.call_soon(_run_timer, timer)

    @property
    def pending_timers(self) -> int:
        """
        Timers scheduled and neither fired nor cancelled.
        """
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def __repr__(self) -> str:
        return f"<FakeClock t={self._now:g} pending_timers={self.pending_timers}>"


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _run_timer(timer: _FakeTimer) -> None:
    if not timer.cancelled:
        timer.callback()


@contextmanager
def instant_retries() -> Iterator[None]:
    """
    Make every `Retry` skip its sleeps within the block.

    Delays are still computed and reported in events. The previous setting is restored
    on exit.
    """
    before = instant_retries_enabled()
    set_instant_retries(True)
    try:
        yield
    finally:
        set_instant_retries(before)


@contextmanager
def capture_events(
    kind: type[Event] | tuple[type[Event], ...] = Event,
) -> Iterator[list[Event]]:
    """
    Collect the events every policy emits within the block.

    Args:
        kind: Only keep events of this class, or of one of a tuple (or ``A | B`` union)
            of classes (default: all). Every policy's events are captured: to keep one
            policy's, filter the list on ``event.name``.

    Yields:
        The list the events are appended to, in the order emitted.

    Raises:
        TypeError: `kind` is not an event class nor a tuple of them (a policy, or a
            policy kind such as ``"retry"``: it would otherwise fail in each hook call).
    """
    # A tuple or a union of event classes is an `isinstance` filter as well.
    given: object = get_args(kind) if isinstance(kind, UnionType) else kind
    kinds = given if isinstance(given, tuple) else (given,)
    if not kinds or not all(isinstance(k, type) and issubclass(k, Event) for k in kinds):
        raise TypeError(
            f"capture_events(kind={kind!r}): expected an event class such as"
            " resilient.CallFailed, or a tuple of them (default: resilient.Event, every"
            " event); the block captures every policy's events: to keep one policy's,"
            " filter the list on event.name"
        )
    captured: list[Event] = []

    def keep(event: Event) -> None:
        if isinstance(event, kind):
            captured.append(event)

    remove = add_hook(keep)
    try:
        yield captured
    finally:
        remove()


publish(globals())  # set_instant_retries shows resilient.testing
