"""
Tests for `HealthMonitor`: checks and their results, timeouts, intervals, thresholds,
aggregation, liveness and readiness, transitions and remediation hooks, watched breakers,
keeping an instance registered, and the lifecycle (no task outlives `stop()`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import threading
from collections.abc import Awaitable
from typing import Any

import pytest

from resilient import (
    CheckReport,
    CheckResult,
    CircuitBreaker,
    CircuitState,
    HealthMonitor,
    HealthReport,
    HealthStatus,
    InMemoryRegistry,
    Instance,
    Policy,
    Retry,
    Timeout,
    pipeline,
)
from resilient.testing import FakeClock
from tests._aio import promptly, settle

HEALTHY, DEGRADED, UNHEALTHY = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY
INSTANCE = Instance("orders", "orders-1", "127.0.0.1", 8080)


class Switch:
    """
    A check whose answer the test sets: a value to return or an exception to raise.
    """

    def __init__(self, answer: object = True) -> None:
        self.answer = answer
        self.calls = 0

    async def __call__(self) -> Any:
        self.calls += 1
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


class Secret(Exception):
    """An error whose message holds something that must never be reported."""


def monitor_with(*checks: tuple[str, Any, dict[str, Any]], **kwargs: Any) -> HealthMonitor:
    monitor = HealthMonitor(**kwargs)
    for name, check, options in checks:
        monitor.add_check(name, check, **options)
    return monitor


class Transitions:
    """
    A transition hook that records (old, new, report status) triples.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[HealthStatus, HealthStatus]] = []
        self.reports: list[HealthReport] = []

    def __call__(self, old: HealthStatus, new: HealthStatus, report: HealthReport) -> None:
        self.seen.append((old, new))
        self.reports.append(report)


# -- validation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("interval", 0),
        ("interval", -1.0),
        ("interval", float("inf")),
        ("timeout", 0),
        ("timeout", float("nan")),
        ("failures_before_unhealthy", 0),
        ("successes_before_healthy", 0),
    ],
)
def test_bad_options_raise_value_error_naming_the_parameter(option: str, value: Any) -> None:
    """An out-of-range interval, timeout or threshold raises ValueError naming it."""
    monitor = HealthMonitor()
    with pytest.raises(ValueError, match=option):
        monitor.add_check("db", Switch(), **{option: value})
    assert monitor.report().checks == {}


def test_duplicate_check_name_raises_value_error() -> None:
    """A second check with a name already used raises ValueError."""
    monitor = HealthMonitor()
    monitor.add_check("db", Switch())
    with pytest.raises(ValueError, match="'db'"):
        monitor.add_check("db", Switch())


def test_empty_check_name_raises_value_error() -> None:
    """A check needs a non-empty name."""
    with pytest.raises(ValueError, match="name"):
        HealthMonitor().add_check("", Switch())


def test_non_callable_check_raises_type_error() -> None:
    """A check that can't be called is refused at once."""
    with pytest.raises(TypeError, match="check"):
        HealthMonitor().add_check("db", "select 1")  # type: ignore[arg-type]


async def test_a_called_check_is_refused_with_the_right_call_shown() -> None:
    """`add_check("db", ping())` (the check called, not passed) is a TypeError showing
    `add_check('db', ping)`; the coroutine is closed, so no "never awaited" warning."""

    async def ping() -> bool:
        return True

    coroutine = ping()
    right_call = r"add_check\('db', ping\), not add_check\('db', ping\(\)\)"
    with pytest.raises(TypeError, match=right_call):
        HealthMonitor().add_check("db", coroutine)  # type: ignore[arg-type]
    assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED


def test_other_arguments_are_checked() -> None:
    """Wrong types for the monitor's other entry points raise TypeError or ValueError."""
    monitor = HealthMonitor()
    with pytest.raises(TypeError):
        monitor.watch_breaker("inventory")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        monitor.on_transition(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Registry"):
        monitor.keep_registered(object(), INSTANCE)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Instance"):
        monitor.keep_registered(InMemoryRegistry(), "orders-1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        monitor.report("startup")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name"):
        HealthMonitor(name="")


async def test_checks_are_added_before_start() -> None:
    """Adding a check to a running monitor raises RuntimeError; the check set stays put."""
    async with monitor_with(("db", Switch(), {})) as monitor:
        with pytest.raises(RuntimeError, match="before start"):
            monitor.add_check("cache", Switch())
        assert list(monitor.report().checks) == ["db"]


# -- check results -----------------------------------------------------------------


ANSWERS = [
    (None, True, ""),
    (True, True, ""),
    (False, False, "check returned False"),
    (CheckResult(True, "3 replicas"), True, "3 replicas"),
    (CheckResult(False, "replica lag 12s"), False, "replica lag 12s"),
    ("ok", False, "check returned a str, not a bool or CheckResult"),
]
"""What a check returns, and the verdict and detail it gets."""


@pytest.mark.parametrize(("answer", "healthy", "detail"), ANSWERS)
async def test_check_results_are_interpreted(answer: object, healthy: bool, detail: str) -> None:
    """None/True pass, False fails, a CheckResult decides with its detail, others fail."""
    monitor = monitor_with(("db", Switch(answer), {}))
    report = (await monitor.check_now()).checks["db"]
    assert report.healthy is healthy
    assert report.detail == detail
    assert report.status is (HEALTHY if healthy else UNHEALTHY)


async def test_exception_detail_is_the_type_name_only(caplog: pytest.LogCaptureFixture) -> None:
    """A raising check fails; its detail (and warning logs) name the type, never the message."""
    switch = Switch()
    monitor = monitor_with(("db", switch, {}))
    await monitor.check_now()
    switch.answer = Secret("password=hunter2")
    with caplog.at_level(logging.WARNING, logger="resilient"):
        report = await monitor.check_now()
    assert report.checks["db"].detail == "Secret"
    assert report.status is UNHEALTHY
    assert "hunter2" not in repr(report)
    assert "hunter2" not in caplog.text
    assert "'db' is now failing (Secret)" in caplog.text


async def test_a_lambda_returning_a_coroutine_is_a_check() -> None:
    """Any callable returning an awaitable works, e.g. ``lambda: db.ping()``."""
    switch = Switch(CheckResult(False, "read-only"))

    def ping() -> Awaitable[Any]:  # not async itself: it returns the coroutine
        return switch()

    monitor = monitor_with(("db", ping, {}))
    report = await monitor.check_now()
    assert (switch.calls, report.checks["db"].detail) == (1, "read-only")


async def test_a_lambda_returning_a_future_of_the_loop_is_a_check_on_the_loop() -> None:
    """
    A callable returning a future it makes on the running loop, e.g.
    ``lambda: asyncio.get_running_loop().run_in_executor(None, db.ping)``, is a check
    when added with ``in_thread=False``: it is called on the loop and its future awaited.
    """
    monitor = HealthMonitor(name="svc")
    monitor.add_check(
        "db", lambda: asyncio.get_running_loop().run_in_executor(None, bool, 1), in_thread=False
    )
    report = await monitor.check_now()
    assert report.checks["db"].healthy, report.checks["db"].detail


@pytest.mark.parametrize(
    "policy", [Retry(2), pipeline(Timeout(1), Retry(2))], ids=["policy", "pipeline"]
)
async def test_a_policys_call_is_a_check_on_the_loop(policy: Policy) -> None:
    """``functools.partial(policy.call, probe)`` returns a coroutine (`.call` is no
    ``async def`` of its own, but says it returns one): it runs on the loop, in the
    monitor's task, not in a thread."""
    threads: list[threading.Thread] = []

    async def probe() -> bool:
        threads.append(threading.current_thread())
        return True

    monitor = monitor_with(("db", functools.partial(policy.call, probe), {}))
    report = await monitor.check_now()
    assert report.checks["db"].healthy, report.checks["db"].detail
    assert threads == [threading.current_thread()]
    check = monitor._checks["db"]
    assert not check.threaded  # no thread made per run to build the coroutine
    assert check.worker is None


async def test_a_check_needing_the_loop_in_a_thread_says_how_to_fix_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """
    The same callable added plainly runs in a thread, which has no loop: the report and
    one WARNING (not one per run) say to make it async def or pass in_thread=False.
    """
    monitor = monitor_with(
        ("db", lambda: asyncio.get_running_loop().run_in_executor(None, bool, 1), {})
    )
    with caplog.at_level(logging.WARNING, logger="resilient.health"):
        reports = [await monitor.check_now() for _ in range(3)]
    details = {report.checks["db"].detail for report in reports}
    assert details == {"needs the event loop: make it async def or pass in_thread=False"}
    assert not reports[-1].checks["db"].healthy
    warnings = [r for r in caplog.records if "in_thread=False" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.parametrize(
    ("answer", "healthy", "detail"), [*ANSWERS, (Secret("hunter2"), False, "Secret")]
)
async def test_a_sync_check_runs_in_a_thread_of_its_own(
    answer: object, healthy: bool, detail: str
) -> None:
    """
    A plain (not async) check is supported: it runs off the event loop's thread, and
    its answer or exception is judged as an async check's would be.
    """
    threads: list[threading.Thread] = []

    def check() -> object:
        threads.append(threading.current_thread())
        if isinstance(answer, BaseException):
            raise answer
        return answer

    monitor = monitor_with(("db", check, {}))
    report = await monitor.check_now()
    assert (report.checks["db"].healthy, report.checks["db"].detail) == (healthy, detail)
    assert threads[0] is not threading.current_thread()
    assert threads[0].daemon


async def test_a_blocking_sync_check_times_out_and_parks_one_thread_at_most() -> None:
    """
    A sync check that blocks fails after its timeout; while its thread is still blocked
    the next runs fail at once ("previous run still running") without starting another
    thread, and once it returns the check runs and passes again.
    """
    release = threading.Event()
    started: list[int] = []

    def blocking() -> bool:
        started.append(threading.get_ident())
        return release.wait(30)  # bounded, should the test fail before releasing it

    monitor = monitor_with(("db", blocking, {"timeout": 0.05}))
    first = await monitor.check_now()
    assert first.checks["db"].detail == "timed out after 0.05s"
    for _ in range(3):
        again = await monitor.check_now()
        assert again.checks["db"].detail == "previous run still running"
    assert len(started) == 1
    worker = monitor._checks["db"].worker
    assert worker is not None
    release.set()
    await asyncio.to_thread(worker.join, 10)
    report = await monitor.check_now()
    assert (report.checks["db"].healthy, len(started)) == (True, 2)


async def test_a_sync_check_run_in_progress_is_shared_not_failed() -> None:
    """
    A second run of a sync check while the first is still within its timeout (two
    `check_now()` at once, or one during the periodic run) waits for the same answer:
    "previous run still running" is for a run that timed out, not one in progress.
    """
    release = threading.Event()
    started: list[int] = []

    def slow() -> bool:
        started.append(threading.get_ident())
        return release.wait(30)  # bounded, should the test fail before releasing it

    monitor = monitor_with(("db", slow, {"timeout": 20}))
    first = asyncio.create_task(monitor.check_now())
    second = asyncio.create_task(monitor.check_now())
    await settle(10)  # both runs started; the thread is blocked until released
    release.set()
    reports = await asyncio.gather(first, second)
    assert [report.checks["db"].detail for report in reports] == ["", ""]
    assert all(report.checks["db"].healthy for report in reports)
    assert len(started) == 1


async def test_slow_check_times_out() -> None:
    """A run longer than `timeout` fails with "timed out after Xs", not before."""
    clock = FakeClock(auto_advance=False)

    async def slow() -> bool:
        await clock.sleep(10)
        return True

    monitor = monitor_with(("db", slow, {"timeout": 1.5}), clock=clock)
    task = asyncio.create_task(monitor.check_now())
    await settle(10)
    clock.advance(1.4)
    await settle(10)
    assert not task.done()
    clock.advance(0.1)
    await settle(10)
    report = (await promptly(task)).checks["db"]
    assert (report.healthy, report.detail) == (False, "timed out after 1.5s")
    assert report.duration == pytest.approx(1.5)


async def test_check_report_records_time_and_duration() -> None:
    """last_checked is the monitor clock's time at the end of a run; duration its length."""
    clock = FakeClock(start=100.0)

    async def takes_half_a_second() -> None:
        await clock.sleep(0.5)

    monitor = monitor_with(("db", takes_half_a_second, {"critical": False}), clock=clock)
    before = monitor.report().checks["db"]
    assert (before.last_checked, before.duration, before.detail) == (None, None, "not checked yet")
    report = (await monitor.check_now()).checks["db"]
    assert report == CheckReport(
        status=HEALTHY,
        detail="",
        critical=False,
        liveness=False,
        last_checked=100.5,
        duration=0.5,
        consecutive_failures=0,
        consecutive_successes=1,
    )


async def test_check_raising_cancelled_error_by_itself_fails() -> None:
    """A CancelledError the check raises on its own (nobody cancelled us) is a failure."""
    monitor = monitor_with(("db", Switch(asyncio.CancelledError()), {}))
    report = await monitor.check_now()
    assert report.checks["db"].detail == "CancelledError"


async def test_cancelling_check_now_is_not_swallowed() -> None:
    """Cancelling a caller of check_now cancels it: the check's runs don't absorb it."""
    started = asyncio.Event()

    async def hangs() -> None:
        started.set()
        await asyncio.Event().wait()

    monitor = monitor_with(("db", hangs, {"timeout": 60}))
    task = asyncio.create_task(monitor.check_now())
    await promptly(started.wait())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await promptly(task)
    assert task.cancelled()
    assert monitor.report().checks["db"].last_checked is None


# -- aggregation -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("critical_ok", "optional_ok", "expected"),
    [
        (True, True, HEALTHY),
        (True, False, DEGRADED),
        (False, True, UNHEALTHY),
        (False, False, UNHEALTHY),
    ],
)
async def test_aggregation(critical_ok: bool, optional_ok: bool, expected: HealthStatus) -> None:
    """A failing critical check is UNHEALTHY, a failing non-critical one DEGRADED."""
    monitor = monitor_with(
        ("db", Switch(critical_ok), {}),
        ("cache", Switch(optional_ok), {"critical": False}),
    )
    report = await monitor.check_now()
    assert report.status is expected
    assert monitor.status is expected
    assert report.checks["cache"].status is (HEALTHY if optional_ok else DEGRADED)


async def test_no_checks_is_healthy() -> None:
    """A monitor with nothing to check reports HEALTHY."""
    assert (await HealthMonitor().check_now()).status is HEALTHY


def test_unchecked_checks_count_as_failing() -> None:
    """Before their first run, checks fail: the service is not ready until checked."""
    monitor = monitor_with(("db", Switch(), {}), ("cache", Switch(), {"critical": False}))
    report = monitor.report()
    assert report.status is UNHEALTHY
    assert monitor.status is UNHEALTHY
    assert report.checks["cache"].status is DEGRADED


def test_report_is_frozen() -> None:
    """Reports are immutable snapshots, their mappings included."""
    report = monitor_with(("db", Switch(), {})).report()
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.status = HEALTHY  # type: ignore[misc]
    with pytest.raises(TypeError):
        report.checks["x"] = report.checks["db"]  # type: ignore[index]


# -- liveness and readiness -------------------------------------------------------


async def test_liveness_counts_liveness_checks_only() -> None:
    """Liveness ignores readiness-only checks and breakers; readiness counts everything."""
    monitor = monitor_with(
        ("loop", Switch(True), {"liveness": True}),
        ("db", Switch(False), {}),
    )
    breaker = CircuitBreaker("inventory")
    monitor.watch_breaker(breaker, critical=True)
    breaker.trip()
    await monitor.check_now()
    live = monitor.report("liveness")
    assert (live.status, list(live.checks), dict(live.breakers)) == (HEALTHY, ["loop"], {})
    ready = monitor.report("readiness")
    assert (ready.status, sorted(ready.checks)) == (UNHEALTHY, ["db", "loop"])
    assert dict(ready.breakers) == {"inventory": "open"}


async def test_failing_liveness_check_fails_both() -> None:
    """A failing liveness check makes liveness and readiness UNHEALTHY."""
    monitor = monitor_with(("loop", Switch(False), {"liveness": True}))
    await monitor.check_now()
    assert monitor.report("liveness").status is UNHEALTHY
    assert monitor.report("readiness").status is UNHEALTHY


async def test_liveness_without_liveness_checks_is_healthy() -> None:
    """With no liveness checks the process is alive, however its dependencies fare."""
    monitor = monitor_with(("db", Switch(False), {}))
    await monitor.check_now()
    assert monitor.report("liveness").status is HEALTHY
    assert monitor.report().status is UNHEALTHY


# -- thresholds --------------------------------------------------------------------


async def test_failures_before_unhealthy() -> None:
    """A passing check fails only after `failures_before_unhealthy` failures in a row."""
    switch = Switch(True)
    monitor = monitor_with(("db", switch, {"failures_before_unhealthy": 3}))
    assert (await monitor.check_now()).status is HEALTHY
    switch.answer = False
    for failures in (1, 2):
        report = (await monitor.check_now()).checks["db"]
        assert (report.healthy, report.consecutive_failures) == (True, failures)
        assert report.detail == "check returned False"
    switch.answer = True
    assert (await monitor.check_now()).checks["db"].consecutive_failures == 0
    switch.answer = False
    for _ in range(3):
        report = (await monitor.check_now()).checks["db"]
    assert (report.healthy, report.consecutive_failures) == (False, 3)
    assert monitor.status is UNHEALTHY


async def test_successes_before_healthy() -> None:
    """A failing (or unchecked) check passes only after `successes_before_healthy` passes."""
    switch = Switch(True)
    monitor = monitor_with(("db", switch, {"successes_before_healthy": 2}))
    first = (await monitor.check_now()).checks["db"]
    assert (first.healthy, first.consecutive_successes) == (False, 1)
    assert (await monitor.check_now()).status is HEALTHY
    switch.answer = False
    assert (await monitor.check_now()).status is UNHEALTHY
    switch.answer = True
    assert (await monitor.check_now()).status is UNHEALTHY
    assert (await monitor.check_now()).status is HEALTHY


# -- intervals and lifecycle -------------------------------------------------------


async def test_checks_run_on_their_own_intervals() -> None:
    """start() runs each check once, then every `interval` seconds of the monitor's clock."""
    clock = FakeClock(auto_advance=False)
    fast, slow = Switch(), Switch()
    monitor = monitor_with(
        ("fast", fast, {"interval": 1.0}), ("slow", slow, {"interval": 5.0}), clock=clock
    )
    async with monitor:
        assert (fast.calls, slow.calls) == (1, 1)
        for _ in range(4):
            clock.advance(1.0)
            await settle(10)
        assert (fast.calls, slow.calls) == (5, 1)
        clock.advance(0.5)
        await settle(10)
        assert (fast.calls, slow.calls) == (5, 1)
        clock.advance(0.5)
        await settle(10)
        assert (fast.calls, slow.calls) == (6, 2)
    clock.advance(10.0)
    await settle(10)
    assert (fast.calls, slow.calls) == (6, 2)


async def test_background_runs_update_status_and_fire_transitions() -> None:
    """A check failing between intervals flips the status at its next run, not before."""
    clock = FakeClock(auto_advance=False)
    switch = Switch()
    monitor = monitor_with(("db", switch, {"interval": 10.0}), clock=clock)
    transitions = Transitions()
    monitor.on_transition(transitions)
    async with monitor:
        assert transitions.seen == [(UNHEALTHY, HEALTHY)]
        switch.answer = Secret("boom")
        clock.advance(9.0)
        await settle(10)
        assert monitor.status is HEALTHY
        clock.advance(1.0)
        await settle(10)
        assert monitor.status is UNHEALTHY
        assert transitions.seen[-1] == (HEALTHY, UNHEALTHY)
        assert transitions.reports[-1].checks["db"].detail == "Secret"


async def test_start_is_idempotent_and_repr_shows_state() -> None:
    """A second start() adds no tasks; repr shows name, status and whether it runs."""
    switch = Switch()
    monitor = monitor_with(("db", switch, {}), name="orders", clock=FakeClock(auto_advance=False))
    await monitor.start()
    tasks = asyncio.all_tasks()
    await monitor.start()
    assert asyncio.all_tasks() == tasks
    assert switch.calls == 1
    assert repr(monitor) == "<HealthMonitor 'orders' healthy checks=1 breakers=0 running>"
    await monitor.stop()
    assert repr(monitor) == "<HealthMonitor 'orders' healthy checks=1 breakers=0>"


async def test_stop_leaves_no_tasks_behind() -> None:
    """After stop() no task of the monitor is left: loops and hooks in flight are cancelled."""
    before = asyncio.all_tasks()
    clock = FakeClock(auto_advance=False)
    hook_started, hook_cancelled = asyncio.Event(), asyncio.Event()

    async def remediate(old: HealthStatus, new: HealthStatus, report: HealthReport) -> None:
        hook_started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            hook_cancelled.set()
            raise

    monitor = monitor_with(("db", Switch(), {}), ("cache", Switch(), {}), clock=clock)
    monitor.on_transition(remediate)
    await monitor.start()
    await promptly(hook_started.wait())
    assert len(asyncio.all_tasks() - before) == 3  # two check loops and the hook
    await monitor.stop()
    assert hook_cancelled.is_set()
    assert asyncio.all_tasks() == before


async def test_stop_while_a_check_runs_cancels_it() -> None:
    """A check run in flight at stop() is cancelled, and stop() returns."""
    clock = FakeClock(auto_advance=False)
    runs: list[str] = []

    async def slow() -> None:
        runs.append("started")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            runs.append("cancelled")
            raise

    monitor = HealthMonitor(clock=clock)
    monitor.add_check("db", Switch(), interval=1.0)
    monitor.add_check("slow", slow, interval=1.0, timeout=60.0)
    start = asyncio.create_task(monitor.start())
    await settle(10)
    assert runs == ["started"]
    start.cancel()  # start() waits for the first round: cancelling it is allowed
    with pytest.raises(asyncio.CancelledError):
        await promptly(start)
    assert runs == ["started", "cancelled"]
    assert "running" not in repr(monitor)


# -- transitions and remediation ---------------------------------------------------


async def test_transition_hooks_get_old_new_and_report() -> None:
    """Sync hooks are called on every change of the readiness verdict, not on repeats."""
    switch = Switch()
    monitor = monitor_with(("db", switch, {}), ("cache", Switch(False), {"critical": False}))
    transitions = Transitions()
    monitor.on_transition(transitions)
    await monitor.check_now()
    await monitor.check_now()
    switch.answer = False
    await monitor.check_now()
    assert transitions.seen == [(UNHEALTHY, DEGRADED), (DEGRADED, UNHEALTHY)]
    assert [r.status for r in transitions.reports] == [DEGRADED, UNHEALTHY]


async def test_async_hooks_run_as_tasks() -> None:
    """A coroutine hook runs as a task after the transition."""
    seen: list[tuple[HealthStatus, HealthStatus]] = []

    async def remediate(old: HealthStatus, new: HealthStatus, report: HealthReport) -> None:
        await asyncio.sleep(0)
        seen.append((old, new))

    monitor = monitor_with(("db", Switch(), {}))
    monitor.on_transition(remediate)
    await monitor.check_now()
    assert seen == []
    await settle(10)
    assert seen == [(UNHEALTHY, HEALTHY)]


async def test_failing_hooks_are_logged_and_others_still_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sync or async hook that raises is logged; later hooks and the monitor carry on."""

    def broken(old: HealthStatus, new: HealthStatus, report: HealthReport) -> None:
        raise RuntimeError("sync hook")

    async def broken_async(old: HealthStatus, new: HealthStatus, report: HealthReport) -> None:
        raise RuntimeError("async hook")

    transitions = Transitions()
    monitor = monitor_with(("db", Switch(), {}))
    monitor.on_transition(broken)
    monitor.on_transition(broken_async)
    monitor.on_transition(transitions)
    with caplog.at_level(logging.ERROR, logger="resilient.health"):
        report = await monitor.check_now()
        await settle(10)
    assert report.status is HEALTHY
    assert transitions.seen == [(UNHEALTHY, HEALTHY)]
    failures = [r for r in caplog.records if r.exc_info]
    assert [str(r.exc_info[1]) for r in failures if r.exc_info] == ["sync hook", "async hook"]


async def test_removed_hook_is_not_called() -> None:
    """The function on_transition returns removes the hook."""
    transitions = Transitions()
    monitor = monitor_with(("db", Switch(), {}))
    remove = monitor.on_transition(transitions)
    remove()
    remove()  # a second removal is a no-op
    await monitor.check_now()
    assert transitions.seen == []


async def test_transitions_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Each transition logs a line: a warning when worse, info when better."""
    switch = Switch()
    monitor = monitor_with(("db", switch, {}), name="orders")
    with caplog.at_level(logging.INFO, logger="resilient.health"):
        await monitor.check_now()
        switch.answer = False
        await monitor.check_now()
    lines = [
        (r.levelno, r.getMessage()) for r in caplog.records if r.getMessage().startswith("health:")
    ]
    assert lines == [
        (
            logging.INFO,
            "health: orders is healthy (was unhealthy); failing checks: none; breakers: {}",
        ),
        (
            logging.WARNING,
            "health: orders is unhealthy (was healthy); failing checks: db; breakers: {}",
        ),
    ]


# -- breakers ----------------------------------------------------------------------


async def test_open_breaker_degrades_promptly_and_recovers() -> None:
    """An open or half-open breaker makes the service DEGRADED at once; closing heals it."""
    clock = FakeClock()
    breaker = CircuitBreaker("inventory", failure_threshold=1, reset_timeout=5.0, clock=clock)
    monitor = monitor_with(("db", Switch(), {}), clock=clock)
    transitions = Transitions()
    monitor.on_transition(transitions)
    monitor.watch_breaker(breaker)
    await monitor.check_now()
    breaker.trip()
    assert monitor.status is DEGRADED
    assert dict(monitor.report().breakers) == {"inventory": "open"}
    clock.advance(5.0)

    async def ok() -> str:
        assert breaker.state is CircuitState.HALF_OPEN
        assert monitor.status is DEGRADED  # half-open counts as degraded too
        return "ok"

    assert await breaker.call(ok) == "ok"
    assert monitor.status is HEALTHY
    assert transitions.seen == [(UNHEALTHY, HEALTHY), (HEALTHY, DEGRADED), (DEGRADED, HEALTHY)]


async def test_critical_open_breaker_is_unhealthy_until_due_a_probe() -> None:
    """A critical open breaker is UNHEALTHY; once due a probe it only degrades."""
    clock = FakeClock(auto_advance=False)
    breaker = CircuitBreaker("payments", reset_timeout=30.0, clock=clock)
    monitor = HealthMonitor(clock=clock)
    transitions = Transitions()
    monitor.on_transition(transitions)
    monitor.watch_breaker(breaker, critical=True)
    async with monitor:
        breaker.trip()
        assert monitor.status is UNHEALTHY
        clock.advance(29.0)
        await settle(10)
        assert monitor.status is UNHEALTHY
        clock.advance(1.0)
        await settle(10)
        assert monitor.status is DEGRADED
        breaker.reset()
        assert monitor.status is HEALTHY
    assert transitions.seen == [
        (UNHEALTHY, HEALTHY),
        (HEALTHY, UNHEALTHY),
        (UNHEALTHY, DEGRADED),
        (DEGRADED, HEALTHY),
    ]


async def test_breaker_read_at_report_time() -> None:
    """A breaker already open when watched counts from the first report."""
    breaker = CircuitBreaker("inventory")
    breaker.trip()
    monitor = HealthMonitor()
    monitor.watch_breaker(breaker)
    assert monitor.report().status is DEGRADED


async def test_unwatching_a_breaker() -> None:
    """The function watch_breaker returns stops watching: no more say, no more events."""
    breaker = CircuitBreaker("inventory")
    monitor = HealthMonitor()
    unwatch = monitor.watch_breaker(breaker)
    breaker.trip()
    assert monitor.status is DEGRADED
    unwatch()
    assert monitor.status is HEALTHY
    assert dict(monitor.report().breakers) == {}
    breaker.reset()
    breaker.trip()
    assert monitor.status is HEALTHY
    unwatch()  # twice is harmless
    monitor.watch_breaker(breaker)  # and the name is free again
    assert monitor.status is DEGRADED


async def test_unwatching_a_breaker_renamed_by_decorating() -> None:
    """
    An unnamed breaker takes a function's name when it decorates one; unwatching it
    afterwards still stops watching it.
    """
    breaker = CircuitBreaker()
    monitor = HealthMonitor()
    unwatch = monitor.watch_breaker(breaker)

    @breaker
    async def fetch() -> None:
        """A dependency call."""

    assert breaker.name.endswith("fetch")
    unwatch()
    breaker.trip()
    assert monitor.status is HEALTHY
    assert dict(monitor.report().breakers) == {}


def test_same_breaker_name_twice_raises() -> None:
    """Breakers are reported by name, so two with one name can't both be watched."""
    monitor = HealthMonitor()
    monitor.watch_breaker(CircuitBreaker("inventory"))
    with pytest.raises(ValueError, match="inventory"):
        monitor.watch_breaker(CircuitBreaker("inventory"))


def test_breaker_tripped_outside_an_event_loop(caplog: pytest.LogCaptureFixture) -> None:
    """Tripped from sync code, the status still changes; async hooks are skipped, logged."""
    calls: list[str] = []

    async def remediate(old: HealthStatus, new: HealthStatus, report: HealthReport) -> None:
        calls.append("async")

    breaker = CircuitBreaker("payments")
    monitor = HealthMonitor()
    monitor.watch_breaker(breaker, critical=True)
    monitor.on_transition(lambda old, new, report: calls.append(new.value))
    monitor.on_transition(remediate)
    with caplog.at_level(logging.WARNING, logger="resilient.health"):
        breaker.trip()
        assert monitor.status is UNHEALTHY
        breaker.reset()
    assert monitor.status is HEALTHY
    assert calls == ["unhealthy", "healthy"]
    assert "no running event loop; transition hook" in caplog.text


# -- keep_registered ---------------------------------------------------------------


async def registered(registry: InMemoryRegistry) -> list[str]:
    await settle(10)
    return [instance.id for instance in await registry.instances("orders")]


async def test_keep_registered_follows_readiness() -> None:
    """Registered while HEALTHY or DEGRADED, deregistered when UNHEALTHY, back on recovery."""
    clock = FakeClock(auto_advance=False)
    registry = InMemoryRegistry()
    db, cache = Switch(), Switch(False)
    monitor = monitor_with(
        ("db", db, {"interval": 1.0}), ("cache", cache, {"critical": False}), clock=clock
    )
    monitor.keep_registered(registry, INSTANCE)
    assert await registered(registry) == []  # not before start
    async with monitor:
        assert monitor.status is DEGRADED
        assert await registered(registry) == ["orders-1"]
        db.answer = False
        clock.advance(1.0)
        assert await registered(registry) == []
        db.answer = True
        clock.advance(1.0)
        assert await registered(registry) == ["orders-1"]
    assert await registered(registry) == []  # stop() takes it out of rotation


async def test_keep_registered_on_a_running_monitor() -> None:
    """An instance added while the monitor runs is registered at once."""
    registry = InMemoryRegistry()
    async with HealthMonitor(clock=FakeClock(auto_advance=False)) as monitor:
        monitor.keep_registered(registry, INSTANCE)
        assert await registered(registry) == ["orders-1"]


async def test_keep_registered_deregisters_a_stale_registration() -> None:
    """An instance registered before the monitor started is removed if it starts UNHEALTHY."""
    registry = InMemoryRegistry()
    await registry.register(INSTANCE)
    monitor = monitor_with(("db", Switch(False), {}), clock=FakeClock(auto_advance=False))
    monitor.keep_registered(registry, INSTANCE)
    async with monitor:
        assert await registered(registry) == []


class FlakyRegistry(InMemoryRegistry):
    """
    An in-memory registry whose next `fail` register/deregister calls raise.
    """

    def __init__(self, fail: int) -> None:
        super().__init__()
        self.fail = fail
        self.calls: list[str] = []

    def _maybe_fail(self, what: str) -> None:
        self.calls.append(what)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("etcd://user:secret@10.0.0.1 unreachable")

    async def register(self, instance: Instance) -> None:
        self._maybe_fail("register")
        await super().register(instance)

    async def deregister(self, instance: Instance) -> None:
        self._maybe_fail("deregister")
        await super().deregister(instance)


async def test_registry_errors_are_logged_and_retried(caplog: pytest.LogCaptureFixture) -> None:
    """A failed register is logged (type only) and retried after the next check run."""
    clock = FakeClock(auto_advance=False)
    registry = FlakyRegistry(fail=1)
    monitor = monitor_with(("db", Switch(), {"interval": 1.0}), clock=clock)
    monitor.keep_registered(registry, INSTANCE)
    with caplog.at_level(logging.WARNING, logger="resilient.health"):
        async with monitor:
            assert await registered(registry) == []
            clock.advance(1.0)
            assert await registered(registry) == ["orders-1"]
            assert registry.calls == ["register", "register"]
    assert "could not register 'orders-1' (ConnectionError)" in caplog.text
    assert "secret" not in caplog.text


async def test_failed_deregistration_on_stop_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """stop() survives a registry that fails to deregister, and says so."""
    registry = FlakyRegistry(fail=0)
    monitor = HealthMonitor(clock=FakeClock(auto_advance=False))
    monitor.keep_registered(registry, INSTANCE)
    await monitor.start()
    assert await registered(registry) == ["orders-1"]
    registry.fail = 1
    with caplog.at_level(logging.WARNING, logger="resilient.health"):
        await monitor.stop()
    assert "could not deregister 'orders-1'" in caplog.text


async def test_status_change_during_a_registry_call_is_followed() -> None:
    """A verdict that changes while a registry call is in flight is acted on afterwards."""
    gate = asyncio.Event()

    class SlowRegistry(InMemoryRegistry):
        async def register(self, instance: Instance) -> None:
            await gate.wait()
            await super().register(instance)

    breaker = CircuitBreaker("payments")
    registry = SlowRegistry()
    monitor = HealthMonitor(clock=FakeClock(auto_advance=False))
    monitor.watch_breaker(breaker, critical=True)
    monitor.keep_registered(registry, INSTANCE)
    async with monitor:
        await settle(10)
        breaker.trip()  # UNHEALTHY while register() still waits
        gate.set()
        assert await registered(registry) == []
        breaker.reset()
        assert await registered(registry) == ["orders-1"]


async def test_stopped_monitor_runs_no_remediation_on_breaker_changes() -> None:
    """After stop(), a watched breaker's transitions call no transition hooks."""
    breaker = CircuitBreaker(name="db", failure_threshold=1)
    monitor = HealthMonitor()
    monitor.watch_breaker(breaker, critical=True)
    seen: list[tuple[HealthStatus, HealthStatus]] = []
    monitor.on_transition(lambda old, new, report: seen.append((old, new)))
    await monitor.start()
    await monitor.stop()
    seen.clear()
    breaker.trip()
    breaker.reset()
    assert seen == []
