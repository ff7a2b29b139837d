"""
One timer for many deadlines, per event loop.

Scheduling a loop timer per call costs a heap push on the way in and leaves a cancelled
handle in the loop's heap on the way out; at thousands of calls a second that is most of
a timeout's price. A `Watchdog` keeps the guarded calls in deadline order and one timer
armed for the earliest deadline. A call registers and unregisters in O(1); the timer
re-arms only when a new deadline is earlier than the armed one (rare: with a fixed budget,
deadlines arrive in order) or when it fires.

A firing costs what expired, not what is in flight. Deadlines that arrive in order (a
fixed budget) go to the end of a queue, the others (capped by an enclosing deadline) to a
heap; a call that ends only marks its entry dead, and a firing pops entries from the
front until it meets a live deadline still ahead, so each entry is looked at once on its
way out however often the timer fires (calls ending just before their deadlines make it
fire once per call). Dead entries held between firings are bounded by compacting when
the queue or the heap doubles.

A timer belongs to one event loop, so a policy keeps one `Watchdog` per loop in
`Watchdogs`: a policy shared by loops in several threads enforces every loop's deadlines
on that loop's own timer, and never touches another loop's state.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

from .._engine.clock import SYSTEM_CLOCK, Clock, TimerHandle

__all__ = ["TASK_OF_LOOP", "Watchdog", "Watchdogs", "Watched"]

# Compaction happens when the queue holds more than this many entries (doubled after).
_ROOM = 64

# `asyncio.current_task()` asks `get_running_loop()`, which on 3.11 pays a getpid() system
# call (to tell a forked child from its parent); 3.12 resets the running loop in a forked
# child instead, and the lookup is free. So on 3.11 a policy that knows the loop it ran on
# last asks `asyncio.current_task(loop)` directly when that loop is the one running in
# this thread now (asyncio's loops record the thread running them in `_thread_id`; other
# loops take the long way) and this is the process its watchdog was made in (a forked
# child counts one more fork here, as 3.12's asyncio resets its running loop).
LOOKUP_PAYS_GETPID = sys.version_info < (3, 12)
FORKS = [0]


def _task_of_loop() -> Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None]:
    # 3.11's `current_task(loop)` is a Python function around a dict lookup in the table
    # asyncio keeps of each loop's running task: the table's own `get` is the same answer
    # without the frame. (3.12 made `current_task` C; it is used as it is there.)
    table = getattr(asyncio.tasks, "_current_tasks", None)
    if LOOKUP_PAYS_GETPID and isinstance(table, dict):
        return table.get
    return asyncio.current_task


TASK_OF_LOOP = _task_of_loop()
"""``TASK_OF_LOOP(loop)``: the task running in `loop` (which must be running here)."""


def _forked() -> None:
    FORKS[0] += 1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


class Watched(Protocol):
    """
    Something with a deadline to enforce.

    `live` is the watchdog's: True from `watch` until `unwatch` or expiry.
    """

    deadline: float
    live: bool

    def expire(self) -> None:
        """
        Called once, from the loop, when `deadline` has passed.
        """


class Watchdog:
    """
    Calls `expire()` on each watched item when its deadline passes, on one timer.

    Used only from the thread running `loop`.
    """

    # `queue`, `tail`, `limit` and `armed_at` are public for `Timeout._open`, which
    # writes out `watch`'s common case (in order, no compaction, no re-arming): every
    # guarded call pays it.
    __slots__ = (
        "_clock",
        "_handle",
        "_head",
        "_late",
        "armed_at",
        "forks",
        "limit",
        "loop",
        "queue",
        "tail",
        "threaded",
    )

    def __init__(self, clock: Clock, loop: asyncio.AbstractEventLoop | None) -> None:
        self._clock = clock
        self.loop = loop
        self.forks = FORKS[0]  # which process it was made in (see LOOKUP_PAYS_GETPID)
        # Whether `loop` records the thread running it (asyncio's own loops do, in
        # `_thread_id`; uvloop's don't): then a policy may look its task up directly
        # (LOOKUP_PAYS_GETPID), reading the attribute without getattr's default.
        self.threaded = LOOKUP_PAYS_GETPID and hasattr(loop, "_thread_id")
        # Deadlines in order from _head on (a list, not a ~760-byte deque); dead ones
        # dropped lazily.
        self.queue: list[Watched] = []
        self._head = 0
        self.tail = -math.inf  # the deadline last queued
        self._late: list[tuple[float, int, Watched]] = []  # a heap of out-of-order ones
        self.limit = _ROOM
        self._handle: TimerHandle | None = None
        self.armed_at = math.inf

    def watch(self, item: Watched) -> None:
        """
        Start enforcing `item.deadline`.
        """
        item.live = True
        deadline = item.deadline
        if deadline >= self.tail:
            queue = self.queue
            queue.append(item)
            self.tail = deadline
            if len(queue) > self.limit:
                self._compact()
        else:  # id(item): no two items compared, and no two live ones share it
            late = self._late
            heapq.heappush(late, (deadline, id(item), item))
            # Bounded like the queue: calls capped by an enclosing deadline may all come
            # here, and ended ones would otherwise stay until the next firing.
            if len(late) > self.limit:
                self._compact()
        if deadline < self.armed_at:
            self._arm(deadline)

    def unwatch(self, item: Watched) -> None:
        """
        Stop enforcing `item`'s deadline; a no-op once it expired.
        """
        item.live = False

    def __len__(self) -> int:
        queued = self.queue[self._head :]
        return sum(item.live for item in queued) + sum(e[2].live for e in self._late)

    def _compact(self) -> None:
        self.queue = [item for item in self.queue[self._head :] if item.live]
        self._head = 0
        self._late = [entry for entry in self._late if entry[2].live]
        heapq.heapify(self._late)
        self.limit = 2 * (len(self.queue) + len(self._late)) + _ROOM

    def _arm(self, at: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self.armed_at = at
        self._handle = self._clock.call_at(at, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self.armed_at = math.inf
        now = self._clock.monotonic()
        queue, late, head = self.queue, self._late, self._head
        while head < len(queue) and not (queue[head].live and queue[head].deadline > now):
            _expire(queue[head])
            head += 1
        if head == len(queue):
            queue.clear()
            head = 0
            self.tail = -math.inf  # any deadline may queue again
        elif head > _ROOM and 2 * head > len(queue):
            del queue[:head]  # the popped front, in one go
            head = 0
        self._head = head
        while late and not (late[0][2].live and late[0][0] > now):
            _expire(heapq.heappop(late)[2])
        earliest = min(
            queue[head].deadline if queue else math.inf, late[0][0] if late else math.inf
        )
        if earliest < math.inf:
            self._arm(earliest)


def _expire(item: Watched) -> None:
    if item.live:  # else it ended before its deadline: only its entry is left
        item.live = False
        item.expire()


# Every `Watchdogs.last` until its first call: one for all, since it watches nothing.
_NOWHERE = Watchdog(SYSTEM_CLOCK, None)


# Loops in two threads may switch at once. One lock for every policy (a lock is ~90
# bytes): it is taken only when a policy meets a loop other than the one it used last.
_SWITCHING = threading.Lock()


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

    __slots__ = ("_by_loop", "_clock", "last")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self.last = _NOWHERE  # matches no loop: the first call switches
        self._by_loop: dict[asyncio.AbstractEventLoop, Watchdog] = {}

    def watched(self) -> int:
        """
        Count the deadlines enforced now, on every loop.
        """
        with _SWITCHING:
            return sum(len(dog) for dog in self._by_loop.values())

    def switch(self, loop: asyncio.AbstractEventLoop) -> Watchdog:
        """
        Return the watchdog of `loop`, the running loop, and make it `last`.
        """
        with _SWITCHING:
            for finished in [other for other in self._by_loop if not other.is_running()]:
                del self._by_loop[finished]  # `loop` runs: we are in one of its tasks
            dog = self._by_loop.get(loop)
            if dog is None:
                dog = self._by_loop[loop] = Watchdog(self._clock, loop)
            self.last = dog
            return dog
