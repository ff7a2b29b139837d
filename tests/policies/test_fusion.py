"""
A pipeline of built-in policies runs a call in one frame (`_engine/fusion.py`): it must
behave exactly as the same policies chained layer by layer.

The chained twin of each policy is a trivial subclass: fusion is decided by a policy's
exact class, so a subclass (which may override `_run`) is always chained.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import tenacity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resilient import (
    Bulkhead,
    CircuitBreaker,
    Event,
    Hedge,
    Policy,
    Retry,
    TimedOut,
    Timeout,
    pipeline,
)
from resilient.testing import FakeClock
from tests._aio import settle, within
from tests.policies.test_breaker_store import DictStore


class ChainedTimeout(Timeout):
    """Timeout, never fused."""


class ChainedRetry(Retry):
    """Retry, never fused."""


class ChainedBreaker(CircuitBreaker):
    """CircuitBreaker, never fused."""


class ChainedBulkhead(Bulkhead):
    """Bulkhead, never fused."""


@dataclass
class Kinds:
    """The policy classes a shape is built from: built-in (fused) or subclasses (chained)."""

    timeout: type[Timeout]
    retry: type[Retry]
    breaker: type[CircuitBreaker]
    bulkhead: type[Bulkhead]


FUSED = Kinds(Timeout, Retry, CircuitBreaker, Bulkhead)
CHAINED = Kinds(ChainedTimeout, ChainedRetry, ChainedBreaker, ChainedBulkhead)
WAIT = tenacity.wait_fixed(0.1)  # deterministic sleeps, compared between the twins

Shape = Callable[[Kinds, FakeClock], list[Policy]]
SHAPES: dict[str, Shape] = {
    "timeout, retry, breaker, bulkhead": lambda k, c: [
        k.timeout(1.0, clock=c),
        k.retry(3, wait=WAIT, clock=c),
        k.breaker(failure_threshold=3, reset_timeout=10.0, clock=c),
        k.bulkhead(1, max_queue=1, clock=c),
    ],
    "retry, timeout per attempt": lambda k, c: [
        k.retry(2, wait=WAIT, clock=c),
        k.timeout(0.5, clock=c),
    ],
    "breaker, bulkhead, timeout": lambda k, c: [
        k.breaker(failure_threshold=2, reset_timeout=1.0, clock=c),
        k.bulkhead(1, max_queue=2, clock=c),
        k.timeout(1.0, clock=c),
    ],
    "timeout, bulkhead without a queue": lambda k, c: [
        k.timeout(2.0, clock=c),
        k.bulkhead(2, max_queue=0, clock=c),
    ],
    "queues outside and inside a retry": lambda k, c: [
        k.bulkhead(2, max_queue=2, clock=c),
        k.retry(2, wait=WAIT, clock=c),
        k.bulkhead(1, max_queue=1, clock=c),
        k.timeout(0.5, clock=c),
    ],
}

OUTCOMES = ("ok", "fail", "bug", "slow")


# How a policy's `Listening` hook hears it (see there); "none": no hook at all.
MODES = ("none", "end only", "start", "start None", "start raises", "end raises")


class Listening:
    """
    A hook hearing one policy's calls as a `CallListener`, as Prometheus and OTel do,
    writing (policy, "start"/"end", error type, duration) to `seen`, and the decisions it
    hears as events. Its mode: no call_started ("end only"), a start that returns a
    token, one that returns None for every other call ("start None": no end wanted),
    one that raises ("start raises"), or a call_ended that raises ("end raises").
    """

    def __init__(self, seen: list[tuple[object, ...]], policy: int, mode: str) -> None:
        self.seen, self.policy, self.mode, self.calls = seen, policy, mode, 0

    def __call__(self, event: Event) -> None:
        self.seen.append((self.policy, type(event).__name__))

    def listen_calls(self, _policy: Policy) -> object:
        return self if self.mode != "end only" else _EndOnly(self)

    def call_started(self) -> object:
        self.calls += 1
        self.seen.append((self.policy, "start"))
        if self.mode == "start raises":
            raise RuntimeError("a broken call_started")
        return None if self.mode == "start None" and self.calls % 2 else self.calls

    def call_ended(self, token: object, duration: float, error: BaseException | None) -> None:
        self.seen.append((self.policy, "end", token, type(error).__name__, duration))
        if self.mode == "end raises":
            raise RuntimeError("a broken call_ended")


class _EndOnly:
    """A listener without call_started: its end gets token None."""

    def __init__(self, owner: Listening) -> None:
        self.call_ended = owner.call_ended


def listen(policies: list[Policy], modes: list[str], seen: list[tuple[object, ...]]) -> None:
    """Give each policy the `Listening` hook of its mode (none for "none")."""
    for index, (policy, mode) in enumerate(zip(policies, modes, strict=False)):
        if mode != "none":
            policy.add_hook(Listening(seen, index, mode))


@dataclass
class Run:
    """What one twin did: each call's outcome, each policy's statistics, the sleeps,
    the events and what the listeners heard, in order, and the listener failures logged."""

    outcomes: list[tuple[object, ...]] = field(default_factory=list)
    statistics: list[object] = field(default_factory=list)
    sleeps: list[float] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    heard: list[tuple[object, ...]] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)


class _Logged(logging.Handler):
    def __init__(self, logged: list[str]) -> None:
        super().__init__()
        self.logged = logged

    def emit(self, record: logging.LogRecord) -> None:
        self.logged.append(record.getMessage().split(" failed in ")[-1])


async def _scenario(  # noqa: PLR0917  # the twin, its shape and hypothesis' draws
    kinds: Kinds,
    shape: Shape,
    rounds: list[list[list[str]]],
    hooked_from: int | None,
    listened_from: int | None = None,
    modes: list[str] | None = None,
) -> Run:
    run = Run()
    handler = _Logged(run.logged)
    logging.getLogger("resilient").addHandler(handler)
    try:
        return await _calls(kinds, shape, rounds, (hooked_from, listened_from, modes), run)
    finally:
        logging.getLogger("resilient").removeHandler(handler)


async def _calls(
    kinds: Kinds,
    shape: Shape,
    rounds: list[list[list[str]]],
    hooks: tuple[int | None, int | None, list[str] | None],
    run: Run,
) -> Run:
    hooked_from, listened_from, modes = hooks
    clock = FakeClock()
    policies = shape(kinds, clock)
    guarded = pipeline(*policies)
    assert (guarded._fusion is not None) is (kinds is FUSED)  # what is compared

    async def work(script: list[str]) -> str:
        what = script.pop(0) if script else "ok"
        await clock.sleep(0.01)
        if what == "fail":
            raise ConnectionError("down")
        if what == "bug":
            raise TypeError("a bug")
        if what == "slow":
            await clock.sleep(5.0)
        return what

    decorated = guarded(work)
    for number, calls in enumerate(rounds):
        if number == hooked_from:  # hooks added while in use: every call is observed
            policies[-1].add_hook(lambda event: run.events.append(type(event).__name__))
        if number == listened_from:  # listeners: the fused frame calls them
            listen(policies, modes or [], run.heard)
        # Odd rounds through .call, even ones through the decorator.
        starts = [
            guarded.call(work, list(script)) if number % 2 else decorated(list(script))
            for script in calls
        ]
        done = await asyncio.gather(*starts, return_exceptions=True)
        run.outcomes += [
            (type(result).__name__,) if isinstance(result, BaseException) else ("ok", result)
            for result in done
        ]
    run.statistics = [policy.statistics() for policy in policies]  # type: ignore[attr-defined]
    run.sleeps = list(clock.sleeps)
    return run


scripts = st.lists(st.sampled_from(OUTCOMES), max_size=3)
rounds_of_calls = st.lists(st.lists(scripts, min_size=1, max_size=3), min_size=1, max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from(sorted(SHAPES)),
    rounds=rounds_of_calls,
    hooked_from=st.none() | st.integers(0, 5),
)
def test_a_fused_pipeline_behaves_as_its_chained_twin(
    shape: str, rounds: list[list[list[str]]], hooked_from: int | None
) -> None:
    """Same outcomes, same statistics of every policy, same sleeps and events, for any
    mix of successes, retried failures, programming errors, timeouts, queueing and
    rejections, concurrent or not, through the decorator and `.call`."""
    fused = asyncio.run(_scenario(FUSED, SHAPES[shape], rounds, hooked_from))
    chained = asyncio.run(_scenario(CHAINED, SHAPES[shape], rounds, hooked_from))
    assert fused == chained


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    shape=st.sampled_from(sorted(SHAPES)),
    rounds=rounds_of_calls,
    listened_from=st.integers(0, 2),
    modes=st.lists(st.sampled_from(MODES), min_size=4, max_size=4),
    hooked_from=st.none() | st.integers(0, 5),
)
def test_a_fused_pipeline_heard_by_listeners_behaves_as_its_chained_twin(
    shape: str,
    rounds: list[list[list[str]]],
    listened_from: int,
    modes: list[str],
    hooked_from: int | None,
) -> None:
    """With one listener per policy (or none), as Prometheus and OpenTelemetry hear
    them, the fused frame calls them: every start and end in the chained order, with the
    same tokens, error types and durations; starts and ends that raise are logged alike;
    the outcomes, statistics and events are those of the chained layers. (A plain event
    hook on the last policy too sends the call through the chained layers.)"""
    draws = (rounds, hooked_from, listened_from, modes)
    fused = asyncio.run(_scenario(FUSED, SHAPES[shape], *draws))
    chained = asyncio.run(_scenario(CHAINED, SHAPES[shape], *draws))
    assert fused == chained
    if listened_from < len(rounds) and modes[0] != "none":
        assert fused.heard  # what is compared: the outermost policy hears every call


def test_only_built_in_policies_fuse() -> None:
    """Fused: built-in Timeout, Retry (one), CircuitBreaker, Bulkhead. Chained: a
    subclass, a policy that awaits around the call (Hedge), two retries, a single
    policy, a breaker sharing its state through a store."""
    assert pipeline(Timeout(1), Retry(2), CircuitBreaker(), Bulkhead(2))._fusion is not None
    assert pipeline(Timeout(1), Bulkhead(2))._fusion is not None
    assert pipeline(ChainedTimeout(1), Bulkhead(2))._fusion is None
    assert pipeline(Hedge(0.1), Timeout(1))._fusion is None
    assert pipeline(Retry(2), Timeout(1), Retry(2))._fusion is None
    assert pipeline(Timeout(1))._fusion is None
    shared = CircuitBreaker(storage=DictStore(FakeClock()))
    assert pipeline(Timeout(1), shared)._fusion is None


async def test_a_fused_call_in_flight_is_one_frame_over_the_function() -> None:
    """The point of fusion: a call suspended in the function has the fused frame and
    the function's on its task's stack, not one frame per policy."""
    release = asyncio.Event()

    async def waiting() -> str:
        await release.wait()
        return "done"

    fused = pipeline(Timeout(5), Retry(2), CircuitBreaker(), Bulkhead(4))(waiting)
    chained = pipeline(ChainedTimeout(5), Retry(2), CircuitBreaker(), Bulkhead(4))(waiting)
    calls = [asyncio.ensure_future(fused()), asyncio.ensure_future(chained())]
    await settle()
    names = [_awaiting(call.get_coro()) for call in calls]
    assert names[0] == ["fused", "waiting", "wait"]  # the last one is asyncio.Event's
    assert len(names[1]) == 7  # the wrapper, four layers, the function, Event.wait
    release.set()
    assert await within(asyncio.gather(*calls)) == ["done", "done"]


@pytest.mark.parametrize(
    ("make", "frames"),
    [
        (lambda: pipeline(Timeout(5), Retry(2), CircuitBreaker(), Bulkhead(4)), "fused"),
        (lambda: Retry(3), "_run"),
    ],
    ids=["fused pipeline", "one policy"],
)
async def test_call_hands_back_the_policys_own_coroutine(
    make: Callable[[], Any], frames: str
) -> None:
    """`.call` returns the call to await, not a coroutine awaiting it: nothing runs
    before it is awaited, and a call in flight is the same two frames as a decorated
    one (the fused call's, or the policy's `_run`, then the function's)."""
    release = asyncio.Event()
    ran: list[int] = []

    async def waiting(value: int) -> int:
        ran.append(value)
        await release.wait()
        return value

    coroutine = make().call(waiting, 7)
    assert asyncio.iscoroutine(coroutine)
    await settle()
    assert ran == []  # not started: a coroutine, run when awaited
    call = asyncio.ensure_future(coroutine)
    await settle()
    assert _awaiting(call.get_coro()) == [frames, "waiting", "wait"]
    release.set()
    assert await within(call) == 7


async def test_call_of_a_chained_pipeline_is_awaited_the_same_way() -> None:
    """A pipeline that fuses nothing (a subclass) hands back a coroutine too."""

    async def value(number: int) -> int:
        return number

    assert await within(pipeline(ChainedTimeout(5), Retry(2)).call(value, 8)) == 8


async def test_cancelling_a_fused_call_is_never_swallowed() -> None:
    """Cancelled from outside while inside every step: CancelledError comes out, every
    slot and scope is given back, nothing counts as a failure or a timeout."""
    started = asyncio.Event()
    timeout, breaker, bulkhead = Timeout(5), CircuitBreaker(), Bulkhead(1)

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    call = asyncio.ensure_future(pipeline(timeout, Retry(3), breaker, bulkhead)(forever)())
    await within(started.wait())
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(call)
    assert bulkhead.in_flight == 0
    assert timeout.statistics().timeouts == 0
    assert breaker.statistics().failures == 0
    assert timeout._watchdogs.watched() == 0  # the scope was closed


def test_events_of_a_hooked_fused_pipeline_are_those_of_the_layers() -> None:
    """With a hook, a fused pipeline takes the chained layers: every layer's call
    events arrive, in the chained order."""

    async def scenario(kinds: Kinds) -> list[str]:
        seen: list[str] = []
        clock = FakeClock()
        policies = SHAPES["timeout, retry, breaker, bulkhead"](kinds, clock)
        for policy in policies:
            policy.add_hook(_recorder(seen, policy.kind))

        async def ok() -> int:
            return 1

        assert await pipeline(*policies)(ok)() == 1
        return seen

    fused, chained = asyncio.run(scenario(FUSED)), asyncio.run(scenario(CHAINED))
    assert fused == chained
    assert "timeout:CallStarted" in fused


def _recorder(seen: list[str], kind: str) -> Callable[[Event], None]:
    def record(event: Event) -> None:
        seen.append(f"{kind}:{type(event).__name__}")

    return record


def _awaiting(coroutine: Any) -> list[str]:
    # The coroutines a suspended task is inside, outermost first.
    names = []
    while coroutine is not None and hasattr(coroutine, "cr_code"):
        names.append(coroutine.cr_code.co_name)
        coroutine = coroutine.cr_await
    return names


class _Decisions:
    """A hook that wants no call events (only timeouts): nobody hears calls."""

    event_types = frozenset({TimedOut})

    def __call__(self, event: Event) -> None:
        return None


@pytest.mark.parametrize(
    ("hooks", "frames"),
    [
        ("one listener each", ["fused", "heard", "waiting", "wait"]),
        ("one listener on some", ["fused", "heard", "waiting", "wait"]),
        ("decisions only", ["fused", "heard", "waiting", "wait"]),
        ("two listeners on one", ["fused", "_observe"]),
        ("a call-event hook on one", ["fused", "_observe"]),
    ],
)
async def test_which_observed_calls_stay_in_the_fused_frame(hooks: str, frames: list[str]) -> None:
    """One listener per policy at most: the fused frame calls them (one coroutine
    more, not two per policy). Decision hooks only: that frame too (one of them may add
    a listener mid-call). Several listeners or call events on any policy: the chained
    layers."""
    release = asyncio.Event()

    async def waiting() -> str:
        await release.wait()
        return "done"

    policies: list[Policy] = [Timeout(5), Retry(2), CircuitBreaker(), Bulkhead(4)]
    seen: list[tuple[object, ...]] = []
    listen(policies, ["start", "end only", "start", "start"], seen)
    if hooks == "one listener on some":
        policies[1].remove_hook(policies[1]._hooks[0])
    elif hooks == "decisions only":
        for policy in policies:
            policy.remove_hook(policy._hooks[0])
            policy.add_hook(_Decisions())
    elif hooks == "two listeners on one":
        policies[2].add_hook(Listening(seen, 2, "start"))
    elif hooks == "a call-event hook on one":
        policies[3].add_hook(lambda event: None)
    call = asyncio.ensure_future(pipeline(*policies)(waiting)())
    await settle()
    names = _awaiting(call.get_coro())
    assert names[: len(frames)] == frames
    release.set()
    assert await within(call) == "done"


Heard = list[tuple[object, ...]]


async def _hooks_changed_mid_call(kinds: Kinds) -> tuple[Heard, Heard, Heard, list[object]]:
    # Listeners on every policy; while a call is in the function, the first policy's is
    # removed and a second one added to the others; then a second call.
    clock = FakeClock()
    policies = SHAPES["timeout, retry, breaker, bulkhead"](kinds, clock)
    seen: list[tuple[object, ...]] = []
    late: list[tuple[object, ...]] = []
    listen(policies, ["start"] * 4, seen)
    release = asyncio.Event()

    async def waiting() -> str:
        await release.wait()
        return "done"

    guarded = pipeline(*policies)(waiting)
    call = asyncio.ensure_future(guarded())
    await settle()
    policies[0].remove_hook(policies[0]._hooks[0])
    for index, policy in enumerate(policies[1:], 1):
        policy.add_hook(Listening(late, index, "end only"))
    release.set()
    assert await within(call) == "done"
    heard_then = list(seen)
    assert late == []  # no half call: it heard no start
    assert await within(guarded()) == "done"
    return heard_then, seen, late, [policy.statistics() for policy in policies]  # type: ignore[attr-defined]


async def test_a_hook_added_or_removed_mid_call_hears_no_half_call() -> None:
    """A call's end goes to whoever heard its start: a listener removed mid-call still
    hears the end, one added mid-call hears nothing of that call (and the next call
    completely), as with the chained layers."""
    fused = await _hooks_changed_mid_call(FUSED)
    assert fused == await _hooks_changed_mid_call(CHAINED)
    heard_then, _, late, _ = fused
    assert [entry[:2] for entry in heard_then] == [(i, "start") for i in range(4)] + [
        (i, "end") for i in reversed(range(4))
    ]
    assert [entry[:2] for entry in late] == [(i, "end") for i in (3, 2, 1)]  # the next call


async def _cancelled_with_listeners(
    kinds: Kinds,
) -> tuple[list[tuple[object, ...]], list[object]]:
    clock = FakeClock()
    policies = SHAPES["timeout, retry, breaker, bulkhead"](kinds, clock)
    seen: list[tuple[object, ...]] = []
    listen(policies, ["start", "end only", "start None", "end raises"], seen)
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    call = asyncio.ensure_future(pipeline(*policies)(forever)())
    await within(started.wait())
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(call)
    return seen, [policy.statistics() for policy in policies]  # type: ignore[attr-defined]


async def test_cancelling_a_heard_fused_call_ends_every_started_listener() -> None:
    """Cancelled from outside while in the function: each policy whose listener heard
    the start hears a CancelledError end, inner first, and the cancellation comes out
    (a listener raising at the end does not swallow it)."""
    fused = await _cancelled_with_listeners(FUSED)
    assert fused == await _cancelled_with_listeners(CHAINED)
    ends = [entry for entry in fused[0] if entry[1] == "end"]
    # The breaker's start returned None for its first call: no end for it.
    assert [(entry[0], entry[3]) for entry in ends] == [
        (3, "CancelledError"),
        (1, "CancelledError"),
        (0, "CancelledError"),
    ]
