"""
What a `HealthMonitor` watches besides its checks, and the tasks it starts for them.

Watched breakers count towards readiness; registrations follow the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from inspect import iscoroutine
from typing import TypeGuard

from .._engine.clock import TimerHandle
from .._policies.breaker.machine import CircuitBreaker, CircuitState
from .discovery import Instance, Registry
from .health_report import DEGRADED, HEALTHY, UNHEALTHY, HealthStatus

# Internal: shared with `health` only.
__all__: list[str] = []

_log = logging.getLogger("resilient.health")


def away_from(home: asyncio.AbstractEventLoop | None) -> TypeGuard[asyncio.AbstractEventLoop]:
    """
    Whether `home` is running, but not in this thread: work for it must be handed over.
    """
    if home is None or not home.is_running():
        return False
    try:
        return asyncio.get_running_loop() is not home
    except RuntimeError:  # sync code in another thread
        return True


class WatchedBreaker:
    """
    A breaker whose state counts towards readiness (internal).
    """

    __slots__ = ("breaker", "critical", "timer", "unhook")

    def __init__(self, breaker: CircuitBreaker, critical: bool) -> None:
        self.breaker, self.critical = breaker, critical
        self.unhook: Callable[[], None] = lambda: None
        self.timer: TimerHandle | None = None

    def status(self) -> HealthStatus:
        """
        Return what the breaker's current state means for readiness.
        """
        state = self.breaker.state
        if state is CircuitState.CLOSED:
            return HEALTHY
        # Past reset_timeout an open breaker lets the next call probe; an instance taken
        # out of rotation would never make that call, so from then on it only degrades.
        if state is CircuitState.OPEN and self.critical and self.breaker.retry_in() > 0:
            return UNHEALTHY
        return DEGRADED

    def arm(self, evaluate: Callable[[], None]) -> None:
        """
        Call `evaluate` once the open breaker is due a probe (it then only degrades).
        """
        clock = self.breaker.clock
        # Without a running loop (tripped from synchronous code) no timer can be set;
        # the check loops' next evaluation catches up instead.
        with contextlib.suppress(RuntimeError):
            self.timer = clock.call_at(clock.monotonic() + self.breaker.retry_in(), evaluate)

    def cancel_timer(self) -> None:
        """
        Call off a pending `arm` timer.
        """
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Registration:
    """
    One instance kept in a registry while the service is ready.
    """

    __slots__ = ("instance", "registered", "registry", "task")

    def __init__(self, registry: Registry, instance: Instance) -> None:
        self.registry, self.instance = registry, instance
        # None: unknown. It may have been registered before us, or a call failed midway.
        self.registered: bool | None = None
        self.task: asyncio.Task[None] | None = None

    def due(self, status: HealthStatus) -> bool:
        idle = self.task is None or self.task.done()
        return idle and self.registered != (status is not UNHEALTHY)

    async def sync(self, status: Callable[[], HealthStatus]) -> None:
        # Loop: the verdict may change while the registry call is in flight.
        while (want := status() is not UNHEALTHY) != self.registered:
            if not await self.set(want):
                return  # retried after the next evaluation

    async def set(self, registered: bool) -> bool:
        action = self.registry.register if registered else self.registry.deregister
        verb = "register" if registered else "deregister"
        self.registered = None
        try:
            await action(self.instance)
        except Exception as error:  # noqa: BLE001  # a registry outage must not stop the monitor
            _log.warning(
                "health: could not %s %r (%s); will retry",
                verb,
                self.instance.id,
                type(error).__name__,  # the message may name a URL with credentials
            )
            return False
        self.registered = registered
        _log.info("health: %sed %r (%s)", verb, self.instance.id, type(self.registry).__name__)
        return True


def spawn(
    tasks: set[asyncio.Task[None]], awaitable: Awaitable[object], what: str
) -> asyncio.Task[None] | None:
    """
    Run `awaitable` as a task kept in `tasks` while it runs, its failure logged.

    Outside a running loop (a breaker tripped from synchronous code) nothing runs: the
    awaitable is closed and the skip logged.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        if iscoroutine(awaitable):
            awaitable.close()
        _log.warning("health: no running event loop; %s skipped", what)
        return None
    task = loop.create_task(_guarded(awaitable, what), name=f"health: {what}")
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    return task


async def _guarded(awaitable: Awaitable[object], what: str) -> None:
    try:
        await awaitable
    except Exception:  # noqa: BLE001  # logged; the monitor carries on
        _log.exception("health: %s failed", what)
