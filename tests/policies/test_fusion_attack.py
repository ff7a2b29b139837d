"""
Attacks on fused pipelines (`_engine/fusion.py`): each test compares a fused pipeline
with its chained twin (each policy trivially subclassed, as in test_fusion.py) where
they once differed.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

import pytest
import tenacity

from resilient import (
    CircuitState,
    Event,
    Policy,
    Retry,
    StateChanged,
    Timeout,
    TimeoutExceeded,
    pipeline,
)
from resilient.testing import FakeClock
from tests._aio import promptly, settle, within
from tests._gc import cycles
from tests.policies.test_fusion import CHAINED, FUSED, SHAPES, Kinds, Listening, listen

TWINS = pytest.mark.parametrize("kinds", [FUSED, CHAINED], ids=["fused", "chained"])

TimedOutShape = Callable[[Kinds, FakeClock], list[Policy]]
TIMED_OUT_SHAPES: dict[str, TimedOutShape] = {
    "timeout outside": lambda k, c: [
        k.timeout(1.0, clock=c),
        k.breaker(failure_threshold=50, clock=c),
        k.bulkhead(2, clock=c),
    ],
    "timeout per attempt": lambda k, c: [
        k.retry(3, wait=tenacity.wait_fixed(0.1), clock=c),
        k.breaker(failure_threshold=50, clock=c),
        k.timeout(1.0, clock=c),
    ],
}


@TWINS
@pytest.mark.parametrize("shape", sorted(TIMED_OUT_SHAPES))
async def test_a_timed_out_call_leaves_no_reference_cycle(kinds: Kinds, shape: str) -> None:
    """A `TimeoutExceeded` raised from the fused frame must not stay in one of its
    locals: its traceback holds that frame, and the cycle (frames, tracebacks, scope,
    the CancelledError) would wait for the gc, on every timed-out call, chained layers
    leave none. Per attempt, even a call the retry then saves left one."""
    clock = FakeClock()
    attempts = 0

    async def work() -> None:
        nonlocal attempts
        attempts += 1
        await clock.sleep(5.0)  # past every budget

    call = pipeline(*TIMED_OUT_SHAPES[shape](kinds, clock))(work)
    with pytest.raises(TimeoutExceeded):
        await call()  # warm: watchdogs, chained layers for the retries
    with cycles() as left:
        for _ in range(3):
            with pytest.raises(TimeoutExceeded):
                await call()
    assert attempts > 3  # every call ran and timed out
    assert "TimeoutExceeded" not in left
    assert "frame" not in left


@pytest.mark.parametrize("count", [12, 19, 30, 60])
@pytest.mark.parametrize("retried", [False, True], ids=["steps", "steps and a retry"])
async def test_a_long_pipeline_of_built_in_policies_still_builds(count: int, retried: bool) -> None:
    """Each fused step nests two blocks: past CPython's 20 statically nested blocks
    (or 100 levels of indentation) the generated code was a SyntaxError raised by
    `pipeline()` itself, where chained layers have no limit. A long pipeline is chained."""
    policies: list[Policy] = [Timeout(10.0) for _ in range(count)]
    if retried:
        policies.insert(count // 2, Retry(2))

    async def answer() -> int:
        return 42

    guarded = pipeline(*policies)
    assert await promptly(guarded(answer)()) == 42
    assert await promptly(guarded.call(answer)) == 42


def _shape_with_a_queue(kinds: Kinds, clock: FakeClock) -> list[Policy]:
    return [
        kinds.timeout(5.0, clock=clock),
        kinds.retry(3, wait=tenacity.wait_fixed(0.5), clock=clock),
        kinds.breaker(failure_threshold=5, clock=clock),
        kinds.bulkhead(1, max_queue=2, clock=clock),
    ]


async def _suspended_then(kinds: Kinds, where: str, how: str, listened: bool) -> list[object]:
    # A call suspended in the function, in the bulkhead's queue (the NOT_NOW path) or
    # in the retry's sleep, then closed or thrown into; what every policy says after
    # (and, listened, what each policy's listener heard).
    clock = FakeClock(auto_advance=False)
    policies = _shape_with_a_queue(kinds, clock)
    heard: list[tuple[object, ...]] = []
    if listened:
        listen(policies, ["start", "end only", "start None", "end raises"], heard)
    guarded = pipeline(*policies)
    release: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def work(mode: str) -> str:
        if mode == "hold":
            await release
        if mode == "fail":
            raise ConnectionError("down")
        return mode

    holder = None
    if where == "queued":
        holder = asyncio.ensure_future(guarded.call(work, "hold"))
        await settle()
    call = guarded.call(work, {"in the function": "hold", "queued": "ok", "asleep": "fail"}[where])
    call.send(None)
    seen: list[object] = []
    try:
        if how == "close":
            call.close()
        else:
            call.throw({"cancel": asyncio.CancelledError, "interrupt": KeyboardInterrupt}[how])
    except BaseException as error:  # what came out is compared
        seen.append(type(error).__name__)
    seen += [policy.statistics() for policy in policies]  # type: ignore[attr-defined]
    if holder is not None:
        release.set_result(None)
        seen.append(await within(holder))
        seen.append(policies[-1].statistics())  # type: ignore[attr-defined]
    seen.append(heard)
    seen.append(policies[0]._watchdogs.watched())  # type: ignore[attr-defined]
    return seen


@pytest.mark.parametrize("listened", [False, True], ids=["unheard", "listeners on"])
@pytest.mark.parametrize("how", ["close", "cancel", "interrupt"])
@pytest.mark.parametrize("where", ["in the function", "queued", "asleep"])
async def test_a_suspended_call_closed_or_thrown_into_ends_as_chained(
    where: str, how: str, listened: bool
) -> None:
    """GeneratorExit (`coro.close()`), CancelledError or KeyboardInterrupt thrown into
    a call suspended at each of its await points: the same exception, every slot and
    scope given back, the same counts as the chained layers; with a listener on each
    policy, the same starts and ends, each end hearing what was thrown."""
    fused = await _suspended_then(FUSED, where, how, listened)
    chained = await _suspended_then(CHAINED, where, how, listened)
    assert fused == chained
    assert fused[-1] == 0  # no deadline still watched
    thrown = {
        "close": "GeneratorExit",
        "cancel": "CancelledError",
        "interrupt": "KeyboardInterrupt",
    }
    heard: list[tuple[object, ...]] = fused[-2]  # type: ignore[assignment]  # see above
    outermost = [entry[3] for entry in heard if entry[:2] == (0, "end")]
    assert (thrown[how] in outermost) is listened  # the outer policy heard the call end so


class _Changing(Listening):
    """A `Listening` whose first `call_started` runs `change`: hooks changed mid-call,
    between the starts of two policies, with nothing awaited."""

    def __init__(self, seen: list[tuple[object, ...]], change: Callable[[], object]) -> None:
        super().__init__(seen, 0, "start")
        self.change: Callable[[], object] | None = change

    def call_started(self) -> object:
        token = super().call_started()
        change, self.change = self.change, None
        if change is not None:
            change()
        return token


class _Probing:
    """A decision hook (no call events) that, when the breaker half-opens, runs `change`."""

    event_types = frozenset({StateChanged})

    def __init__(self, change: Callable[[], object]) -> None:
        self.change: Callable[[], object] | None = change

    def __call__(self, event: Event) -> None:
        if isinstance(event, StateChanged) and event.new is CircuitState.HALF_OPEN:
            change, self.change = self.change, None
            if change is not None:
                change()


class _Adding(Listening):
    """A `Listening` whose first `listen_calls` runs `change` (while its plan is built)."""

    def __init__(self, seen: list[tuple[object, ...]], change: Callable[[], object]) -> None:
        super().__init__(seen, 2, "start")
        self.change: Callable[[], object] | None = change

    def listen_calls(self, policy: Policy) -> object:
        change, self.change = self.change, None
        if change is not None:
            change()
        return super().listen_calls(policy)


async def _hooks_changed_by_the_call(kinds: Kinds, how: str) -> list[tuple[object, ...]]:
    # Timeout, retry, breaker, bulkhead; two calls, the hooks changed during the first
    # by the call itself: what every listener heard, and the statistics.
    clock = FakeClock()
    policies = SHAPES["timeout, retry, breaker, bulkhead"](kinds, clock)
    seen: list[tuple[object, ...]] = []
    extra = Listening(seen, 33, "start")
    if how.startswith("an outer call_started"):
        for index in (1, 2, 3):
            policies[index].add_hook(Listening(seen, index, "start"))
        change: Callable[[], object] = functools.partial(policies[3].add_hook, extra)
        if how.endswith("removes an inner listener"):
            change = functools.partial(policies[2].remove_hook, policies[2]._hooks[0])
        policies[0].add_hook(_Changing(seen, change))
    elif how.startswith("a listen_calls"):  # the breaker's: a second one of its own
        listen(policies, ["start", "start"], seen)
        policies[2].add_hook(_Adding(seen, functools.partial(policies[2].add_hook, extra)))
    else:  # a half-opening breaker's decision hook adds a listener to the bulkhead
        if how.endswith(", heard"):
            policies[0].add_hook(Listening(seen, 0, "start"))
        policies[2].add_hook(_Probing(functools.partial(policies[3].add_hook, extra)))
        policies[2].trip()  # type: ignore[attr-defined]
        await clock.sleep(10.0)  # its reset timeout: the next call probes

    async def ok() -> str:
        return "ok"

    guarded = pipeline(*policies)(ok)
    assert [await promptly(guarded()) for _ in range(2)] == ["ok", "ok"]
    return [entry[:2] for entry in seen] + [policy.statistics() for policy in policies]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "how",
    [
        "an outer call_started removes an inner listener",
        "an outer call_started adds an inner listener",
        "a decision hook adds a listener, unheard",
        "a decision hook adds a listener, heard",
        "a listen_calls adds a listener to its policy",
    ],
)
async def test_hooks_changed_by_the_call_between_two_policies_are_heard_as_chained(
    how: str,
) -> None:
    """A chained layer reads its plan when its call starts, so hooks changed by an outer
    policy's listener or decision hook (nothing awaited) count from the next inner
    policy on: a removed listener hears nothing more, an added one hears the rest of the
    call. The fused frame read every listener up front, and called a removed one (start
    and end) or missed an added one. (One added while a plan is built counts from the
    next call, fused or not.)"""
    fused = await _hooks_changed_by_the_call(FUSED, how)
    assert fused == await _hooks_changed_by_the_call(CHAINED, how)
    first_call = fused[: fused.index((0, "end"))] if (0, "end") in fused else fused
    if "removes" in how:
        assert (2, "start") not in first_call
        assert (1, "start") in first_call
    elif how.startswith("a listen_calls"):  # the breaker's plan was built without it
        assert fused.count((33, "start")) == fused.count((33, "end")) == 1
        assert fused.count((2, "start")) == 2
    else:  # added during the first call's start: heard from the bulkhead on, both calls
        assert fused.count((33, "start")) == fused.count((33, "end")) == 2
