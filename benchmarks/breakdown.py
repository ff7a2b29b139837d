"""
Where the pipeline's happy-path overhead goes: an ablation, not a sampler.

    python -m benchmarks.breakdown --quick --rounds 9 --calls 20000   # ~20 s, one process
    python -m benchmarks.breakdown -o /tmp/d1.json                     # pyperf

Sampling profilers attribute badly at this scale (a whole call is ~3 us), so this times
variants side by side and reads the differences: the structural cost of a layer (a
policy that only passes the call on, written against the public `resilient.Policy`
contract), each policy alone, the pipeline without and with Timeout, and the pieces of a
Timeout (task lookup, context variable, clock).
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Awaitable, Callable
from typing import Any

import resilient as r
from benchmarks import _perf
from benchmarks._perf import Case, noop, synchronous
from benchmarks.report import Report


class PassThrough(r.Policy):
    """A policy that only passes the call on: the cost of the contract itself."""

    kind = "pass_through"

    def __init__(self) -> None:
        super().__init__(name=None, clock=None, hooks=None)

    def _run(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Awaitable[Any]:
        return fn(*args, **kwargs)


def _stack(timeout: bool) -> Any:
    inner = [r.Retry(3), r.CircuitBreaker(failure_threshold=5), r.Bulkhead(10)]
    return r.pipeline(*([r.Timeout(2.0)] if timeout else []), *inner)(noop)


def _context_var() -> Callable[[], object]:
    var: contextvars.ContextVar[object] = contextvars.ContextVar("v", default=None)
    return lambda: var.reset(var.set(1))


def cases() -> list[Case]:
    """The variants, then the pieces."""
    return [
        Case("bare await", lambda: noop, "await noop()"),
        Case("1 pass-through layer", lambda: PassThrough()(noop), "PassThrough()(noop)"),
        Case("4 pass-through layers", lambda: r.pipeline(*(PassThrough() for _ in range(4)))(noop),
             "pipeline(4 x PassThrough())"),
        Case("Retry", lambda: r.Retry(3)(noop), "Retry(3)"),
        Case("CircuitBreaker", lambda: r.CircuitBreaker(failure_threshold=5)(noop),
             "CircuitBreaker(failure_threshold=5)"),
        Case("Bulkhead", lambda: r.Bulkhead(10)(noop), "Bulkhead(10)"),
        Case("Timeout", lambda: r.Timeout(2.0)(noop), "Timeout(2.0)"),
        Case("pipeline without Timeout", lambda: _stack(False), "Retry + breaker + Bulkhead"),
        Case("full pipeline", lambda: _stack(True), "Timeout + Retry + breaker + Bulkhead"),
        Case("piece: asyncio.current_task()", lambda: asyncio.current_task, "called in a loop",
             timer=synchronous, check=False),
        Case("piece: ContextVar set + reset", _context_var, "var.reset(var.set(1))",
             timer=synchronous, check=False),
        Case("piece: time.monotonic()", lambda: time.monotonic, "called in a loop",
             timer=synchronous, check=False),
    ]  # fmt: skip


PAGE = Report("breakdown", "Where the pipeline's overhead goes", "bare await")


if __name__ == "__main__":
    raise SystemExit(_perf.main("benchmarks.breakdown", cases, PAGE))
