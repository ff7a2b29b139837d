"""
Tests for `pipeline()`: ordering, flattening, hooks and what each position guards.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import weakref
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
import tenacity

from resilient import (
    CallStarted,
    CallSucceeded,
    Event,
    Fallback,
    Pipeline,
    Policy,
    Retry,
    Timeout,
    TimeoutExceeded,
    pipeline,
)
from resilient._engine.callables import is_coroutine_callable
from resilient._engine.policy import Args, AsyncFn, Kwargs
from resilient.testing import FakeClock, capture_events
from tests._aio import within

T = TypeVar("T")


class Recording(Policy):
    """
    A policy that logs when a call enters and leaves it.
    """

    kind = "recording"

    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__(name=name, clock=None, hooks=None)
        self.log = log

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        self.log.append(f"{self.name}>")
        try:
            return await fn(*args, **kwargs)
        finally:
            self.log.append(f"<{self.name}")


def recorders(log: list[str], *names: str) -> list[Recording]:
    return [Recording(name, log) for name in names]


# -- ordering ------------------------------------------------------------------------


async def test_first_policy_is_outermost() -> None:
    """`pipeline(a, b, c)` runs a call through a, then b, then c, and back out."""
    log: list[str] = []
    a, b, c = recorders(log, "a", "b", "c")

    async def fn() -> str:
        log.append("fn")
        return "ok"

    assert await pipeline(a, b, c).call(fn) == "ok"
    assert log == ["a>", "b>", "c>", "fn", "<c", "<b", "<a"]


async def test_events_show_ordering() -> None:
    """Call events from a real pipeline start outermost first and finish innermost first."""
    clock = FakeClock()
    policy = pipeline(
        Fallback("fb", clock=clock), Timeout(5.0, clock=clock), Retry(attempts=2, clock=clock)
    )

    async def fn() -> str:
        return "ok"

    with capture_events() as events:
        assert await policy.call(fn) == "ok"
    assert [(type(e).__name__, e.kind) for e in events] == [
        ("CallStarted", "fallback"),
        ("CallStarted", "timeout"),
        ("CallStarted", "retry"),
        ("CallSucceeded", "retry"),
        ("CallSucceeded", "timeout"),
        ("CallSucceeded", "fallback"),
    ]


async def test_pipeline_emits_no_events_of_its_own() -> None:
    """Only the member policies emit events; the pipeline itself is silent."""
    policy = pipeline(Timeout(1.0), Fallback(0))

    async def fn() -> int:
        return 1

    with capture_events() as events:
        await policy.call(fn)
    assert events
    assert all(e.kind != "pipeline" for e in events)
    assert {e.kind for e in events} == {"timeout", "fallback"}


async def test_fallback_outermost_sees_every_failure() -> None:
    """A Fallback outside a Retry answers only after the retries are spent."""
    clock = FakeClock()
    retry = Retry(attempts=3, wait=tenacity.wait_none(), clock=clock)
    calls: list[int] = []

    async def down() -> str:
        calls.append(1)
        raise ConnectionError("down")

    assert await pipeline(Fallback("cached"), retry).call(down) == "cached"
    assert len(calls) == 3
    # The other way round, the fallback answers the first failure and nothing is retried.
    calls.clear()
    assert await pipeline(retry, Fallback("cached")).call(down) == "cached"
    assert len(calls) == 1


# -- timeout position -----------------------------------------------------------------


def slow_then_ok(clock: FakeClock, calls: list[float]) -> Any:
    """
    Each attempt takes 0.6 s; the first two fail, the third succeeds.
    """

    async def fn() -> str:
        calls.append(clock.monotonic())
        await clock.sleep(0.6)
        if len(calls) < 3:
            raise ConnectionError(f"attempt {len(calls)}")
        return "ok"

    return fn


async def test_timeout_outside_retry_bounds_whole_call() -> None:
    """A Timeout outside Retry bounds all attempts together."""
    clock = FakeClock()
    calls: list[float] = []
    timeout = Timeout(1.0, clock=clock)
    retry = Retry(attempts=3, wait=tenacity.wait_none(), clock=clock)
    with pytest.raises(TimeoutExceeded):
        await pipeline(timeout, retry).call(slow_then_ok(clock, calls))
    assert calls == [0.0, 0.6]  # the second attempt was cut off at t=1.0
    assert timeout.statistics().timeouts == 1


async def test_timeout_inside_retry_bounds_each_attempt() -> None:
    """A Timeout inside Retry bounds each attempt, so 3 x 0.6 s may take 1.8 s in all."""
    clock = FakeClock()
    calls: list[float] = []
    timeout = Timeout(1.0, clock=clock)
    retry = Retry(attempts=3, wait=tenacity.wait_none(), clock=clock)
    assert await pipeline(retry, timeout).call(slow_then_ok(clock, calls)) == "ok"
    assert calls == pytest.approx([0.0, 0.6, 1.2])
    assert timeout.statistics().calls == 3
    assert timeout.statistics().timeouts == 0


async def test_per_attempt_timeouts_are_retried() -> None:
    """An attempt cut off by an inner Timeout is retried; the last TimeoutExceeded is raised."""
    clock = FakeClock()
    timeout = Timeout(1.0, clock=clock)
    retry = Retry(attempts=3, wait=tenacity.wait_none(), clock=clock)
    with pytest.raises(TimeoutExceeded):
        await pipeline(retry, timeout).call(clock.sleep, 5)
    assert timeout.statistics().timeouts == 3
    assert retry.statistics().retries == 2


# -- construction ---------------------------------------------------------------------


async def test_nested_pipelines_are_flattened() -> None:
    """A pipeline given to pipeline() is flattened into its members, order kept."""
    log: list[str] = []
    a, b, c, d = recorders(log, "a", "b", "c", "d")
    inner = pipeline(b, c)
    outer = pipeline(a, inner, d)
    assert outer.policies == (a, b, c, d)
    assert all(not isinstance(p, Pipeline) for p in outer.policies)

    async def fn() -> None:
        log.append("fn")

    await outer.call(fn)
    assert log == ["a>", "b>", "c>", "d>", "fn", "<d", "<c", "<b", "<a"]


def test_empty_pipeline_is_value_error() -> None:
    """`pipeline()` with no policies raises ValueError."""
    with pytest.raises(ValueError, match="at least one"):
        pipeline()


@pytest.mark.parametrize("bad", [None, "retry", Retry, print])
def test_non_policy_is_type_error(bad: object) -> None:
    """A non-policy argument raises TypeError naming its position."""
    with pytest.raises(TypeError, match="argument 1"):
        pipeline(Timeout(1.0), bad)  # type: ignore[arg-type]  # the mistake under test


async def test_single_policy_pipeline() -> None:
    """A one-policy pipeline behaves like the policy itself."""
    log: list[str] = []
    (only,) = recorders(log, "only")

    async def fn(x: int, *, y: int) -> int:
        return x + y

    assert await pipeline(only).call(fn, 1, y=2) == 3
    assert log == ["only>", "<only"]


async def test_pipeline_as_decorator() -> None:
    """A pipeline decorates an async function, keeping its metadata."""
    log: list[str] = []
    a, b = recorders(log, "a", "b")

    @pipeline(a, b)
    async def handler(x: int) -> int:
        """Handle x."""
        log.append(f"handler {x}")
        return x + 1

    assert handler.__name__ == "handler"
    assert handler.__doc__ == "Handle x."
    assert inspect.iscoroutinefunction(handler)
    assert await handler(1) == 2
    assert log == ["a>", "b>", "handler 1", "<b", "<a"]


def test_repr_lists_members() -> None:
    """The repr lists the member policies in order."""
    policy = pipeline(Timeout(1.0, name="t"), Fallback(0, name="f"))
    assert repr(policy) == (
        "pipeline(<Timeout 't' 1s calls=0 timeouts=0>, <Fallback 'f' value=0 calls=0 fallbacks=0>)"
    )


# -- hooks -----------------------------------------------------------------------------


async def test_add_hook_reaches_all_members_and_remover_removes() -> None:
    """`add_hook` on a pipeline hooks every member; the returned function unhooks them all."""
    clock = FakeClock()
    timeout, retry = Timeout(1.0, clock=clock), Retry(attempts=2, clock=clock)
    policy = pipeline(timeout, retry)
    seen: list[Event] = []

    async def fn() -> str:
        return "ok"

    remove = policy.add_hook(seen.append)
    await policy.call(fn)
    assert [(type(e), e.kind) for e in seen if isinstance(e, CallStarted)] == [
        (CallStarted, "timeout"),
        (CallStarted, "retry"),
    ]
    assert sum(isinstance(e, CallSucceeded) for e in seen) == 2

    remove()
    seen.clear()
    await policy.call(fn)
    await timeout.call(fn)
    assert seen == []


async def test_remove_hook_on_pipeline() -> None:
    """`remove_hook` on a pipeline removes the hook from every member."""
    timeout, fallback = Timeout(1.0), Fallback(0)
    policy = pipeline(timeout, fallback)
    seen: list[Event] = []

    async def fn() -> int:
        return 1

    policy.add_hook(seen.append)
    policy.remove_hook(seen.append)
    await policy.call(fn)
    await fallback.call(fn)
    assert seen == []


async def test_member_hooks_still_work_in_pipeline() -> None:
    """Hooks added to a member policy keep receiving its events inside a pipeline."""
    seen: list[Event] = []
    timeout = Timeout(1.0, hooks=[seen.append])

    async def fn() -> int:
        return 1

    await pipeline(Fallback(0), timeout).call(fn)
    assert [e.kind for e in seen] == ["timeout", "timeout"]


# -- `.call` keeps the chain of a plain function -------------------------------------------


async def test_call_of_a_kept_chain_still_hears_hooks_added_later() -> None:
    """The second `.call` of one function reuses its chain, which still asks each policy
    for its hooks: a hook added between the calls hears the second one."""
    policy = pipeline(Retry(2), Timeout(5.0))
    assert await policy.call(_answer, 1) == 1
    with capture_events() as events:
        assert await policy.call(_answer, 2) == 2
    assert [type(e) for e in events if isinstance(e, CallStarted)] == [CallStarted] * 2


async def test_call_keeps_no_closure_alive() -> None:
    """A closure (it may hold a request's data) is chained per call, never kept."""
    policy = pipeline(Retry(2), Timeout(5.0))
    payload = bytearray(b"big")

    async def send() -> int:
        return len(payload)

    assert await policy.call(send) == 3
    held = weakref.ref(send)
    del send
    gc.collect()
    assert held() is None


async def test_call_of_a_plain_function_fails_every_time() -> None:
    """A non-async function is refused on each call, its kept chain included."""
    policy = pipeline(Retry(2), Timeout(5.0))

    def not_async() -> int:
        return 1

    for _ in range(2):
        with pytest.raises(TypeError, match="async"):
            await policy.call(not_async)  # type: ignore[arg-type]  # the misuse tested


async def test_call_keeps_a_bounded_number_of_chains() -> None:
    """A pipeline handed ever new functions keeps at most a few dozen chains."""
    policy = pipeline(Retry(2))
    for number in range(100):
        namespace: dict[str, Any] = {}
        exec(f"async def fn_{number}(): return {number}", namespace)  # noqa: S102  # fresh functions
        assert await policy.call(namespace[f"fn_{number}"]) == number
    assert 0 < len(policy._chains) <= 32  # the cache's bound, seen from inside


async def _answer(value: int) -> int:
    return value


class _FutureGate(Policy):
    """A user's policy whose `_run` is a plain function returning a future."""

    kind = "future_gate"

    def __init__(self, *, fail: bool = False) -> None:
        super().__init__(name=None, clock=None, hooks=None)
        self.fail = fail

    def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> Awaitable[T]:
        if self.fail:
            raise LookupError("refused before any awaitable")
        return asyncio.ensure_future(fn(*args, **kwargs))


async def test_policy_call_of_a_plain_run_is_still_a_coroutine_raising_when_awaited() -> None:
    """A `_run` returning a future still gives `call` a coroutine (create_task takes it);
    one that raises at once raises when the call is awaited, as before, not when made."""

    async def value() -> int:
        return 3

    called = _FutureGate().call(value)
    assert asyncio.iscoroutine(called)
    assert await within(asyncio.ensure_future(called)) == 3
    refused = _FutureGate(fail=True).call(value)  # no raise here
    with pytest.raises(LookupError, match="refused before any awaitable"):
        await within(refused)


# -- runner ----------------------------------------------------------------------------


async def _echo(value: int) -> int:
    return value


async def _refuse(value: int) -> int:
    raise LookupError(value)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda log: pipeline(Timeout(5.0), Retry(attempts=2)), id="fused"),
        pytest.param(lambda log: pipeline(Timeout(5.0), *recorders(log, "r")), id="chained"),
        pytest.param(lambda log: Timeout(5.0), id="one policy"),
    ],
)
async def test_a_runner_runs_as_call_does(make: Any) -> None:
    """`runner(fn)(*args)` answers, fails and is observed as `.call(fn, *args)` is, and
    names no policy after `fn` (decorating would)."""
    log: list[str] = []
    policy = make(log)
    run = policy.runner(_echo)
    assert await run(7) == await policy.call(_echo, 7) == 7
    with pytest.raises(LookupError):
        await policy.runner(_refuse)(1)
    members = policy.policies if isinstance(policy, Pipeline) else (policy,)
    assert [p.name for p in members if not isinstance(p, Recording)] == [
        p.kind for p in members if not isinstance(p, Recording)
    ]
    with capture_events() as events:  # hooks added after the runner was made
        assert await run(3) == 3
    assert any(isinstance(e, CallSucceeded) for e in events)


async def test_a_fused_runner_is_the_fused_call_itself() -> None:
    """A fused pipeline's runner is its fused function: a call is one frame over `fn`,
    with no `.call` frame before it."""
    policy = pipeline(Timeout(5.0), Retry(attempts=2))
    coroutine = policy.runner(_echo)(1)
    try:
        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED
        assert coroutine.cr_code.co_name == "fused"  # type: ignore[attr-defined]
    finally:
        coroutine.close()


def test_a_runner_of_something_not_callable_is_a_type_error() -> None:
    """Misuse fails when the runner is made, naming what was given."""
    with pytest.raises(TypeError, match=r"Pipeline\.runner\(fn=\.\.\.\): .* got 42"):
        pipeline(Timeout(1.0), Retry()).runner(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Timeout\.runner\(fn=\.\.\.\): .* got 'x'"):
        Timeout(1.0).runner("x")  # type: ignore[arg-type]


@pytest.mark.parametrize("policy", [pipeline(Timeout(1.0), Retry()), Timeout(1.0)], ids=repr)
def test_a_runner_of_a_called_function_shows_the_right_call_and_closes_it(policy: Any) -> None:
    """``runner(fetch(x))``, the function called where it should be passed: the message
    shows ``runner(_echo)``, and the coroutine is closed (no "never awaited" warning)."""
    mistake = _echo(1)
    with pytest.raises(TypeError, match=r"pass the function, not its call: .*runner\(_echo\)"):
        policy.runner(mistake)
    assert inspect.getcoroutinestate(mistake) == inspect.CORO_CLOSED


class _SometimesNotAsync:
    """A plain callable returning a coroutine, but nothing awaitable on its first call."""

    def __init__(self) -> None:
        self.calls = 0

    def fetch(self, value: int) -> Any:
        self.calls += 1
        return "not awaitable" if self.calls == 1 else _echo(value)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: pipeline(Timeout(5.0), Retry(attempts=2)), id="fused"),
        pytest.param(
            lambda: pipeline(Fallback(value=-1, on=LookupError), Timeout(5.0)), id="chained"
        ),
    ],
)
async def test_a_runner_of_a_plain_callable_checks_each_call_anew(make: Any) -> None:
    """What a non-async `fn` returned is judged per call, as `.call` judges it: one call's
    misuse is not raised again, without calling `fn`, by every call after it (the same
    TypeError re-raised, its traceback growing by a call's frames each time)."""
    source = _SometimesNotAsync()
    run = make().runner(source.fetch)
    with pytest.raises(TypeError, match="can't be awaited"):
        await run(1)
    assert await run(2) == 2
    assert await run(3) == 3
    assert source.calls == 3


_plain_calls: list[int] = []


def _plain_sometimes(value: int) -> Any:  # a module-level def: `.call` keeps its chain
    _plain_calls.append(value)
    return "not awaitable" if len(_plain_calls) == 1 else _echo(value)


async def test_call_of_a_plain_function_judges_each_call_anew() -> None:
    """A kept chain holds no check of what a plain function returned: a misuse in one
    `.call` is not every later call's."""
    _plain_calls.clear()
    policy = pipeline(Timeout(5.0), Retry(attempts=2))
    with pytest.raises(TypeError, match="can't be awaited"):
        await policy.call(_plain_sometimes, 1)
    assert await policy.call(_plain_sometimes, 2) == 2
    assert _plain_calls == [1, 2]


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: pipeline(Timeout(5.0), Retry(attempts=2)), id="fused"),
        pytest.param(lambda: pipeline(Fallback(value=-1), Timeout(5.0)), id="chained"),
        pytest.param(lambda: Timeout(5.0), id="one policy"),
    ],
)
async def test_a_runner_is_a_coroutine_function(make: Any) -> None:
    """Whatever the pipeline, a runner is taken for the coroutine function it is: a
    policy decorates it, and a health check of it runs on the loop, not in a thread."""
    run = make().runner(_echo)
    assert is_coroutine_callable(run)
    assert await Timeout(5.0)(run)(4) == 4
