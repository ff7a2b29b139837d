"""
A circuit breaker whose state lives in a pybreaker storage, shared between processes.

pybreaker's storages (`CircuitMemoryStorage`, `CircuitRedisStorage`) hold a state name,
a failure counter, a success counter and the time the circuit opened. We read and write
them with pybreaker's own key layout and semantics, so a `pybreaker.CircuitBreaker` in a
synchronous program and our asyncio policy in another process share one breaker.

Storages are synchronous (redis-py's blocking client), so every storage round trip runs
in a worker thread: the event loop never waits on Redis. Each call costs one hop before
(admission) and one after (recording). Like pybreaker's, the updates are not atomic
across processes: two processes may both see the threshold and both open the circuit,
which is harmless.

The in-process mirror (`CircuitBreaker.state`, events, statistics) follows what this
process reads and writes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import pybreaker

from ._breaker import CircuitState
from ._errors import RejectedError
from ._events import CallFailed, CallSucceeded, Event, Hook, StateChanged
from ._policy import Thunk

if TYPE_CHECKING:
    from ._breaker import CircuitBreaker

__all__ = ["SharedState", "pybreaker_listener_hook"]

T = TypeVar("T")
R = TypeVar("R")

_STATES = {state.value: state for state in CircuitState}


class SharedState:
    """
    Drives one `CircuitBreaker` from a pybreaker storage.
    """

    __slots__ = ("_breaker", "_inline", "_opened_wall", "_storage")

    def __init__(self, breaker: CircuitBreaker, storage: pybreaker.CircuitBreakerStorage) -> None:
        if not isinstance(storage, pybreaker.CircuitBreakerStorage):
            raise TypeError(
                f"CircuitBreaker(storage=...): expected a pybreaker storage, got {storage!r}"
            )
        self._breaker = breaker
        self._storage = storage
        # In-memory storage does no I/O: a thread hop would only cost time.
        self._inline = isinstance(storage, pybreaker.CircuitMemoryStorage)
        self._opened_wall = 0.0

    async def _io(self, fn: Callable[..., R], *args: object) -> R:
        if self._inline:
            return fn(*args)
        return await asyncio.to_thread(fn, *args)

    async def run(self, thunk: Thunk[T]) -> T:
        breaker = self._breaker
        state, retry_in = await self._io(self._admit)
        self._mirror(state)
        probe = state is CircuitState.HALF_OPEN
        if retry_in is not None or (probe and breaker._probes >= breaker.half_open_max_calls):  # noqa: SLF001
            breaker._reject(retry_in or 0.0)  # noqa: SLF001
        if probe:
            breaker._probes += 1  # noqa: SLF001
        try:
            result = await thunk()
        except Exception as error:
            await self._finish(probe, error)
            raise
        except BaseException:
            await self._finish(probe, None, cancelled=True)
            raise
        await self._finish(probe, None)
        return result

    async def _finish(self, probe: bool, error: BaseException | None, *, cancelled: bool = False) -> None:
        breaker = self._breaker
        if probe:
            breaker._probes = max(0, breaker._probes - 1)  # noqa: SLF001
        if cancelled or (error is not None and breaker._excluded(error)):  # noqa: SLF001
            breaker._ignored += 1  # noqa: SLF001
            return
        breaker._count(error is not None, False)  # noqa: SLF001
        record = self._record_failure if error is not None else self._record_success
        self._mirror(await self._io(record, probe))

    def _mirror(self, state: CircuitState) -> None:
        self._breaker._transition(state)  # noqa: SLF001

    # --- storage round trips (run in a worker thread) ---

    def _admit(self) -> tuple[CircuitState, float | None]:
        """
        Return the state and, when the call must be rejected, the seconds to wait.
        """
        state = _STATES.get(self._storage.state, CircuitState.CLOSED)
        if state is not CircuitState.OPEN:
            return state, None
        opened = self._storage.opened_at
        self._opened_wall = opened.timestamp() if opened is not None else 0.0
        wait = self._opened_wall + self._breaker.reset_timeout - self._breaker.clock.wall()
        if wait > 0:
            return state, wait
        self._storage.state = CircuitState.HALF_OPEN.value
        self._storage.reset_success_counter()
        return CircuitState.HALF_OPEN, None

    def _record_failure(self, probe: bool) -> CircuitState:
        storage = self._storage
        if not probe:
            storage.increment_counter()
            if storage.counter < (self._breaker.failure_threshold or 1):
                return _STATES.get(storage.state, CircuitState.CLOSED)
        self._open()
        return CircuitState.OPEN

    def _record_success(self, probe: bool) -> CircuitState:
        storage = self._storage
        if not probe:
            storage.reset_counter()
            return _STATES.get(storage.state, CircuitState.CLOSED)
        storage.increment_success_counter()
        if storage.success_counter >= self._breaker.success_threshold:
            storage.state = CircuitState.CLOSED.value
            storage.reset_counter()
            return CircuitState.CLOSED
        return CircuitState.HALF_OPEN

    def _open(self) -> None:
        now = self._breaker.clock.wall()
        self._storage.opened_at = datetime.fromtimestamp(now, UTC)
        self._storage.state = CircuitState.OPEN.value
        self._storage.reset_success_counter()
        self._opened_wall = now

    def force(self, state: CircuitState) -> None:
        """
        Write `state` to the storage now (blocking; for operators' switches).
        """
        if state is CircuitState.OPEN:
            self._open()
        else:
            self._storage.state = state.value
            self._storage.reset_counter()

    def retry_in(self) -> float:
        """
        Seconds until the breaker (as last seen open by this process) allows a probe.
        """
        if self._breaker.state is not CircuitState.OPEN:
            return 0.0
        wait = self._opened_wall + self._breaker.reset_timeout - self._breaker.clock.wall()
        return max(0.0, wait)


def pybreaker_listener_hook(breaker: pybreaker.CircuitBreaker) -> Hook:
    """
    A hook that reports state changes, successes and failures to `breaker`'s listeners.
    """

    def forward(event: Event) -> None:
        for listener in breaker.listeners:
            if isinstance(event, StateChanged):
                old = pybreaker.CircuitBreakerState(breaker, event.old.value)
                new = pybreaker.CircuitBreakerState(breaker, event.new.value)
                listener.state_change(breaker, old, new)
            elif isinstance(event, CallSucceeded):
                listener.success(breaker)
            elif isinstance(event, CallFailed) and _counts(breaker, event.error):
                listener.failure(breaker, event.error)

    return forward


def _counts(breaker: pybreaker.CircuitBreaker, error: BaseException) -> bool:
    return (
        isinstance(error, Exception)
        and not isinstance(error, RejectedError)
        and breaker.is_system_error(error)
    )

