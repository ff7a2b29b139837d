"""
Where a circuit breaker's state lives: the state-store protocol.

A `CircuitBreaker` is one state machine (`machine`). Without ``storage=`` its state is
its own memory, decided in-line at no cost. With ``storage=`` a `BreakerStore` holds
the state every process shares and makes each decision atomically:

- `admit`: may this call run, and in which state (closed, or half-open with a probe
  permit)? Rejections say how long until the next probe.
- `record`: count a finished call in the state it was admitted in (an outcome from an
  earlier state is stale and counts nothing); trip, re-open or close as the rules say.
- `force`: open or close now (an operator's `trip()` / `reset()`).

Two stores ship: `RedisBreakerStore` (redis.asyncio, one Lua script per decision) and an
adapter for pybreaker storages (``storage=pybreaker.CircuitRedisStorage(...)``). The
breaker bounds every round trip by ``storage_timeout`` and, when a store cannot answer
in time, decides from its own (local) state, so the store is never in the way of a call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .accounting import WindowTotals

__all__ = ["BreakerAdmission", "BreakerObservation", "BreakerSpec", "BreakerStore", "CircuitState"]


class CircuitState(enum.Enum):
    """
    The three states of a circuit breaker; values match pybreaker's state names.
    """

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


@dataclass(frozen=True, slots=True)
class BreakerSpec:
    """
    The rules a store decides by: a breaker's name and settings.

    Exactly one mode is set: `failure_threshold` (consecutive failures), `window` (the
    last N calls) or `window_duration` (the calls of the last T seconds).

    Attributes:
        name: The breaker's name; stores key the shared state by it.
        failure_threshold: Consecutive failures that open the breaker (consecutive mode).
        window: Calls in a count-based window.
        window_duration: Seconds in a time-based window.
        failure_rate: Failure share that opens a window-mode breaker.
        slow_call_rate: Slow-call share that opens a window-mode breaker.
        min_calls: Calls a window needs before its rates are judged.
        reset_timeout: Seconds the breaker stays open before a probe.
        success_threshold: Successful probes that close it.
        half_open_max_calls: Probes in flight at once while half-open.
    """

    name: str
    failure_threshold: int | None
    window: int | None
    window_duration: float | None
    failure_rate: float
    slow_call_rate: float
    min_calls: int
    reset_timeout: float
    success_threshold: int
    half_open_max_calls: int


@dataclass(frozen=True, slots=True)
class BreakerAdmission:
    """
    A store's answer to "may this call run?".

    Attributes:
        admitted: Whether the call may run.
        state: The state it runs in (closed or half-open), or the state that refused it.
        retry_in: Seconds until a probe may run (when refused while open; else 0).
        generation: The store's count of transitions; an outcome recorded with an older
            one is stale. Stores that keep no such count (pybreaker's) return 0.
        permit: The half-open probe permit the call holds (give it back by recording),
            or None. Stores that hand out no permits leave the per-process limit to the
            breaker.
        totals: What the store counts now (consecutive mode: the failure run), if read.
    """

    admitted: bool
    state: CircuitState
    retry_in: float = 0.0
    generation: int = 0
    permit: str | None = None
    totals: WindowTotals | None = None


@dataclass(frozen=True, slots=True)
class BreakerObservation:
    """
    A store's state after a record or a forced transition.

    Attributes:
        state: The state now.
        retry_in: Seconds until a probe may run, when open; else 0.
        totals: What the store counts now (consecutive mode: the failure run), if read.
    """

    state: CircuitState
    retry_in: float = 0.0
    totals: WindowTotals | None = None


@runtime_checkable
class BreakerStore(Protocol):
    """
    Shared state for circuit breakers, deciding atomically (implement it to add a store).

    `remote` says whether round trips leave the process. The breaker then runs each as a
    task of its own, bounded by its ``storage_timeout``: past it the call goes on with the
    breaker's local state, and the round trip is left to finish (never cancelled midway,
    so no connection is left half-read); while one is overdue the store is skipped.
    Errors a store raises also mean "decide locally"; they are logged once per outage.
    """

    remote: bool

    def bind(self, spec: BreakerSpec) -> None:
        """
        Check that this store can keep a breaker with `spec` (called at construction).

        Raises:
            ValueError: The store can't keep this mode (say which parameter).
        """

    async def admit(self, spec: BreakerSpec) -> BreakerAdmission:
        """
        Decide whether a call may run now.

        An open breaker whose reset_timeout has passed turns half-open here, and
        half-open probe permits are handed out here.
        """

    async def record(
        self, spec: BreakerSpec, admission: BreakerAdmission, failed: bool | None, slow: bool
    ) -> BreakerObservation:
        """
        Record the outcome of a call admitted by `admission`.

        `failed` is None when the call ended without an outcome (cancelled, or an excluded
        error): only its permit is given back.
        """

    async def force(self, spec: BreakerSpec, state: CircuitState) -> BreakerObservation:
        """
        Move to `state` now: open (for reset_timeout) or closed (counts forgotten).
        """
