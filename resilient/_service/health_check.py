"""
One health check: how it runs and how its outcomes add up.

It runs on the loop or in a thread, under a timeout, and flips by thresholds.

`HealthMonitor` (in `health`) owns the checks; what a report holds is in
`health_report`, watched breakers and registrations in `health_watch`.

A check starts failing ("not checked yet") and flips only after
`successes_before_healthy` passes or `failures_before_unhealthy` failures in a row, as
Kubernetes probes and Consul checks do, so one slow answer doesn't flap the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Protocol

from .._engine.callables import is_coroutine_callable
from .._engine.errors import TimeoutExceeded
from .._policies.timeout import Timeout
from .discovery import RegistryStatus
from .health_report import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    CheckReport,
    CheckResult,
    HealthCheck,
)

# Internal names (CheckState, run_check, ...) stay out of __all__: they are shared with
# `health` only.
__all__ = ["discovery_check"]

_log = logging.getLogger("resilient.health")


class CheckState:
    """
    One registered check, its settings and its running tally (internal).
    """

    __slots__ = (
        "critical",
        "detail",
        "duration",
        "fail_after",
        "failures",
        "fn",
        "healthy",
        "interval",
        "last_checked",
        "liveness",
        "name",
        "pass_after",
        "returned",
        "running",
        "successes",
        "threaded",
        "timeout",
        "worker",
    )

    def __init__(
        self,
        name: str,
        fn: HealthCheck,
        *,
        interval: float,
        timeout: Timeout,
        critical: bool,
        liveness: bool,
        fail_after: int,
        pass_after: int,
        in_thread: bool | None = None,
    ) -> None:
        self.name, self.fn, self.interval, self.timeout = name, fn, interval, timeout
        self.critical, self.liveness = critical, liveness
        self.fail_after, self.pass_after = fail_after, pass_after
        self.healthy = False  # not ready until checked, as a Kubernetes readiness probe
        self.detail = "not checked yet"
        self.last_checked: float | None = None
        self.duration: float | None = None
        self.failures = self.successes = 0
        # A plain (not async) callable runs in a thread of its own, so a blocking check
        # can't stall the event loop; `worker` is its last run's thread, `running` the
        # answer of a threaded run in progress, which a concurrent run shares.
        self.threaded = not is_coroutine_callable(fn) if in_thread is None else bool(in_thread)
        self.worker: threading.Thread | None = None
        # Set once the last threaded run's callable returned: its thread may live on for a
        # moment after handing the answer over, which is no "previous run still running".
        self.returned = threading.Event()
        self.returned.set()
        self.running: asyncio.Future[object] | None = None

    def record(self, passed: bool, detail: str, finished: float, duration: float) -> bool:
        """
        Count one run; True when the check flipped between passing and failing.
        """
        before = self.healthy
        if passed:
            self.successes, self.failures = self.successes + 1, 0
            self.healthy = self.healthy or self.successes >= self.pass_after
        else:
            self.failures, self.successes = self.failures + 1, 0
            self.healthy = self.healthy and self.failures < self.fail_after
        self.detail, self.last_checked, self.duration = detail, finished, duration
        return before is not self.healthy

    def snapshot(self) -> CheckReport:
        """
        Return the check as of its last run.
        """
        status = HEALTHY if self.healthy else UNHEALTHY if self.critical else DEGRADED
        return CheckReport(
            status,
            self.detail,
            self.critical,
            self.liveness,
            self.last_checked,
            self.duration,
            self.failures,
            self.successes,
        )


async def run_check(check: CheckState) -> tuple[bool, str]:
    """
    Run `check` once under its timeout; return (passed, detail).

    Of an exception only the type's name is kept: messages and tracebacks can carry a
    DSN's password or a token, and reports are served over HTTP.
    """
    try:
        if check.threaded:
            result = await check.timeout.call(_in_thread, check)
        else:
            result = await check.timeout.call(_invoke, check.fn)
    except _StillRunning:
        return False, "previous run still running"
    except _NeedsLoop:
        if check.detail != _NEEDS_LOOP:  # once, not every interval
            _log.warning(
                "health check %r needs the running event loop, which its thread lacks:"
                " make it async def, or add it with in_thread=False",
                check.name,
            )
        return False, _NEEDS_LOOP
    except TimeoutExceeded as error:
        return False, f"timed out after {error.timeout:g}s"
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # we are being cancelled: never swallowed
        return False, "CancelledError"  # the check's own business, as any other error
    except Exception as error:  # noqa: BLE001  # any failure of the check is its verdict
        _log.debug("health check %r raised", check.name, exc_info=True)
        return False, type(error).__name__
    return _verdict(result)


async def _invoke(fn: HealthCheck) -> object:
    result = fn()
    return await result if inspect.isawaitable(result) else result


class _StillRunning(Exception):  # a verdict, not an error users see
    """The previous run of a sync check has not returned yet (it timed out)."""


_NEEDS_LOOP = "needs the event loop: make it async def or pass in_thread=False"


class _NeedsLoop(Exception):  # a verdict, with the fix, not an error users see
    """A check run in a thread asked for the running event loop, which a thread lacks."""


async def _in_thread(check: CheckState) -> object:
    """
    Run a sync check in a daemon thread; await what it returns if that is awaitable.

    A daemon thread, not an executor: a check that never returns must neither hold a
    pool's worker (the loop's default executor serves `getaddrinfo`) nor block the
    interpreter's exit. At most one thread per check: while it is still running the
    next run fails at once instead of starting another.
    """
    if check.running is not None:  # a run in progress (two check_now() at once): share it
        return await asyncio.shield(check.running)
    if not check.returned.is_set():
        raise _StillRunning  # a run that timed out is still blocked in its thread
    running = check.running = asyncio.get_running_loop().create_future()
    try:
        result = await _thread_run(check)
    except BaseException as error:
        # Waiters sharing this run fail as it did; a run cut short (its timeout) is, for
        # them, one still running. Marked retrieved: nobody may be waiting.
        running.set_exception(
            _StillRunning() if isinstance(error, asyncio.CancelledError) else error
        )
        running.exception()
        raise
    else:
        running.set_result(result)
        return result
    finally:
        check.running = None


async def _thread_run(check: CheckState) -> object:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[object] = loop.create_future()

    def settle(result: object, error: BaseException | None) -> None:
        if done.done():  # timed out meanwhile
            return
        if error is None:
            done.set_result(result)
        else:
            done.set_exception(error)

    def work() -> None:
        try:
            answer: tuple[object, BaseException | None] = (check.fn(), None)
        except RuntimeError as error:
            answer = (None, _NeedsLoop() if _no_loop(error) else error)
        except BaseException as error:  # noqa: BLE001  # handed to the loop, not swallowed
            answer = (None, error)
        finally:
            check.returned.set()
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, *answer)

    check.returned.clear()
    check.worker = threading.Thread(target=work, name=f"health-check:{check.name}", daemon=True)
    check.worker.start()
    result = await done
    return await result if inspect.isawaitable(result) else result


def _no_loop(error: RuntimeError) -> bool:
    # asyncio's own words when get_running_loop() (create_task, gather, ...) has none.
    return "no running event loop" in str(error) or "no current event loop" in str(error)


def _verdict(result: object) -> tuple[bool, str]:
    if result is None or result is True:
        return True, ""
    if result is False:
        return False, "check returned False"
    if isinstance(result, CheckResult):
        return bool(result.healthy), result.detail
    return False, f"check returned a {type(result).__name__}, not a bool or CheckResult"


class _HasStatus(Protocol):
    def status(self) -> RegistryStatus: ...


def discovery_check(source: _HasStatus) -> Callable[[], Awaitable[CheckResult]]:
    """
    A health check that fails while a registry (or a `ServiceView`) is out of touch.

    Add it as a non-critical check so the service reports DEGRADED, not UNHEALTHY, while
    it serves from the last known instances:
    ``monitor.add_check("discovery", discovery_check(view), critical=False)``.
    """

    async def check() -> CheckResult:
        status = source.status()
        if status.connected:
            return CheckResult(healthy=True)
        return CheckResult(
            healthy=False,
            detail=status.detail or "registry unreachable: serving the last known instances",
        )

    return check
