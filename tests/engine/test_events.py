"""
Tests for events and hooks: global and per-policy hooks, call events, broken hooks, and
the promise that nothing is built while nobody listens.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any, TypeVar

import pytest
import tenacity

import resilient._engine.policy
from resilient import (
    CallCancelled,
    CallFailed,
    CallStarted,
    CallSucceeded,
    Event,
    Fallback,
    Hedge,
    Policy,
    Retry,
    RetryBudget,
    RetryScheduled,
    Timeout,
    TimeoutExceeded,
    add_hook,
    remove_hook,
)
from resilient._engine.hooks import global_hooks
from resilient.testing import FakeClock
from tests._aio import result_of

T = TypeVar("T")


pytestmark = pytest.mark.usefixtures("no_global_hooks")


async def succeed() -> str:
    return "ok"


async def fail() -> int:
    raise ValueError("boom")


# -- global hooks ---------------------------------------------------------------------


async def test_global_hook_receives_every_policy_events() -> None:
    """A global hook sees events of every policy, including ones built before it was added."""
    timeout, fallback = Timeout(1.0, name="t"), Fallback(0, name="f")
    seen: list[Event] = []
    remove = add_hook(seen.append)
    try:
        await timeout.call(succeed)
        await fallback.call(fail)
    finally:
        remove()
    assert [(type(e).__name__, e.name) for e in seen] == [
        ("CallStarted", "t"),
        ("CallSucceeded", "t"),
        ("CallStarted", "f"),
        ("FallbackUsed", "f"),
        ("CallSucceeded", "f"),
    ]


async def test_global_remover_and_remove_hook() -> None:
    """The remover returned by add_hook and remove_hook both stop delivery; repeats are no-ops."""
    seen: list[Event] = []
    remove = add_hook(seen.append)
    remove()
    remove()  # a second call is harmless
    await Timeout(1.0).call(succeed)
    assert seen == []

    add_hook(seen.append)
    remove_hook(seen.append)  # an equal bound method removes it
    remove_hook(seen.append)  # not there any more: a no-op
    await Timeout(1.0).call(succeed)
    assert seen == []
    assert global_hooks() == []


def test_add_hook_rejects_non_callable() -> None:
    """add_hook with something not callable is a TypeError naming `hook`."""
    with pytest.raises(TypeError, match="hook"):
        add_hook("not a hook")  # type: ignore[arg-type]  # the mistake under test


# -- per-policy hooks --------------------------------------------------------------------


async def test_policy_hooks_see_only_their_policy() -> None:
    """Hooks given with `hooks=` receive that policy's events and no other's."""
    mine: list[Event] = []
    watched = Timeout(1.0, name="watched", hooks=[mine.append])
    other = Timeout(1.0, name="other")
    await watched.call(succeed)
    await other.call(succeed)
    assert [e.name for e in mine] == ["watched", "watched"]


async def test_policy_add_hook_and_remove() -> None:
    """`policy.add_hook` adds a hook; its remover and `remove_hook` take it away."""
    seen: list[Event] = []
    policy = Fallback(0)
    remove = policy.add_hook(seen.append)
    await policy.call(succeed)
    assert len(seen) == 2
    remove()
    await policy.call(succeed)
    assert len(seen) == 2

    policy.add_hook(seen.append)
    policy.remove_hook(seen.append)  # an equal bound method, not the same object
    policy.remove_hook(print)  # never added: a no-op
    await policy.call(succeed)
    assert len(seen) == 2


def test_policy_add_hook_rejects_non_callable() -> None:
    """`policy.add_hook` with something not callable is a TypeError."""
    with pytest.raises(TypeError, match="hooks"):
        Timeout(1.0).add_hook(42)  # type: ignore[arg-type]  # the mistake under test


async def test_policy_hooks_run_before_global_hooks() -> None:
    """Each event goes to the policy's own hooks first, then to the global ones."""
    order: list[str] = []

    def global_hook(event: Event) -> None:
        order.append(f"global {type(event).__name__}")

    def policy_hook(event: Event) -> None:
        order.append(f"policy {type(event).__name__}")

    remove = add_hook(global_hook)
    try:
        await Timeout(1.0, hooks=[policy_hook]).call(succeed)
    finally:
        remove()
    assert order == [
        "policy CallStarted",
        "global CallStarted",
        "policy CallSucceeded",
        "global CallSucceeded",
    ]


# -- broken hooks --------------------------------------------------------------------------


async def test_raising_hook_is_logged_and_call_unaffected(caplog: pytest.LogCaptureFixture) -> None:
    """A hook that raises is logged and skipped; the call and the other hooks carry on."""
    seen: list[Event] = []

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    clock = FakeClock()
    retry = Retry(attempts=2, wait=tenacity.wait_fixed(1), clock=clock, hooks=[broken, seen.append])
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("transient")
        return "ok"

    with caplog.at_level(logging.ERROR, logger="resilient"):
        assert await retry.call(flaky) == "ok"
    assert len(calls) == 2
    assert [type(e) for e in seen] == [CallStarted, RetryScheduled, CallSucceeded]
    records = [r for r in caplog.records if r.name == "resilient"]
    assert len(records) == 3
    assert all(r.levelno == logging.ERROR for r in records)
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in records)
    assert "hook" in records[0].getMessage()


async def test_raising_global_hook_does_not_break_failure_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broken global hook doesn't replace the call's own exception."""

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    remove = add_hook(broken)
    try:
        with caplog.at_level(logging.ERROR, logger="resilient"), pytest.raises(ValueError):
            await Timeout(1.0).call(fail)
    finally:
        remove()
    assert len([r for r in caplog.records if r.name == "resilient"]) == 2


# -- nothing built without listeners ----------------------------------------------------------


async def test_no_events_built_without_listeners(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no hook anywhere, no event object is built on any path, failing ones included."""
    built: list[str] = []

    def spy_emit(self: Policy, event_type: Any, /, **fields: Any) -> None:
        built.append(event_type.__name__)

    def spy_dispatch(hooks: Any, event: Event) -> None:
        built.append(f"dispatch {type(event).__name__}")

    async def spy_observe(self: Policy, fn: Any, args: Any, kwargs: Any) -> Any:
        built.append("observe")
        return await self._run(fn, args, kwargs)

    monkeypatch.setattr(Policy, "_emit", spy_emit)
    monkeypatch.setattr(resilient._engine.policy, "deliver", spy_dispatch)
    monkeypatch.setattr(Policy, "_observe", spy_observe)

    clock = FakeClock()
    budget = RetryBudget(ratio=0.1, min_per_second=0.1, ttl=10, clock=clock)
    retry = Retry(attempts=3, wait=tenacity.wait_fixed(1), budget=budget, clock=clock)
    with pytest.raises(ValueError, match="boom"):
        await retry.call(fail)  # a retry scheduled, then one refused by the budget
    assert retry.statistics().retries == 1
    assert retry.statistics().budget_rejections == 1
    with pytest.raises(TimeoutExceeded):
        await Timeout(1.0, clock=clock).call(clock.sleep, 5)
    assert await Fallback(0).call(fail) == 0
    hedged = Hedge(5.0, clock=FakeClock(auto_advance=False))
    async with asyncio.timeout(1.0):  # fail rather than hang if no hedge is sent at once
        assert await hedged.call(_fails_once()) == "second"
    assert hedged.statistics().hedges == 1
    assert built == []

    # The spies are wired: the same calls with a listener do build events.
    listened = Fallback(0, hooks=[lambda e: None])
    assert await listened.call(fail) == 0
    assert built == ["observe", "FallbackUsed"]


def _fails_once() -> Any:
    calls: list[int] = []

    async def fn() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first")
        return "second"

    return fn


# -- call events -----------------------------------------------------------------------------


async def test_call_started_and_succeeded_with_duration() -> None:
    """CallStarted and CallSucceeded carry the clock's times and the call's duration."""
    clock = FakeClock(start=10.0)
    seen: list[Event] = []
    policy = Timeout(5.0, name="db", clock=clock, hooks=[seen.append])

    async def work() -> str:
        await clock.sleep(2.5)
        return "ok"

    assert await policy.call(work) == "ok"
    assert seen == [
        CallStarted(kind="timeout", name="db", time=10.0),
        CallSucceeded(kind="timeout", name="db", time=12.5, duration=2.5),
    ]


async def test_call_failed_carries_error_and_duration() -> None:
    """CallFailed carries the exception that left the policy and the time spent."""
    clock = FakeClock()
    seen: list[Event] = []
    error = KeyError("gone")

    async def work() -> None:
        await clock.sleep(0.5)
        raise error

    with pytest.raises(KeyError):
        await Fallback(0, on=ValueError, clock=clock, hooks=[seen.append]).call(work)
    assert seen == [
        CallStarted(kind="fallback", name="fallback", time=0.0),
        CallFailed(kind="fallback", name="fallback", time=0.5, duration=0.5, error=error),
    ]


async def test_call_failed_for_policy_own_error() -> None:
    """A policy's own error (a timeout) is reported as CallFailed with that error."""
    clock = FakeClock(auto_advance=False)
    seen: list[Event] = []
    policy = Timeout(1.0, clock=clock, hooks=[seen.append])
    task = asyncio.create_task(policy.call(clock.sleep, 5))
    await asyncio.sleep(0)
    clock.advance(1.0)
    with pytest.raises(TimeoutExceeded) as info:
        await result_of(task)
    failed = [e for e in seen if isinstance(e, CallFailed)]
    assert len(failed) == 1
    assert failed[0].error is info.value
    assert failed[0].duration == 1.0


async def test_call_cancelled_is_not_a_failure() -> None:
    """A cancelled call emits CallCancelled with its duration, never CallFailed."""
    clock = FakeClock(auto_advance=False)
    seen: list[Event] = []
    policy = Fallback(0, clock=clock, hooks=[seen.append])
    task = asyncio.create_task(policy.call(clock.sleep, 5))
    await asyncio.sleep(0)
    clock.advance(1.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await result_of(task)
    assert seen == [
        CallStarted(kind="fallback", name="fallback", time=0.0),
        CallCancelled(kind="fallback", name="fallback", time=1.5, duration=1.5),
    ]


def test_events_are_frozen() -> None:
    """Events are immutable values."""
    event = CallSucceeded(kind="retry", name="r", time=1.0, duration=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.duration = 2.0  # type: ignore[misc]  # the mistake under test
    assert event == CallSucceeded(kind="retry", name="r", time=1.0, duration=0.5)


async def test_a_hook_given_twice_hears_each_event_once() -> None:
    """
    The same hook on the policy twice, or on the policy and globally, hears each event
    once (heard twice, a tracer would count every retry twice); removing it stops it.
    """
    seen: list[Event] = []
    retry = Retry(2, on=ValueError, wait=tenacity.wait_none(), hooks=[seen.append])
    retry.add_hook(seen.append)  # a new bound method, equal to the first
    remove = add_hook(seen.append)
    try:
        with pytest.raises(ValueError, match="boom"):
            await retry.call(fail)
    finally:
        remove()
    assert [type(e) for e in seen] == [CallStarted, RetryScheduled, CallFailed]
    retry.remove_hook(seen.append)
    seen.clear()
    with pytest.raises(ValueError, match="boom"):
        await retry.call(fail)
    assert seen == []
