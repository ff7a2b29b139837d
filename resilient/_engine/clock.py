"""
Time, injected.

Policies never call `time` or `asyncio.sleep` directly: they take a `Clock`, so
`resilient.testing.FakeClock` can run them without real waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "TimerHandle"]


class TimerHandle(Protocol):
    """
    A scheduled callback that can still be called off.
    """

    def cancel(self) -> None:
        """
        Call the callback off; a no-op when it already ran.
        """


@runtime_checkable
class Clock(Protocol):
    """
    The time source every policy uses.

    `monotonic` and `call_at` share one time base; `wall` is seconds since the epoch and
    is only used where several processes must agree on a moment (shared breaker state).
    """

    def monotonic(self) -> float:
        """
        Return the current monotonic time in seconds.
        """

    def wall(self) -> float:
        """
        Return the current time in seconds since the Unix epoch.
        """

    async def sleep(self, seconds: float) -> None:
        """
        Suspend the calling task for `seconds`.
        """

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        """
        Run `callback` once `monotonic()` reaches `when`, from the running event loop.
        """


class SystemClock:
    """
    The real clock: `time.monotonic`, `time.time` and the running event loop's timers.

    `monotonic()` is `time.monotonic()` and `wall()` is `time.time()`.
    """

    __slots__ = ()

    # The builtins themselves, not wrappers: `clock.monotonic()` is on every hot path,
    # and a Python-level method around it doubles its cost.
    monotonic = staticmethod(time.monotonic)
    wall = staticmethod(time.time)

    async def sleep(self, seconds: float) -> None:
        """
        Await `asyncio.sleep(seconds)`.
        """
        await asyncio.sleep(seconds)

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandle:
        """
        Schedule `callback` on the running loop at monotonic time `when`.
        """
        # Converting to a delay keeps us right on loops whose time() is not
        # time.monotonic() (uvloop keeps its own millisecond clock).
        loop = asyncio.get_running_loop()
        return loop.call_later(when - time.monotonic(), callback)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
