"""
Health: run checks in the background, aggregate them, act when the verdict changes.

    monitor = HealthMonitor(name="orders")
    monitor.add_check("db", ping_db, interval=5.0, timeout=1.0)
    monitor.add_check("cache", ping_cache, critical=False)
    monitor.watch_breaker(inventory_breaker)
    monitor.keep_registered(registry, instance)
    async with monitor:          # one round of checks, then one task per check
        ...

Readiness (every check and watched breaker) is the worst of:

- a failing critical check, or an open ``critical=True`` breaker: UNHEALTHY;
- a failing non-critical check, or a watched breaker that is open or half-open: DEGRADED;
- otherwise HEALTHY.

Liveness looks at ``liveness=True`` checks only, and is HEALTHY when there are none: an
answering process is alive, and a failing dependency must never get it restarted.

Transitions of the readiness verdict are logged and passed to `on_transition` callbacks
(remediation); `keep_registered` uses the verdict to keep an instance in a registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from inspect import isawaitable
from types import MappingProxyType, TracebackType

from .._engine.callables import not_callable
from .._engine.clock import Clock
from .._engine.events import Event, StateChanged
from .._engine.validate import check_clock, check_int, check_name, check_seconds
from .._policies.breaker.machine import CircuitBreaker, CircuitState
from .._policies.timeout import Timeout
from .discovery import Instance, Registry
from .health_check import CheckState, run_check
from .health_report import (
    SEVERITY,
    UNHEALTHY,
    HealthCheck,
    HealthReport,
    HealthStatus,
    ReportKind,
    TransitionHook,
    worst,
)
from .health_watch import Registration, WatchedBreaker, away_from, spawn

__all__ = ["HealthMonitor"]

_log = logging.getLogger("resilient.health")


class HealthMonitor:
    """
    Run health checks, watch breakers, aggregate a verdict and act on its transitions.

    Args:
        name: The service's name, for logs (default ``"service"``).
        clock: Time source for intervals, timeouts and report times (default: the system
            clock; `resilient.testing.FakeClock` in tests).
    """

    def __init__(self, *, name: str = "service", clock: Clock | None = None) -> None:
        self.name = check_name("HealthMonitor", name, "service")
        self._clock = check_clock("HealthMonitor", clock)
        self._checks: dict[str, CheckState] = {}
        self._breakers: dict[str, WatchedBreaker] = {}
        self._hooks: list[TransitionHook] = []
        self._registrations: list[Registration] = []
        self._status = UNHEALTHY  # not ready until the first evaluation says otherwise
        self._running = False
        self._stopped = False  # stop() was called: remediation is off until start()
        self._loops: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._home: asyncio.AbstractEventLoop | None = None  # the loop start() ran on

    @property
    def status(self) -> HealthStatus:
        """
        The readiness verdict as of the last evaluation (UNHEALTHY before the first).
        """
        return self._status

    def add_check(
        self,
        name: str,
        check: HealthCheck,
        *,
        interval: float = 10.0,
        timeout: float = 2.0,
        critical: bool = True,
        liveness: bool = False,
        failures_before_unhealthy: int = 1,
        successes_before_healthy: int = 1,
        in_thread: bool | None = None,
    ) -> None:
        """
        Register a check, run every `interval` seconds once the monitor is started.

        Args:
            name: A unique, stable name (shown in reports and logs).
            check: An async callable, or a plain one: that runs in a thread of its
                own (at most one at a time; a run while the previous one is still
                blocked fails at once), and may return an awaitable to be awaited,
                such as ``lambda: db.ping()``. None or True pass, False fails, a
                `CheckResult` says which with a detail; an exception fails with its
                type's name.
            interval: Seconds between the end of one run and the start of the next.
            timeout: Seconds a run may take; a slower run fails.
            critical: A failure makes the service UNHEALTHY (else DEGRADED).
            liveness: Count the check for liveness too (readiness counts every check).
            failures_before_unhealthy: Failed runs in a row before the check fails.
            successes_before_healthy: Passed runs in a row before it passes again.
            in_thread: Where a plain callable is called: None (the default) runs an
                ``async def`` on the loop and anything else in a thread; False calls it
                on the loop (for ``lambda: loop.run_in_executor(...)`` and other
                callables that need the running loop; a blocking one then blocks it);
                True always uses a thread.

        Raises:
            ValueError: A duplicate name, or a parameter out of range.
            TypeError: `check` is not callable, or a parameter has the wrong type.
            RuntimeError: The monitor is running; add checks before `start()`.
        """
        owner = "HealthMonitor.add_check"
        name = check_name(owner, name, "")
        if not name or name in self._checks:
            raise ValueError(f"{owner}(name={name!r}): names must be unique and non-empty")
        if not callable(check):
            usage = f"add_check({name!r}, {{0}}), not add_check({name!r}, {{0}}())"
            raise not_callable(f"{owner}(check=...)", check, usage, "a callable")
        if self._running:
            raise RuntimeError(f"{owner}({name!r}): add checks before start()")
        self._checks[name] = CheckState(
            name,
            check,
            interval=check_seconds(owner, "interval", interval),
            timeout=Timeout(
                check_seconds(owner, "timeout", timeout), name=f"health:{name}", clock=self._clock
            ),
            critical=bool(critical),
            liveness=bool(liveness),
            fail_after=check_int(
                owner, "failures_before_unhealthy", failures_before_unhealthy, minimum=1
            ),
            pass_after=check_int(
                owner, "successes_before_healthy", successes_before_healthy, minimum=1
            ),
            in_thread=in_thread,
        )

    def watch_breaker(
        self, breaker: CircuitBreaker, *, critical: bool = False
    ) -> Callable[[], None]:
        """
        Count `breaker` towards readiness: open or half-open makes the service DEGRADED.

        With ``critical=True`` an open breaker makes it UNHEALTHY instead, until its
        `reset_timeout` has passed (the next call would probe; an instance taken out of
        rotation would never make it). State changes are evaluated as they happen.

        Returns:
            A function that stops watching the breaker.

        Raises:
            TypeError: `breaker` is not a `CircuitBreaker`.
            ValueError: A breaker with that name is already watched.
        """
        if not isinstance(breaker, CircuitBreaker):
            raise TypeError(
                f"HealthMonitor.watch_breaker: expected a CircuitBreaker, got {breaker!r}"
            )
        if breaker.name in self._breakers:
            raise ValueError(
                f"HealthMonitor.watch_breaker: a breaker named {breaker.name!r} is watched"
            )
        watched = WatchedBreaker(breaker, bool(critical))
        watched.unhook = breaker.add_hook(lambda event: self._on_breaker_event(watched, event))
        self._breakers[breaker.name] = watched
        self._evaluate()
        return lambda: self._unwatch(watched)

    def on_transition(self, callback: TransitionHook) -> Callable[[], None]:
        """
        Call ``callback(old, new, report)`` whenever the readiness verdict changes.

        A coroutine function's coroutine runs as a task the monitor tracks (`stop()`
        cancels it). A callback that raises is logged; the monitor carries on.

        Returns:
            A function that removes the callback again.

        Raises:
            TypeError: `callback` is not callable.
        """
        if not callable(callback):
            raise TypeError(f"HealthMonitor.on_transition: expected a callable, got {callback!r}")
        self._hooks.append(callback)
        return lambda: self._hooks.remove(callback) if callback in self._hooks else None

    def keep_registered(self, registry: Registry, instance: Instance) -> None:
        """
        While running, keep `instance` registered unless the service is UNHEALTHY.

        It is registered while readiness is HEALTHY or DEGRADED, deregistered when
        UNHEALTHY and on `stop()`. A failed registry call is logged and retried after the
        next evaluation.

        Raises:
            TypeError: `registry` is not a `Registry` or `instance` not an `Instance`.
        """
        if not isinstance(registry, Registry):
            raise TypeError(f"HealthMonitor.keep_registered: expected a Registry, got {registry!r}")
        if not isinstance(instance, Instance):
            raise TypeError(
                f"HealthMonitor.keep_registered: expected an Instance, got {instance!r}"
            )
        self._registrations.append(Registration(registry, instance))
        if self._running:
            self._evaluate()

    async def start(self) -> None:
        """
        Run every check once, then keep running each on its interval in a task.

        A no-op while already running.
        """
        if self._running:
            return
        self._running = True
        self._stopped = False
        try:
            await self.check_now()
        except BaseException:
            self._running = False
            raise
        loop = self._home = asyncio.get_running_loop()
        self._loops = [
            loop.create_task(self._loop(check), name=f"health check {check.name!r}")
            for check in self._checks.values()
        ]
        # Let each loop take its first step, so the intervals are counting (on a fake
        # clock too) by the time start() returns.
        await asyncio.sleep(0)

    async def stop(self) -> None:
        """
        Cancel and await the check tasks and callbacks in flight; deregister instances.
        """
        self._running = False
        self._stopped = True
        for watched in self._breakers.values():
            watched.cancel_timer()
        current = asyncio.current_task()
        tasks = [t for t in (*self._loops, *self._tasks) if t is not current]
        self._loops = []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for registration in self._registrations:
            if registration.registered is not False:
                await registration.set(False)

    async def __aenter__(self) -> HealthMonitor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def check_now(self) -> HealthReport:
        """
        Run every check once, concurrently, and evaluate the verdict.

        Returns:
            The readiness report afterwards.
        """
        async with asyncio.TaskGroup() as group:
            for check in self._checks.values():
                group.create_task(self._run(check))
        self._evaluate()
        return self.report()

    def report(self, kind: ReportKind = "readiness") -> HealthReport:
        """
        Return the current verdict and its parts.

        Args:
            kind: ``"readiness"`` (every check and watched breaker) or ``"liveness"``
                (``liveness=True`` checks only; HEALTHY when there are none).

        Raises:
            ValueError: `kind` is neither.
        """
        if kind not in ("readiness", "liveness"):
            raise ValueError(f"HealthMonitor.report(kind={kind!r}): 'readiness' or 'liveness'")
        ready = kind == "readiness"
        checks = {n: c.snapshot() for n, c in self._checks.items() if ready or c.liveness}
        breakers = self._breakers if ready else {}
        statuses = [*(c.status for c in checks.values()), *(w.status() for w in breakers.values())]
        return HealthReport(
            status=worst(statuses),
            checks=MappingProxyType(checks),
            breakers=MappingProxyType({n: w.breaker.state.value for n, w in breakers.items()}),
            time=self._clock.monotonic(),
        )

    async def _loop(self, check: CheckState) -> None:
        while True:
            await self._clock.sleep(check.interval)
            await self._run(check)
            self._evaluate()

    async def _run(self, check: CheckState) -> None:
        started = self._clock.monotonic()
        passed, detail = await run_check(check)
        finished = self._clock.monotonic()
        if check.record(passed, detail, finished, finished - started):
            verdict = "passing" if passed else f"failing ({detail})"
            _log.log(
                logging.INFO if passed else logging.WARNING,
                "health check %r is now %s",
                check.name,
                verdict,
            )

    def _evaluate(self) -> None:
        report = self.report()
        old, new = self._status, report.status
        if new is not old:
            self._status = new
            worse = SEVERITY[new] > SEVERITY[old]
            failing = sorted(n for n, c in report.checks.items() if not c.healthy)
            _log.log(
                logging.WARNING if worse else logging.INFO,
                "health: %s is %s (was %s); failing checks: %s; breakers: %s",
                self.name,
                new.value,
                old.value,
                ", ".join(failing) or "none",
                dict(report.breakers),
            )
            for hook in tuple(self._hooks):
                self._call_hook(hook, old, new, report)
        if self._running:
            for registration in self._registrations:
                if registration.due(new):
                    registration.task = self._spawn(
                        registration.sync(lambda: self._status), "registry sync"
                    )

    def _call_hook(
        self, hook: TransitionHook, old: HealthStatus, new: HealthStatus, report: HealthReport
    ) -> None:
        if self._stopped:
            return  # a stopped monitor remediates nothing (its breakers may still change)
        try:
            outcome = hook(old, new, report)
        except Exception:  # noqa: BLE001  # a broken remediation must not break monitoring
            _log.exception("health: transition hook %r failed", hook)
            return
        if isawaitable(outcome):
            self._spawn(outcome, f"transition hook {hook!r}")

    def _spawn(self, awaitable: Awaitable[object], what: str) -> asyncio.Task[None] | None:
        return spawn(self._tasks, awaitable, what)

    def _on_breaker_event(self, watched: WatchedBreaker, event: Event) -> None:
        if isinstance(event, StateChanged):
            if away_from(self._home):  # a breaker shared with a loop in another thread
                self._home.call_soon_threadsafe(self._on_breaker_event, watched, event)
                return
            watched.cancel_timer()
            self._evaluate()
            if watched.critical and event.new is CircuitState.OPEN:
                watched.arm(self._evaluate)

    def _unwatch(self, watched: WatchedBreaker) -> None:
        # Found by identity: an unnamed breaker is renamed when it decorates a function.
        name = next((name for name, w in self._breakers.items() if w is watched), None)
        if name is not None:
            del self._breakers[name]
            watched.unhook()
            watched.cancel_timer()
            self._evaluate()

    def __repr__(self) -> str:
        running = " running" if self._running else ""
        return (
            f"<HealthMonitor {self.name!r} {self._status.value} checks={len(self._checks)}"
            f" breakers={len(self._breakers)}{running}>"
        )
