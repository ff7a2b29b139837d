"""
Tests for hooks that narrow the events they receive with `event_types`, and for the
fast constructors events are built with.
"""

from __future__ import annotations

import asyncio
import dataclasses
from unittest.mock import patch

import pytest

import resilient._engine.events
import resilient._engine.policy
from resilient import (
    CallFailed,
    CallStarted,
    CallSucceeded,
    Event,
    Retry,
    RetryScheduled,
    add_hook,
)
from resilient.testing import FakeClock, instant_retries


class Narrow:
    """A hook that only wants the types it is given."""

    def __init__(self, *types: type[Event]) -> None:
        self.event_types = frozenset(types)
        self.seen: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.seen.append(event)


async def ok() -> str:
    return "ok"


async def test_policy_hook_gets_only_its_types() -> None:
    """A per-policy hook with event_types receives only those event types."""
    hook = Narrow(CallSucceeded)
    policy = Retry(3, hooks=[hook], clock=FakeClock())
    await policy.call(ok)
    assert [type(e) for e in hook.seen] == [CallSucceeded]


async def test_unwanted_events_are_never_built() -> None:
    """No CallStarted is constructed when no hook wants it."""
    hook = Narrow(CallSucceeded)
    remove = add_hook(hook)
    built: list[str] = []
    original = resilient._engine.events.deliver

    def spy(hooks: tuple[object, ...], event: Event) -> None:
        built.append(type(event).__name__)
        original(hooks, event)  # type: ignore[arg-type]

    try:
        with patch.object(resilient._engine.policy, "deliver", spy):
            await Retry(3).call(ok)
    finally:
        remove()
    assert built == ["CallSucceeded"]
    assert [type(e) for e in hook.seen] == [CallSucceeded]


async def test_global_interest_follows_add_and_remove() -> None:
    """Removing the only hook that wanted a type stops that type being built."""
    wants_retries = Narrow(RetryScheduled)
    wants_all: list[Event] = []
    remove_narrow = add_hook(wants_retries)
    remove_all = add_hook(wants_all.append)
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("once")
        return "ok"

    with instant_retries():
        await Retry(3).call(flaky)
    remove_all()
    await Retry(3).call(ok)
    remove_narrow()
    assert [type(e) for e in wants_retries.seen] == [RetryScheduled]
    assert {type(e) for e in wants_all} >= {CallStarted, CallSucceeded, RetryScheduled}
    assert not any(isinstance(e, CallFailed) for e in wants_all)


def test_fast_constructor_keeps_events_frozen_and_equal() -> None:
    """Events built by the fast __init__ compare equal, are frozen and keyword-only."""
    event = CallSucceeded(kind="retry", name="x", time=1.0, duration=0.5)
    assert event == CallSucceeded(kind="retry", name="x", time=1.0, duration=0.5)
    assert dataclasses.asdict(event) == {"kind": "retry", "name": "x", "time": 1.0, "duration": 0.5}
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.name = "y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        CallSucceeded("retry", "x", 1.0, 0.5)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        CallSucceeded(kind="retry", name="x", time=1.0)  # type: ignore[call-arg]


async def test_a_call_ends_with_the_hooks_it_started_with() -> None:
    """A hook added mid-call gets no end event for it; one removed mid-call still does."""
    early: list[Event] = []
    late: list[Event] = []
    gate = asyncio.Event()

    async def wait() -> str:
        await gate.wait()
        return "ok"

    policy = Retry(3)
    remove_early = policy.add_hook(early.append)
    task = asyncio.create_task(policy.call(wait))
    await asyncio.sleep(0)
    remove_early()
    policy.add_hook(late.append)
    gate.set()
    assert await task == "ok"
    assert [type(e) for e in early] == [CallStarted, CallSucceeded]
    assert late == []
