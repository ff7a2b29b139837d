"""
The breaker's side of a `BreakerStore`: every round trip bounded, failures logged once.

A remote round trip runs as a task of its own, awaited for at most `timeout` seconds.
Past that (or when the store raises) the caller gets None and the breaker's local state
decides. The task is not cancelled: cancelling a Redis command midway leaves its
connection with an unread answer, and a pybreaker storage's thread can't be stopped
anyway. An overdue task is parked; while one is parked and unfinished the store counts
as stalled and is skipped altogether, so a frozen store costs each call nothing once
the first round trips have timed out, and holds at most the round trips that were in
flight when it froze. Once they come back, the store decides again.

A caller may give up before `timeout` (its own shorter deadline, a hedge cancelling a
loser): its round trip is parked too and counts as overdue once it has run `timeout`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .accounting import WindowTotals
from .store import (
    BreakerAdmission,
    BreakerObservation,
    BreakerSpec,
    BreakerStore,
    CircuitState,
)

__all__ = ["StoreLink"]

R = TypeVar("R")

_log = logging.getLogger("resilient.circuit_breaker")

# Errors that mean "the store can't answer now" rather than a bug here; a store's own
# errors (redis-py's, a pybreaker storage's) are all Exceptions.
_Failure = Exception


class StoreLink:
    """
    Bounded, logged round trips to one breaker's store, and what it said last.
    """

    __slots__ = (
        "_background",
        "_failing",
        "_monotonic",
        "_parked",
        "_seen",
        "spec",
        "store",
        "timeout",
    )

    def __init__(
        self,
        store: BreakerStore,
        spec: BreakerSpec,
        timeout: float,
        monotonic: Callable[[], float],
    ) -> None:
        self.store = store
        self.spec = spec
        self.timeout = timeout
        self._monotonic = monotonic  # the breaker's clock, for "said ... ago"
        # Round trips still running past their time, by when they were overdue
        # (time.monotonic, as asyncio.timeout).
        self._parked: dict[asyncio.Future[Any], float] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # What the store last said: (state, totals or None, clock.monotonic()).
        self._seen: tuple[CircuitState, WindowTotals | None, float] | None = None
        # Why the last round trip failed (the error's type), None once one answered.
        self._failing: str | None = None

    async def admit(self) -> BreakerAdmission | None:
        """
        Ask the store to admit a call; None when the local state must decide.
        """
        answer = await self._ask(self.store.admit(self.spec))
        if answer is not None:
            self._note(answer.state, answer.totals)
        return answer

    async def record(
        self, admission: BreakerAdmission, failed: bool | None, slow: bool
    ) -> BreakerObservation | None:
        """
        Record an outcome in the store; None when the local state must decide.
        """
        answer = await self._ask(self.store.record(self.spec, admission, failed, slow))
        if answer is not None:
            self._note(answer.state, answer.totals)
        return answer

    def release(self, admission: BreakerAdmission) -> None:
        """
        Give a probe permit back without an outcome, in the background (cancellation).
        """
        self._detach(lambda: self.record(admission, None, False))

    def force(self, state: CircuitState) -> None:
        """
        Write `state` to the store: at once for an in-process store, else in the background.
        """
        if self.store.remote:
            self._detach(lambda: self._forced(self.store.force(self.spec, state)))
            return
        call = self.store.force(self.spec, state)
        try:
            seen = _now(call)
        except _Failure as error:
            self._failed(error)
            return
        if seen is None:
            raise RuntimeError("an in-process BreakerStore (remote=False) suspended in force()")
        self._note(seen.state, seen.totals)

    async def _forced(self, call: Coroutine[Any, Any, BreakerObservation]) -> None:
        seen = await self._ask(call)
        if seen is not None:
            self._note(seen.state, seen.totals)

    def _detach(self, call: Callable[[], Coroutine[Any, Any, object]]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a sync operator script): nothing to share it with
            _log.warning(
                "circuit_breaker %r: no running event loop; the store was not updated",
                self.spec.name,
            )
            return
        task = loop.create_task(call())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _ask(self, call: Coroutine[Any, Any, R]) -> R | None:
        """
        The store's answer, or None (logged) when it failed or is overdue.
        """
        if self.stalled():
            call.close()
            return None
        try:
            result = await (self._bounded(call) if self.store.remote else call)
        except _Failure as error:
            self._failed(error)
            return None
        if self._failing is not None:
            self._failing = None
            _log.info("circuit_breaker %r: its storage answers again", self.spec.name)
        return result

    async def _bounded(self, call: Coroutine[Any, Any, R]) -> R:
        task = asyncio.get_running_loop().create_task(call)
        due = time.monotonic() + self.timeout
        try:
            async with asyncio.timeout(self.timeout):
                return await asyncio.shield(task)
        except TimeoutError:
            if task.done():  # the store's own timeout
                raise
            self._park(task, due)
            raise TimeoutError(f"no answer within storage_timeout={self.timeout}s") from None
        except asyncio.CancelledError:
            self._park(task, due)
            raise

    def _failed(self, error: Exception) -> None:
        # Once per outage: a misconfigured store (a client with decode_responses=True,
        # a wrong address) fails every round trip, and the breaker shares nothing.
        if self._failing is None:
            _log.warning(
                "circuit_breaker %r: a storage round trip failed (%r); deciding locally"
                " until the storage answers",
                self.spec.name,
                error,
            )
        self._failing = type(error).__name__

    def _park(self, task: asyncio.Task[Any], due: float) -> None:
        if task.done():
            return
        self._parked[task] = due
        task.add_done_callback(self._unpark)

    def _unpark(self, task: asyncio.Future[Any]) -> None:
        self._parked.pop(task, None)
        if not task.cancelled():
            task.exception()  # retrieved: an abandoned round trip's error is expected

    def stalled(self) -> bool:
        """
        Whether a round trip is overdue and still running.
        """
        now = time.monotonic()
        return any(due <= now and not task.done() for task, due in self._parked.items())

    def _note(self, state: CircuitState, totals: WindowTotals | None) -> None:
        if totals is None and self._seen is not None:
            totals = self._seen[1]
        self._seen = (state, totals, self._monotonic())

    def totals(self) -> WindowTotals | None:
        """
        The counts the store reported last, if any.
        """
        return None if self._seen is None else self._seen[1]

    def describe(self) -> str:
        """
        What the storage said last, for the breaker's repr.

        Returns:
            E.g. ``storage: closed failures=2 (0.4s ago)``, with ``stalled, deciding
            locally`` while a round trip is overdue, ``failing (AttributeError), deciding
            locally`` after one failed.
        """
        if self._seen is None:
            text = "storage: not read yet"
        else:
            state, totals, when = self._seen
            run = "" if totals is None else f" failures={totals.failures}"
            if totals is not None and self.spec.failure_threshold is None:
                run += f"/{totals.calls} calls"
            text = f"storage: {state.value}{run} ({self._monotonic() - when:.1f}s ago)"
        if self.stalled():
            return f"{text}, stalled, deciding locally"
        if self._failing is not None:
            return f"{text}, failing ({self._failing}), deciding locally"
        return text


def _now(call: Coroutine[Any, Any, R]) -> R | None:
    """
    Run a coroutine that never suspends (an in-process store's) to its end, here.

    Returns None (the coroutine closed) if it suspends after all.
    """
    try:
        call.send(None)
    except StopIteration as done:
        result: R = done.value
        return result
    call.close()
    return None
