"""
Attacks on fused pipelines (`_engine/fusion.py`): each test compares a fused pipeline
with its chained twin (each policy trivially subclassed, as in test_fusion.py) where
they once differed.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable

import pytest
import tenacity

from resilient import Policy, Retry, Timeout, TimeoutExceeded, pipeline
from resilient.testing import FakeClock
from tests._aio import promptly
from tests.policies.test_fusion import CHAINED, FUSED, Kinds

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
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(3):
            with pytest.raises(TimeoutExceeded):
                await call()
        gc.collect()
        cycles = [type(found).__name__ for found in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert attempts > 3  # every call ran and timed out
    assert "TimeoutExceeded" not in cycles
    assert "frame" not in cycles


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
