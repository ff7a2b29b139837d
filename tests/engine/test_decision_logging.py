"""
Decisions are logged on ``resilient.<kind>`` loggers at the documented levels, and
nothing is built while those levels are off.
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from collections.abc import Awaitable, Callable

import pytest

from resilient import (
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    Fallback,
    FallbackUsed,
    Hedge,
    Rejected,
    Retry,
    RetryScheduled,
    StateChanged,
    TimedOut,
    Timeout,
    TimeoutExceeded,
)
from resilient.testing import FakeClock, instant_retries
from tests._aio import result_of, settle

pytestmark = pytest.mark.usefixtures("no_global_hooks")  # logging alone, no hook listening


def failing_once() -> Callable[[], Awaitable[str]]:
    attempts: list[int] = []

    async def fn() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise ConnectionError("reset")
        return "ok"

    return fn


async def down() -> str:
    raise ConnectionError("down")


def records(caplog: pytest.LogCaptureFixture, logger: str) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == logger]


async def test_a_retry_is_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """A scheduled retry is an INFO record on ``resilient.retry`` naming the policy,
    the attempt and the error; the event rides along as ``resilient_event``."""
    caplog.set_level(logging.INFO, logger="resilient.retry")
    with instant_retries():
        await Retry(3, name="pricing").call(failing_once())
    [record] = [r for r in caplog.records if r.name == "resilient.retry"]
    assert record.levelno == logging.INFO
    assert record.getMessage().startswith(
        "retry 'pricing': attempt 1 failed (ConnectionError('reset')); retrying in "
    )
    event = record.resilient_event  # type: ignore[attr-defined]
    assert isinstance(event, RetryScheduled)
    assert (event.name, event.attempt) == ("pricing", 1)


async def test_a_retry_is_not_logged_at_warning(caplog: pytest.LogCaptureFixture) -> None:
    """At WARNING (Python's default) a retry logs nothing and builds no event."""
    caplog.set_level(logging.WARNING, logger="resilient.retry")
    built: list[object] = []
    original = RetryScheduled.__init__

    def spy(self: RetryScheduled, **fields: object) -> None:
        built.append(fields)
        original(self, **fields)  # type: ignore[arg-type]

    RetryScheduled.__init__ = spy  # type: ignore[method-assign]
    try:
        with instant_retries():
            assert await Retry(3).call(failing_once()) == "ok"
    finally:
        RetryScheduled.__init__ = original  # type: ignore[method-assign]
    assert records(caplog, "resilient.retry") == []
    assert built == []


async def open_reject_recover() -> None:
    """
    Take a breaker named "db" through open, a rejection, half-open and closed.
    """
    clock = FakeClock()
    breaker = CircuitBreaker("db", failure_threshold=1, reset_timeout=5, clock=clock)
    with pytest.raises(ConnectionError):
        await breaker.call(down)
    with pytest.raises(CircuitOpenError):
        await breaker.call(down)
    clock.advance(5)
    await breaker.call(asyncio.sleep, 0)


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        (
            logging.DEBUG,
            [
                (logging.WARNING, "circuit_breaker 'db': closed -> open"),
                (logging.DEBUG, "circuit_breaker 'db' rejected a call: circuit_open"),
                (logging.INFO, "circuit_breaker 'db': open -> half-open"),
                (logging.INFO, "circuit_breaker 'db': half-open -> closed"),
            ],
        ),
        (logging.WARNING, [(logging.WARNING, "circuit_breaker 'db': closed -> open")]),
    ],
    ids=["debug", "warning"],
)
async def test_breaker_opening_warns_closing_informs_rejecting_debugs(
    caplog: pytest.LogCaptureFixture, level: int, expected: list[tuple[int, str]]
) -> None:
    """A breaker opening is a WARNING, half-opening and closing INFO, a rejection DEBUG;
    with the logger at WARNING only the opening is logged."""
    caplog.set_level(level, logger="resilient.circuit_breaker")
    await open_reject_recover()
    assert records(caplog, "resilient.circuit_breaker") == expected


async def test_timeout_fallback_hedge_and_bulkhead(caplog: pytest.LogCaptureFixture) -> None:
    """A timeout and a fallback are INFO, a hedge and a bulkhead rejection DEBUG, each
    on its kind's logger."""
    caplog.set_level(logging.DEBUG, logger="resilient")
    clock = FakeClock()
    with pytest.raises(TimeoutExceeded):
        await Timeout(0.5, name="t", clock=clock).call(clock.sleep, 1)
    await Fallback("cached", name="f").call(down)
    manual = FakeClock(auto_advance=False)
    hedge = Hedge(1.0, name="h", clock=manual)
    task = asyncio.create_task(hedge.call(manual.sleep, 1.5))
    await settle()
    manual.advance(1.0)
    await settle()
    manual.advance(1.0)
    await result_of(task)
    bulkhead = Bulkhead(1, name="b")
    async with bulkhead:
        with pytest.raises(BulkheadFullError):
            await bulkhead.call(asyncio.sleep, 0)
    assert records(caplog, "resilient.timeout") == [
        (logging.INFO, "timeout 't': the call timed out after 0.500 s")
    ]
    assert records(caplog, "resilient.fallback") == [
        (logging.INFO, "fallback 'f' answered in place of a failed call (ConnectionError('down'))")
    ]
    assert records(caplog, "resilient.hedge") == [(logging.DEBUG, "hedge 'h': started attempt 2")]
    assert records(caplog, "resilient.bulkhead") == [
        (logging.DEBUG, "bulkhead 'b' rejected a call: bulkhead_full")
    ]
    kinds = {type(r.resilient_event) for r in caplog.records if hasattr(r, "resilient_event")}
    assert {TimedOut, FallbackUsed, Rejected} <= kinds


async def test_hooks_still_hear_decisions_logging_does_not_want(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A hook hears every decision whatever the log level: logging adds, never filters."""
    caplog.set_level(logging.ERROR, logger="resilient")
    heard: list[object] = []
    breaker = CircuitBreaker("db", failure_threshold=1, hooks=[heard.append])
    with pytest.raises(ConnectionError):
        await breaker.call(down)
    assert [type(e) for e in heard if not type(e).__name__.startswith("Call")] == [StateChanged]
    assert caplog.records == []


def test_levels_change_take_effect_at_once() -> None:
    """Turning a logger up after policies ran is seen by the next decision (logging's
    own level cache is cleared by setLevel)."""
    logger = logging.getLogger("resilient.retry")
    before = logger.level
    try:
        logger.setLevel(logging.WARNING)
        assert not Retry()._listening()  # the decision-path check itself
        logger.setLevel(logging.INFO)
        assert Retry()._listening()
    finally:
        logger.setLevel(before)


def test_an_unconfigured_application_sees_no_log_output() -> None:
    """With logging unconfigured, a breaker opening prints nothing (a NullHandler)."""
    program = """
import asyncio
from resilient import CircuitBreaker, CircuitOpenError

breaker = CircuitBreaker(name="quiet", failure_threshold=1, reset_timeout=60)

async def fail() -> None:
    raise ConnectionError("down")

async def main() -> None:
    for _ in range(2):
        try:
            await breaker.call(fail)
        except (ConnectionError, CircuitOpenError):
            pass
    assert breaker.state.value == "open"

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
