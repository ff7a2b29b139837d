"""
One timer for many deadlines.

Scheduling a loop timer per call costs a heap push on the way in and leaves a cancelled
handle in the loop's heap on the way out; at thousands of calls a second that is most of
a timeout's price. A `Watchdog` keeps the guarded calls in a dict and one timer armed for
the earliest deadline. A call registers and unregisters in O(1); the timer re-arms only
when a new deadline is earlier than the armed one (rare: with a fixed budget, deadlines
arrive in order) or when it fires (about once per budget under steady traffic).
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

from ._clock import Clock, TimerHandle

__all__ = ["Watchdog", "Watched"]


class Watched(Protocol):
    """
    Something with a deadline to enforce.
    """

    deadline: float
    task: asyncio.Task[object]

    def expire(self) -> None:
        """
        Called once, from the loop, when `deadline` has passed.
        """


class Watchdog:
    """
    Calls `expire()` on each watched item when its deadline passes, on one timer.
    """

    __slots__ = ("_active", "_armed_at", "_clock", "_handle", "_loop")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._active: dict[Watched, None] = {}
        self._handle: TimerHandle | None = None
        self._armed_at = math.inf
        self._loop: asyncio.AbstractEventLoop | None = None

    def watch(self, item: Watched) -> None:
        """
        Start enforcing `item.deadline`.
        """
        self._active[item] = None
        loop = item.task.get_loop()  # cheaper than asyncio.get_running_loop() on 3.11
        if loop is not self._loop:
            self._adopt(loop)
        if item.deadline < self._armed_at:
            self._arm(item.deadline)

    def unwatch(self, item: Watched) -> None:
        """
        Stop enforcing `item`'s deadline; a no-op once it expired.
        """
        self._active.pop(item, None)

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        # A policy outlived its loop (asyncio.run in a test suite, say): the old timer
        # will never fire, so forget it and whatever was left behind on that loop.
        self._loop = loop
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._armed_at = math.inf
        self._active = {i: None for i in self._active if i.task.get_loop() is loop}

    def _arm(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = at
        self._handle = self._clock.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = math.inf
        now = self._clock.monotonic()
        earliest = math.inf
        for item in tuple(self._active):
            if item.deadline <= now:
                del self._active[item]
                item.expire()
            elif item.deadline < earliest:
                earliest = item.deadline
        if earliest < math.inf:
            self._arm(earliest)
