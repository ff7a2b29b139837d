"""
Tests for call listeners: hooks that hear calls through ``listen_calls(policy)`` as a
start and an end, instead of as call events.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any
from unittest.mock import Mock, patch

import pytest

import resilient._engine.events
import resilient._engine.policy
from resilient import (
    CallListener,
    CallStarted,
    CallSucceeded,
    CircuitBreaker,
    CircuitOpenError,
    Event,
    Hook,
    Policy,
    Retry,
    RetryScheduled,
    Timeout,
    add_hook,
    pipeline,
)
from resilient._engine.hooks import global_hooks
from resilient.testing import FakeClock, instant_retries

pytestmark = pytest.mark.usefixtures("no_global_hooks")


class Recorder:
    """A listener hook that records what it hears, in order, across policies."""

    def __init__(self, label: str = "", *, with_start: bool = True) -> None:
        self.label = label
        self.with_start = with_start
        self.bound: list[Policy] = []
        self.heard: list[tuple[Any, ...]] = []
        self.events: list[Event] = []
        self.event_types = frozenset({RetryScheduled})

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def listen_calls(self, policy: Policy) -> EndOnly:
        self.bound.append(policy)
        return Listener(self, policy) if self.with_start else EndOnly(self, policy)


class EndOnly:
    """A listener without call_started: its token is always None."""

    def __init__(self, owner: Recorder, policy: Policy) -> None:
        self.owner = owner
        self.policy = policy

    def call_ended(self, token: Any, duration: float, error: BaseException | None) -> None:
        self.owner.heard.append(("end", self.owner.label, self.policy.kind, token, duration, error))


class Listener(EndOnly):
    """A listener with call_started, handing a fresh token to its call_ended."""

    def __init__(self, owner: Recorder, policy: Policy) -> None:
        super().__init__(owner, policy)
        self.count = 0

    def call_started(self) -> str:
        self.count += 1
        token = f"{self.owner.label}{self.policy.kind}#{self.count}"
        self.owner.heard.append(("start", self.owner.label, self.policy.kind, token))
        return token


async def ok() -> str:
    return "ok"


def test_listener_protocol_is_public_and_checkable() -> None:
    """CallListener is exported and runtime-checkable against call_ended."""
    assert isinstance(Listener(Recorder(), Retry(3)), CallListener)
    assert not isinstance(object(), CallListener)


async def test_listener_hears_start_and_end_with_token_and_duration() -> None:
    """A success: call_started, then call_ended with its token, the clock's duration, None."""
    clock = FakeClock()
    hook = Recorder()

    async def slow() -> str:
        await clock.sleep(2.5)
        return "ok"

    policy = Timeout(10.0, hooks=[hook], clock=clock)
    assert await policy.call(slow) == "ok"
    assert hook.heard == [
        ("start", "", "timeout", "timeout#1"),
        ("end", "", "timeout", "timeout#1", 2.5, None),
    ]
    assert hook.bound == [policy]


async def test_failure_and_cancellation_reach_call_ended() -> None:
    """A failure ends with its exception; a cancellation ends with CancelledError and stays one."""
    hook = Recorder(with_start=False)
    policy = Retry(1, hooks=[hook], clock=FakeClock())
    boom = ValueError("boom")

    async def fail() -> None:
        raise boom

    with pytest.raises(ValueError, match="boom"):
        await policy.call(fail)
    blocked = asyncio.create_task(policy.call(asyncio.sleep, 60))
    await asyncio.sleep(0)
    blocked.cancel()
    with pytest.raises(asyncio.CancelledError):
        await blocked
    (_, _, _, token, _, first), (_, _, _, _, _, second) = hook.heard
    assert token is None
    assert first is boom
    assert isinstance(second, asyncio.CancelledError)


async def test_no_call_events_are_built_for_listeners() -> None:
    """A listener hook makes the policy build and deliver no event on a plain success."""
    hook = Recorder()
    delivered: list[Event] = []
    original = resilient._engine.events.deliver

    def spy(hooks: tuple[Hook, ...], event: Event) -> None:
        delivered.append(event)
        original(hooks, event)

    remove = add_hook(hook)
    try:
        with patch.object(resilient._engine.policy, "deliver", spy):
            assert await pipeline(Timeout(5.0), Retry(3))(ok)() == "ok"
    finally:
        remove()
    assert delivered == []
    assert [entry[0] for entry in hook.heard] == ["start", "start", "end", "end"]


async def test_listener_hooks_still_get_the_decisions_they_want() -> None:
    """Decisions stay events: a listener hook gets RetryScheduled through __call__."""
    hook = Recorder()
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise ConnectionError("once")
        return "ok"

    with instant_retries():
        assert await Retry(3, hooks=[hook]).call(flaky) == "ok"
    assert [type(e) for e in hook.events] == [RetryScheduled]
    assert [entry[0] for entry in hook.heard] == ["start", "end"]


async def test_listen_calls_runs_once_per_policy_until_hooks_change() -> None:
    """The listener is bound once and reused; a change to the hooks binds afresh."""
    hook = Recorder()
    policy = Retry(3)
    remove = add_hook(hook)
    try:
        for _ in range(3):
            await policy.call(ok)
        assert hook.bound == [policy]
        other = Recorder("other")
        remove_other = add_hook(other)
        await policy.call(ok)
        remove_other()
        await policy.call(ok)
    finally:
        remove()
    assert hook.bound == [policy, policy, policy]
    assert other.bound == [policy]
    assert len([h for h in hook.heard if h[0] == "end"]) == 5


async def test_per_policy_hook_changes_rebind() -> None:
    """policy.add_hook / remove_hook take effect on the next call."""
    hook = Recorder()
    policy = Retry(3)
    await policy.call(ok)
    remove = policy.add_hook(hook)
    await policy.call(ok)
    remove()
    await policy.call(ok)
    assert len(hook.heard) == 2


async def test_listen_calls_may_decline_a_policy() -> None:
    """listen_calls returning None: the policy reports nothing to that hook."""

    class Picky(Recorder):
        def listen_calls(self, policy: Policy) -> EndOnly:
            return super().listen_calls(policy) if policy.kind == "retry" else None  # type: ignore[return-value]

    hook = Picky()
    remove = add_hook(hook)
    try:
        await pipeline(Timeout(5.0), Retry(3))(ok)()
    finally:
        remove()
    assert {entry[2] for entry in hook.heard} == {"retry"}


async def test_pipeline_binds_one_listener_per_layer() -> None:
    """Each layer reports to its own listener; inner layers start later and end sooner."""
    hook = Recorder()
    timeout, retry = Timeout(5.0), Retry(3)
    timeout.add_hook(hook)
    retry.add_hook(hook)
    await pipeline(timeout, retry)(ok)()
    assert hook.bound == [timeout, retry]
    assert [(e[0], e[2]) for e in hook.heard] == [
        ("start", "timeout"),
        ("start", "retry"),
        ("end", "retry"),
        ("end", "timeout"),
    ]


async def test_several_listeners_and_event_hooks_together() -> None:
    """Listeners start in hook order and end in reverse; event hooks still get call events."""
    first, second = Recorder("a"), Recorder("b", with_start=False)
    events: list[Event] = []
    policy = Retry(3, hooks=[first, events.append, second])
    assert await policy.call(ok) == "ok"
    order = [(entry[0], entry[1]) for entry in first.heard + second.heard]
    assert sorted(order) == [("end", "a"), ("end", "b"), ("start", "a")]
    assert [type(e) for e in events] == [CallStarted, CallSucceeded]
    assert first.heard[1][3] == "aretry#1"  # each listener gets its own token back
    assert second.heard[0][3] is None  # no call_started, no token


async def test_several_listeners_end_in_reverse_order() -> None:
    """With two listeners on one policy the second to start is the first to end."""
    log: list[str] = []

    class Nested:
        def __init__(self, label: str) -> None:
            self.label = label

        def __call__(self, event: Event) -> None:
            del event

        def listen_calls(self, policy: Policy) -> Nested:
            del policy
            return self

        def call_started(self) -> str:
            log.append(f"start {self.label}")
            return self.label

        def call_ended(self, token: str, duration: float, error: BaseException | None) -> None:
            del duration, error
            log.append(f"end {token}")

    await Retry(3, hooks=[Nested("a"), Nested("b")]).call(ok)
    assert log == ["start a", "start b", "end b", "end a"]


class Choosy(Recorder):
    """A listener hook whose call_started returns None for calls it doesn't want to end."""

    def __init__(self, label: str, wanted: set[int]) -> None:
        super().__init__(label)
        self.wanted = wanted
        self.started = 0

    def listen_calls(self, policy: Policy) -> EndOnly:
        outer = self

        class Pick(Listener):
            def call_started(self) -> str | None:  # type: ignore[override]
                outer.started += 1
                return f"call{outer.started}" if outer.started in outer.wanted else None

        return Pick(self, policy)


@pytest.mark.parametrize("alone", [True, False], ids=["one listener", "with another"])
async def test_call_started_returning_none_skips_the_end(alone: bool) -> None:
    """A call whose call_started says None gets no call_ended; the others do, and results stand."""
    choosy = Choosy("c", wanted={2})
    hooks: list[Hook] = [choosy] if alone else [choosy, Recorder("other")]
    policy = Retry(1, hooks=hooks)
    assert await policy.call(ok) == "ok"

    async def fail() -> None:
        raise ValueError("second")

    with pytest.raises(ValueError, match="second"):
        await policy.call(fail)
    assert await policy.call(ok) == "ok"
    assert choosy.started == 3
    assert [(e[3], type(e[5])) for e in choosy.heard] == [("call2", ValueError)]


async def test_a_call_ends_with_the_listener_it_started_with() -> None:
    """A listener removed mid-call still hears that call's end; one added mid-call does not."""
    early, late = Recorder("early"), Recorder("late")
    gate = asyncio.Event()

    async def wait() -> str:
        await gate.wait()
        return "ok"

    policy = Retry(3)
    remove_early = policy.add_hook(early)
    task = asyncio.create_task(policy.call(wait))
    await asyncio.sleep(0)
    remove_early()
    policy.add_hook(late)
    gate.set()
    assert await task == "ok"
    assert [entry[0] for entry in early.heard] == ["start", "end"]
    assert late.heard == []


async def test_broken_listeners_are_logged_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A raising call_started skips its call_ended; a raising call_ended is logged."""
    ends: list[object] = []

    class Broken:
        def __init__(self, fail_start: bool) -> None:
            self.fail_start = fail_start

        def __call__(self, event: Event) -> None:
            del event

        def listen_calls(self, policy: Policy) -> Broken:
            del policy
            return self

        def call_started(self) -> str:
            if self.fail_start:
                raise RuntimeError("start broke")
            return "token"

        def call_ended(self, token: object, duration: float, error: BaseException | None) -> None:
            del duration, error
            ends.append(token)
            raise RuntimeError("end broke")

    with caplog.at_level(logging.ERROR, logger="resilient"):
        assert await Retry(3, hooks=[Broken(fail_start=True)]).call(ok) == "ok"
        assert await Retry(3, hooks=[Broken(fail_start=False)]).call(ok) == "ok"
        breaker = CircuitBreaker(hooks=[Broken(fail_start=False)])
        breaker.trip()
        with pytest.raises(CircuitOpenError):
            await breaker.call(ok)
        # Two of them on one policy take the general path: same promises.
        assert await Retry(3, hooks=[Broken(True), Broken(False)]).call(ok) == "ok"
    assert ends == ["token", "token", "token"]
    messages = [r.getMessage() for r in caplog.records if r.name == "resilient"]
    assert sum("call_started" in m for m in messages) == 2
    assert sum("call_ended" in m for m in messages) == 3


async def test_broken_listen_calls_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """listen_calls raising, or returning something without call_ended: logged, call unharmed."""

    class Raises:
        def __call__(self, event: Event) -> None:
            del event

        def listen_calls(self, policy: Policy) -> None:
            raise RuntimeError(f"cannot listen to {policy.name}")

    class Useless(Raises):
        def listen_calls(self, policy: Policy) -> object:  # type: ignore[override]
            del policy
            return object()

    with caplog.at_level(logging.ERROR, logger="resilient"):
        assert await Retry(3, hooks=[Raises()]).call(ok) == "ok"
        assert await Retry(3, hooks=[Useless()]).call(ok) == "ok"
    messages = [r.getMessage() for r in caplog.records if r.name == "resilient"]
    assert any("failed to listen" in m for m in messages)
    assert any("has no call_ended" in m for m in messages)


async def test_a_mock_hook_is_not_taken_for_a_listener() -> None:
    """Hooks answering any attribute (Mock, proxies) still get call events."""
    hook = Mock(event_types=None)  # listen_calls would be made up on demand
    await Retry(3, hooks=[hook]).call(ok)
    assert [type(c.args[0]) for c in hook.call_args_list] == [CallStarted, CallSucceeded]


async def test_a_hook_change_while_a_plan_is_built_is_not_lost() -> None:
    """A global hook added while a policy builds its plan is heard from the next call."""
    late = Recorder("late")
    removers: list[Callable[[], None]] = []

    class AddsAHook(Recorder):
        def listen_calls(self, policy: Policy) -> EndOnly:
            if late not in global_hooks():  # as if another thread added it right now
                removers.append(add_hook(late))
            return super().listen_calls(policy)

    removers.append(add_hook(AddsAHook("first")))
    policy = Retry(3)
    try:
        await policy.call(ok)  # its plan was built across a change: not kept
        await policy.call(ok)
    finally:
        for remove in removers:
            remove()
    assert [entry[0] for entry in late.heard] == ["start", "end"]


async def test_event_hooks_see_the_listeners_context_at_both_ends() -> None:
    """Event hooks hear the start before listeners start and the end before they end."""
    current: ContextVar[str] = ContextVar("current", default="outside")
    seen: list[tuple[str, str]] = []

    class Attaches:
        def __call__(self, event: Event) -> None:
            del event

        def listen_calls(self, policy: Policy) -> Attaches:
            del policy
            return self

        def call_started(self) -> Token[str]:
            return current.set("inside")

        def call_ended(self, token: Token[str], duration: float, error: object) -> None:
            del duration, error
            current.reset(token)

    def event_hook(event: Event) -> None:
        seen.append((type(event).__name__, current.get()))

    await Retry(3, hooks=[Attaches(), event_hook]).call(ok)
    assert seen == [("CallStarted", "outside"), ("CallSucceeded", "inside")]
    assert current.get() == "outside"
