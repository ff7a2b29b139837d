"""
The paths beyond the happy path (issue #11): failures, open breakers, 10,000 calls in
flight, and the memory a policy holds, each next to the fastest alternative.

    python -m benchmarks.paths -o /tmp/p1.json        # pyperf; then benchmarks.report
    python -m benchmarks.paths --quick --md /tmp/p.md

* **failure**: every call fails; 3 attempts, no wait between them. resilient's `Retry`
  against hyx's and tenacity's retry, over one bare failing call.
* **open**: the breaker is open; each call is rejected. resilient's `CircuitBreaker`
  (tripped) against hyx's and aiobreaker's (opened by 5 failures), over ``await noop()``.
* **concurrent**: one timer loop gathers 10,000 calls of a coroutine that yields to the
  loop once, with gc on: the pipeline, and `Timeout` alone, against ``asyncio.timeout``
  (+ ``Semaphore``) doing the same; figures are per call.
* **memory** (in the report, not timed): bytes a decorated function holds, from
  tracemalloc, against hyx's and tenacity's equivalents.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import tracemalloc
from collections.abc import Callable
from typing import Any

import tenacity

from benchmarks import _perf
from benchmarks._perf import Case, noop
from benchmarks.overhead import _composed, _hyx_retry, _hyx_stack, _stack, _tenacity
from benchmarks.report import Figure, Report
from resilient import Bulkhead, CircuitBreaker, CircuitOpenError, Retry, Timeout, pipeline

IN_FLIGHT = 10_000
HYX = ("hyx",)


class Boom(Exception):
    """What the failing calls raise."""


def failing(wrap: Callable[[Any], Any], attempts: int, *caught: type[BaseException]) -> Any:
    """`wrap` around an always-failing function; the case returns 42 when the expected
    error came out after `attempts` calls."""
    calls = [0]

    async def fail() -> None:
        calls[0] += 1
        raise Boom

    wrapped = wrap(fail)
    errors: tuple[type[BaseException], ...] = (Boom, *caught)

    async def fn() -> int:
        before = calls[0]
        try:
            await wrapped()
        except errors:
            return 42 if calls[0] - before == attempts else -calls[0]
        return -1

    return fn


async def opened(wrap: Callable[[Any], Any], *rejected: type[BaseException]) -> Any:
    """`wrap` around a failing function, failed until open; then every call is rejected."""
    fn = failing(wrap, 0, *rejected)
    for _ in range(5):
        await fn()
    return fn


def _hyx(module: str, name: str) -> Any:
    return getattr(__import__(f"hyx.{module}", fromlist=[name]), name)


def _aiobreaker(fn: Any) -> Any:
    import aiobreaker  # type: ignore[import-untyped, unused-ignore]

    return aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=dt.timedelta(seconds=30))(fn)


def _tripped(fn: Any) -> Any:
    breaker = CircuitBreaker(failure_threshold=5, reset_timeout=30.0)
    breaker.trip()
    return breaker(fn)


async def concurrently(fn: Any, loops: int) -> float:
    """Seconds for `loops` gathers of `IN_FLIGHT` calls, gc on."""
    started = _perf.now()
    for _ in range(loops):
        await asyncio.gather(*[fn() for _ in range(IN_FLIGHT)])
    return _perf.now() - started


async def _yields() -> int:
    await asyncio.sleep(0)
    return 42


def _floor_timeout() -> Any:
    async def fn() -> int:
        async with asyncio.timeout(2.0):
            return await _yields()

    return fn


def _floor_stack() -> Any:
    sem = asyncio.Semaphore(IN_FLIGHT)

    async def fn() -> int:
        async with asyncio.timeout(2.0), sem:
            return await _yields()

    return fn


def _in_flight(name: str, build: Callable[[], Any], api: str) -> Case:
    return Case(f"concurrent/{name}", build, api, timer=concurrently, inner=IN_FLIGHT)


def _tenacity_failing(fn: Any) -> Any:
    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3), wait=tenacity.wait_none(), reraise=True
    )(fn)


def cases() -> list[Case]:
    """Every case of the three timed paths."""
    return [
        Case("failure/bare failing call", lambda: failing(lambda f: f, 1), "await fail()"),
        Case("failure/resilient Retry", lambda: failing(Retry(3, wait=tenacity.wait_none()), 3),
             "@Retry(3, wait=tenacity.wait_none())"),
        Case("failure/hyx retry", lambda: failing(
                _hyx("retry", "retry")(on=Exception, attempts=2, backoff=0), 3,
                _hyx("retry.exceptions", "MaxAttemptsExceeded")),
             "@retry(on=Exception, attempts=2, backoff=0); raises MaxAttemptsExceeded", HYX),
        Case("failure/tenacity retry", lambda: failing(_tenacity_failing, 3),
             "@retry(stop_after_attempt(3), wait_none(), reraise=True)"),
        Case("open/bare", lambda: noop, "await noop()"),
        Case("open/resilient CircuitBreaker", lambda: opened(_tripped, CircuitOpenError),
             "CircuitBreaker(failure_threshold=5, reset_timeout=30.0), .trip()"),
        Case("open/hyx consecutive_breaker", lambda: opened(
                _hyx("circuitbreaker", "consecutive_breaker")(failure_threshold=5,
                                                              recovery_time_secs=30),
                _hyx("circuitbreaker.exceptions", "BreakerFailing")),
             "@consecutive_breaker(failure_threshold=5, recovery_time_secs=30), 5 failures", HYX),
        Case("open/aiobreaker", lambda: opened(_aiobreaker, _aiobreaker_error()),
             "@CircuitBreaker(fail_max=5, timeout_duration=30 s), 5 failures", ("aiobreaker",)),
        _in_flight("bare", lambda: _yields, "await asyncio.sleep(0)"),
        _in_flight("resilient pipeline", lambda: pipeline(Timeout(2.0), Retry(3),
                   CircuitBreaker(failure_threshold=5), Bulkhead(IN_FLIGHT))(_yields),
                   f"pipeline(Timeout(2.0), Retry(3), CircuitBreaker(5), Bulkhead({IN_FLIGHT}))"),
        _in_flight("asyncio.timeout + Semaphore (floor)", _floor_stack,
                   f"async with asyncio.timeout(2.0), Semaphore({IN_FLIGHT})"),
        _in_flight("resilient Timeout", lambda: Timeout(2.0)(_yields), "@Timeout(2.0)"),
        _in_flight("asyncio.timeout (floor)", _floor_timeout, "async with asyncio.timeout(2.0)"),
    ]  # fmt: skip


def _aiobreaker_error() -> type[BaseException]:
    import aiobreaker  # type: ignore[import-untyped, unused-ignore]

    error: type[BaseException] = aiobreaker.CircuitBreakerError
    return error


def _bytes_each(make: Callable[[], object], count: int = 200) -> float:
    """Bytes one `make()` result holds, allocated and kept (tracemalloc)."""
    make()  # imports and first-use caches are not the object's
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [make() for _ in range(count)]
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    del kept
    return held / count


async def _memory() -> list[tuple[str, float]]:
    import resilient

    rows = [
        ("`Retry(3)`", lambda: Retry(3)),
        ("`Retry(3)(fn)`", lambda: Retry(3)(noop)),
        ("tenacity `@retry(stop, wait, reraise)` on fn", _tenacity),
        ("hyx `@retry(attempts=2, backoff=expo)` on fn", _hyx_retry),
        ("4-policy `pipeline(...)(fn)`", lambda: _stack(resilient, "m")(noop)),
        ("hyx timeout+retry+breaker+bulkhead on fn", _hyx_stack),
        ("asyncio.timeout+hyx retry+hyx breaker+Semaphore on fn", lambda: _composed(
            _hyx_retry, _hyx("circuitbreaker", "consecutive_breaker")())),
    ]  # fmt: skip
    out = []
    for label, make in rows:
        try:
            out.append((label, _bytes_each(make)))
        except ImportError:
            continue  # a peer that is not installed: its row is left out
    return out


def memory_lines() -> list[str]:
    """The memory table of the report."""
    sizes = dict(asyncio.run(_memory()))
    hyx = {"`Retry(3)(fn)`": "hyx `@retry(attempts=2, backoff=expo)` on fn",
           "4-policy `pipeline(...)(fn)`": "hyx timeout+retry+breaker+bulkhead on fn"}  # fmt: skip
    targets = {k: f"{sizes[k] / sizes[v]:.2f}x hyx's (target <= 1x)" for k, v in hyx.items()
               if v in sizes}  # fmt: skip
    return [
        "Memory held per object (tracemalloc, mean of 200 kept objects after one thrown"
        " away; the same in every run up to allocator rounding, so no spread):",
        "",
        "| object | bytes each | against hyx |",
        "|---|--:|--:|",
        *(f"| {k} | {size:,.0f} | {targets.get(k, '')} |" for k, size in sizes.items()),
    ]


FAIL, OPEN, CONC = "failure/bare failing call", "open/bare", "concurrent/bare"
# fmt: off
PAGE = Report(
    "paths",
    "Failures, open breakers, 10,000 in flight, memory",
    None,
    [
        Figure("failure path (3 attempts): Retry / hyx", ("failure/resilient Retry", FAIL),
               [("failure/hyx retry", FAIL)], 1.0),
        Figure("failure path: Retry / tenacity", ("failure/resilient Retry", FAIL),
               [("failure/tenacity retry", FAIL)]),
        Figure("open breaker rejection: resilient / hyx",
               ("open/resilient CircuitBreaker", OPEN),
               [("open/hyx consecutive_breaker", OPEN)], 1.0),
        Figure("open breaker rejection: resilient / aiobreaker",
               ("open/resilient CircuitBreaker", OPEN), [("open/aiobreaker", OPEN)]),
        Figure("10k in flight, gc on: pipeline / asyncio.timeout + Semaphore",
               ("concurrent/resilient pipeline", CONC),
               [("concurrent/asyncio.timeout + Semaphore (floor)", CONC)], 1.0),
        Figure("10k in flight, gc on: Timeout / asyncio.timeout",
               ("concurrent/resilient Timeout", CONC),
               [("concurrent/asyncio.timeout (floor)", CONC)], 1.0),
    ],
    notes="Each figure divides two overheads over the bare case of its path, same run."
    " The failure path counts the calls each case makes and fails the check unless it"
    " made 3; hyx counts retries, so `attempts=2` is 3 calls.",
    extra=memory_lines,
)
# fmt: on


if __name__ == "__main__":
    raise SystemExit(_perf.main("benchmarks.paths", cases, PAGE))
