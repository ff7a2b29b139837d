"""
One timer for many deadlines, per event loop.

Scheduling a loop timer per call costs a heap push on the way in and leaves a cancelled
handle in the loop's heap on the way out; at thousands of calls a second that is most of
a timeout's price. A `Watchdog` keeps the guarded calls in a dict and one timer armed for
the earliest deadline. A call registers and unregisters in O(1); the timer re-arms only
when a new deadline is earlier than the armed one (rare: with a fixed budget, deadlines
arrive in order) or when it fires (about once per budget under steady traffic).

A timer belongs to one event loop, so a policy keeps one `Watchdog` per loop in
`Watchdogs`: a policy shared by loops in several threads enforces every loop's deadlines
on that loop's own timer, and never touches another loop's state.
"""

from __future__ import annotations

import asyncio
import math
import threading
from typing import Protocol

from .._engine.clock import Clock, TimerHandle

__all__ = ["Watchdog", "Watchdogs", "Watched"]


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

    Used only from the thread running `loop`.
    """

    __slots__ = ("_active", "_armed_at", "_clock", "_handle", "loop")

    def __init__(self, clock: Clock, loop: asyncio.AbstractEventLoop | None) -> None:
        self._clock = clock
        self.loop = loop
        self._active: dict[Watched, None] = {}
        self._handle: TimerHandle | None = None
        self._armed_at = math.inf

    def watch(self, item: Watched) -> None:
        """
        Start enforcing `item.deadline`.
        """
        self._active[item] = None
        if item.deadline < self._armed_at:
            self._arm(item.deadline)

    def unwatch(self, item: Watched) -> None:
        """
        Stop enforcing `item`'s deadline; a no-op once it expired.
        """
        self._active.pop(item, None)

    def __len__(self) -> int:
        return len(self._active)

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


class Watchdogs:
    """
    One `Watchdog` per event loop, for a policy that may be used from several loops.

    `last` is the watchdog of the loop used last, so a policy used from one loop pays
    one identity check per call (written out by the caller, on its hot path):

        dog = watchdogs.last
        if dog.loop is not loop:
            dog = watchdogs.switch(loop)

    The others are kept only while their loop runs: a finished loop's watchdog is
    dropped (its armed timer, if any, still holds it for the calls it watches), so
    sequential `asyncio.run` calls leave nothing behind.
    """

    __slots__ = ("_by_loop", "_clock", "_lock", "last")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.last = Watchdog(clock, None)  # matches no loop: the first call switches
        self._by_loop: dict[asyncio.AbstractEventLoop, Watchdog] = {}
        self._lock = threading.Lock()  # loops in two threads may switch at once

    def watched(self) -> int:
        """
        Count the deadlines enforced now, on every loop.
        """
        with self._lock:
            return sum(len(dog) for dog in self._by_loop.values())

    def switch(self, loop: asyncio.AbstractEventLoop) -> Watchdog:
        """
        Return the watchdog of `loop`, the running loop, and make it `last`.
        """
        with self._lock:
            for finished in [other for other in self._by_loop if not other.is_running()]:
                del self._by_loop[finished]  # `loop` runs: we are in one of its tasks
            dog = self._by_loop.get(loop)
            if dog is None:
                dog = self._by_loop[loop] = Watchdog(self._clock, loop)
            self.last = dog
            return dog
