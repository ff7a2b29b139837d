"""
Where the pipeline's happy-path overhead goes: an ablation, not a sampler.

Sampling profilers attribute badly at this scale (a whole call is ~3 us), so this
measures variants side by side, interleaved, and reads the differences: the structural
cost of a layer (a policy that does nothing but pass the call on), each policy alone,
the full pipeline, and the pieces of a Timeout (task lookup, context variable, watchdog).

    python -m benchmarks.breakdown            # ~20 s
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import resilient as r
from resilient._engine.policy import Args, AsyncFn, Kwargs, Policy

T = TypeVar("T")

ROUNDS = 9
CALLS = 20_000


async def noop() -> int:
    return 1


class PassThrough(Policy):
    """A policy that only passes the call on: the cost of the contract itself."""

    kind = "pass_through"

    def __init__(self) -> None:
        super().__init__(name=None, clock=None, hooks=None)

    def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> Awaitable[T]:
        return fn(*args, **kwargs)


def contenders() -> dict[str, Callable[[], Awaitable[object]]]:
    def stack() -> list[Policy]:
        return [
            r.Timeout(2.0),
            r.Retry(3),
            r.CircuitBreaker(failure_threshold=5),
            r.Bulkhead(10),
        ]

    return {
        "bare await": noop,
        "1 pass-through layer": PassThrough()(noop),
        "4 pass-through layers": r.pipeline(*(PassThrough() for _ in range(4)))(noop),
        "Retry": r.Retry(3)(noop),
        "CircuitBreaker": r.CircuitBreaker(failure_threshold=5)(noop),
        "Bulkhead": r.Bulkhead(10)(noop),
        "Timeout": r.Timeout(2.0)(noop),
        "pipeline without Timeout": r.pipeline(*stack()[1:])(noop),
        "full pipeline": r.pipeline(*stack())(noop),
    }


def pieces() -> dict[str, Callable[[], object]]:
    var: contextvars.ContextVar[object] = contextvars.ContextVar("v", default=None)
    return {
        "asyncio.current_task()": asyncio.current_task,
        "ContextVar set + reset": lambda: var.reset(var.set(1)),
        "time.monotonic()": time.monotonic,
    }


async def measure() -> None:
    fns = contenders()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            gc.disable()
            start = time.perf_counter_ns()
            for _ in range(CALLS):
                await fn()
            samples[name].append((time.perf_counter_ns() - start) / CALLS)
            gc.enable()
            await asyncio.sleep(0)
    bare = statistics.median(samples["bare await"])
    print(f"{'variant':32s} {'overhead ns':>12s}")
    for name, values in samples.items():
        print(f"{name:32s} {statistics.median(values) - bare:12.0f}")
    print(f"\n{'piece (called in a loop)':32s} {'ns':>12s}")
    for name, piece in pieces().items():
        start = time.perf_counter_ns()
        for _ in range(CALLS * 5):
            piece()
        print(f"{name:32s} {(time.perf_counter_ns() - start) / (CALLS * 5):12.0f}")


if __name__ == "__main__":
    asyncio.run(measure())
