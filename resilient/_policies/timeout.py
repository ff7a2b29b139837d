"""
Timeouts: enforce the deadline that travels with a call.

`Timeout(seconds)` cancels the guarded call when its budget runs out and raises
`TimeoutExceeded`. The absolute deadline is kept in the context variable of
`_engine.context` (its one home, with `deadline()` and `remaining_time()`), so a nested
timeout never outlives the budget left by an enclosing one.

The cancellation mechanics follow `asyncio.timeout` (Python 3.11): the timer cancels the
task, and on the way out `Task.uncancel()` tells our cancellation from anyone else's, so a
cancellation from outside is never swallowed.
"""

from __future__ import annotations

import asyncio
from asyncio import current_task
from collections.abc import Iterable
from contextvars import Token
from dataclasses import dataclass
from threading import get_ident
from types import TracebackType
from typing import TypeVar

from .._engine.clock import Clock
from .._engine.context import Deadline, deadline_in_force, reset_deadline, set_deadline
from .._engine.errors import TimeoutExceeded
from .._engine.events import Hook, TimedOut
from .._engine.policy import Args, AsyncFn, Kwargs, Policy
from .._engine.validate import check_seconds
from .watchdog import FORKS, TASK_OF_LOOP, Watchdogs

__all__ = ["Timeout", "TimeoutStatistics"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TimeoutStatistics:
    """
    A snapshot of a `Timeout`'s counters.
    """

    seconds: float
    calls: int
    timeouts: int


class _Scope(Deadline):
    """
    One guarded call: its task, deadline, context token, whether it expired.

    It is also the deadline the call's context carries (`DEADLINE`). Its watchdog may
    hold it a while after the call (until a firing or a compaction drops it), so it lets
    go of the task and the token when the call ends.
    """

    __slots__ = ("budget", "cancelling", "fired", "live", "task", "token")

    # `Timeout._open` builds each one field by field, in its own frame (every guarded
    # call makes one): `_Scope()` runs C code only, without `Deadline.__init__`'s frame
    # (and cheaper than `object.__new__(_Scope)`, which builds an argument tuple).
    __init__ = object.__init__  # no fields: _open sets them
    budget: float  # seconds it had
    cancelling: int  # its task's pending cancellations when it began
    fired: bool  # expired: its timer cancelled the task
    live: bool  # the watchdog's
    task: asyncio.Task[object] | None  # let go when the call ends
    token: Token[Deadline | None] | None  # its DEADLINE setting, until reset

    def expire(self) -> None:
        self.fired = True
        if self.task is not None:  # always, while watched
            self.task.cancel()


class Timeout(Policy):
    """
    Bound a call's duration; raise `TimeoutExceeded` when the budget runs out.

    Usable as a decorator, with `.call(fn, ...)`, or as ``async with Timeout(2.0):``.

    Args:
        seconds: The budget, > 0. An enclosing deadline with less time left wins.
        name: A label for events and metrics (default ``"timeout"``).
        clock: Time source (default: the system clock).
        hooks: Event hooks for this policy only.

    Raises:
        ValueError: `seconds` is not a finite number > 0.
    """

    kind = "timeout"
    _fusion = "step"  # runs inside a fused pipeline's frame (_engine/fusion.py)
    __slots__ = ("_calls", "_scopes", "_timeouts", "_watchdogs", "seconds")

    def __init__(
        self,
        seconds: float,
        *,
        name: str | None = None,
        clock: Clock | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock, hooks=hooks)
        self.seconds: float = check_seconds("Timeout", "seconds", seconds)
        self._calls = 0
        self._timeouts = 0
        self._scopes: dict[asyncio.Task[object], list[_Scope]] = {}
        # One per event loop: a Timeout shared by loops in several threads is safe.
        self._watchdogs = Watchdogs(self._clock)

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        scope = self._open()
        try:
            result = await fn(*args, **kwargs)
        except BaseException as error:
            raised = self._close(scope, error)
            if raised is error or raised is None:
                raise
            try:
                raise raised  # our own expiry: TimeoutExceeded, caused by the cancellation
            finally:
                del raised  # its traceback holds this frame: no reference cycle
        self._close(scope, None)
        return result

    def _close(self, scope: _Scope, error: BaseException | None) -> BaseException | None:
        """
        Leave `scope` (`_run`, ``async with``, a fused pipeline's step).

        Returns the error to raise in place of `error`: `TimeoutExceeded` (its cause set)
        when our own timer is why the call was cancelled, else `error` itself.
        """
        scope.live = False  # Watchdog.unwatch(scope), written out: every call pays it
        token = scope.token
        if token is not None:
            reset_deadline(token)
            scope.token = None
        # Withdraw our cancel request whatever happened, as asyncio.timeout does, so a
        # call that swallowed it doesn't leave the task with a stray pending cancel.
        task, scope.task = scope.task, None
        if (
            scope.fired
            and task is not None
            and task.uncancel() <= scope.cancelling
            and isinstance(error, asyncio.CancelledError)
        ):
            expired = self._expired(scope)
            expired.__cause__ = error  # as ``raise ... from``
            return expired
        return error

    def _open(self) -> _Scope:
        """
        Start a guarded call's scope (`_run`, ``async with``, a fused pipeline's step).

        Raises:
            TimeoutExceeded: An enclosing deadline is already spent: no work is started
                that can't finish.
        """
        dog = self._watchdogs.last
        loop = dog.loop
        if (
            dog.threaded
            and loop._thread_id == get_ident()  # type: ignore[union-attr]  # noqa: SLF001  # see `threaded`
            and dog.forks == FORKS[0]
        ):  # `loop` runs in this thread now: its task, without a syscall (see _watchdog)
            task = TASK_OF_LOOP(loop)  # type: ignore[arg-type]  # running, so not None
        else:
            task = current_task()
            if task is not None and loop is not task.get_loop():
                dog = self._watchdogs.switch(task.get_loop())
            elif task is not None:
                dog.forks = FORKS[0]  # asyncio found `loop` running in this process
        if task is None:
            raise RuntimeError("Timeout must be used inside an asyncio task")
        clock = self._clock
        now = clock.monotonic()
        deadline = now + self.seconds
        outer = deadline_in_force()
        if outer is not None:
            outer_at, outer_clock = outer.deadline, outer.clock
            # Compare on our clock: an outer deadline set on another clock is converted.
            outer_here = (
                outer_at if outer_clock is clock else now + outer_at - outer_clock.monotonic()
            )
            if outer_here < deadline:  # noqa: PLR1730  # not min(): a call per Timeout call
                deadline = outer_here
        self._calls += 1
        budget = deadline - now
        scope: _Scope = _Scope()  # see _Scope: no __init__ frame
        # Not `budget <= 0.0`: a NaN budget (a clock reading NaN or infinity) is refused
        # too, never watched (it would never expire).
        if not budget > 0.0:  # not watched, no deadline set: nothing to undo
            scope.budget = 0.0
            raise self._expired(scope)
        scope.deadline, scope.clock, scope.task = deadline, clock, task
        scope.cancelling = task.cancelling()
        scope.fired = False
        scope.budget = budget
        # `dog.watch(scope)`, its common case written out (every call pays it): in
        # deadline order, no compaction due, the timer armed no later than this.
        queue = dog.queue
        if deadline >= dog.tail and deadline >= dog.armed_at and len(queue) < dog.limit:
            scope.live = True
            queue.append(scope)
            dog.tail = deadline
        else:
            dog.watch(scope)
        scope.token = set_deadline(scope)
        return scope

    def _expired(self, scope: _Scope) -> TimeoutExceeded:
        self._timeouts += 1
        if self._listening():
            self._emit(TimedOut, timeout=scope.budget)
        return TimeoutExceeded(self.name, scope.budget)

    async def __aenter__(self) -> Timeout:
        scope = self._open()  # as in _run: a spent outer deadline fails before the body
        self._scopes.setdefault(scope.task, []).append(scope)  # type: ignore[arg-type]  # set
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task = asyncio.current_task()
        stack = self._scopes.get(task)  # type: ignore[arg-type]  # None never stored
        if not stack:
            raise RuntimeError("Timeout.__aexit__ without a matching __aenter__ in this task")
        scope = stack.pop()
        if not stack:
            del self._scopes[task]  # type: ignore[arg-type]  # the stack's, so not None
        raised = self._close(scope, exc)
        if raised is not exc:
            try:
                raise raised  # type: ignore[misc]  # TimeoutExceeded, its cause set by _close
            finally:
                del raised  # its traceback holds this frame: no reference cycle, as in _run

    def statistics(self) -> TimeoutStatistics:
        """
        Return a snapshot of this timeout's counters.
        """
        return TimeoutStatistics(seconds=self.seconds, calls=self._calls, timeouts=self._timeouts)

    def __repr__(self) -> str:
        return (
            f"<Timeout {self.name!r} {self.seconds:g}s calls={self._calls}"
            f" timeouts={self._timeouts}>"
        )
