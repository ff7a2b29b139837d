"""
Happy-path cost per call of each policy and of the pipeline, against the peers and the
stdlib floors doing the same job.

    python -m benchmarks.overhead -o /tmp/o1.json       # pyperf; then benchmarks.report
    python -m benchmarks.overhead --quick --md /tmp/o.md

Every case wraps the same ``async def noop(): return 42``. Peers are set up the way
their docs recommend for asyncio, in their fastest sensible configuration, for the same
job: retry 3 attempts with exponential backoff 0.1 s x2 capped at 5 s; breaker threshold
5, reset 30 s; bulkhead 10 concurrent; timeout 2 s; fallback None; hedge 50 ms, one
hedged call; a stack of timeout + retry + breaker + bulkhead. Floors are hand-written
stdlib equivalents: lower bounds, not peers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import resilient
from benchmarks import _perf
from benchmarks._perf import Case, noop
from benchmarks.report import Figure, Report


def _stack(r: ModuleType, name: str) -> Any:
    return r.pipeline(
        r.Timeout(2.0),
        r.Retry(attempts=3),
        r.CircuitBreaker(name=name, failure_threshold=5, reset_timeout=30.0),
        r.Bulkhead(max_concurrent=10),
    )


# fmt: off
def resilient_cases(r: ModuleType) -> list[Case]:
    """This project's policies, built from package `r` (this tree, or another revision)."""
    stack = functools.partial(_stack, r, "bench-stack")
    return [
        Case("retry/resilient Retry", lambda: r.Retry(attempts=3)(noop), "@Retry(attempts=3)"),
        Case("retry/resilient Retry.call", lambda: functools.partial(r.Retry(3).call, noop),
             "Retry(attempts=3).call(noop)"),
        Case("breaker/resilient CircuitBreaker",
             lambda: r.CircuitBreaker(name="b", failure_threshold=5, reset_timeout=30.0)(noop),
             "@CircuitBreaker(name='b', failure_threshold=5, reset_timeout=30.0)"),
        Case("bulkhead/resilient Bulkhead", lambda: r.Bulkhead(10)(noop), "@Bulkhead(10)"),
        Case("timeout/resilient Timeout", lambda: r.Timeout(2.0)(noop), "@Timeout(2.0)"),
        Case("fallback/resilient Fallback", lambda: r.Fallback(value=None)(noop),
             "@Fallback(value=None)"),
        Case("hedge/resilient Hedge", lambda: r.Hedge(0.05, max_hedged=1)(noop), "@Hedge(0.05)"),
        Case("stack/resilient pipeline", lambda: stack()(noop),
             "@pipeline(Timeout(2.0), Retry(3), CircuitBreaker(5, 30.0), Bulkhead(10))"),
        Case("stack/resilient Pipeline.call", lambda: functools.partial(stack().call, noop),
             "the same pipeline, .call(noop)"),
    ]
# fmt: on


# -- peers: imports inside the builders, so a missing peer loses its own rows only ---------


def _tenacity() -> Any:
    import tenacity

    return tenacity.retry(
        stop=tenacity.stop_after_attempt(3),
        wait=tenacity.wait_exponential(multiplier=0.1, exp_base=2, max=5),
        reraise=True,
    )(noop)


def _stamina(fn: Any = noop) -> Any:
    import stamina

    stamina.set_testing(False)
    return stamina.retry(
        on=Exception, attempts=3, timeout=None, wait_initial=0.1, wait_max=5, wait_exp_base=2
    )(fn)


def _backoff() -> Any:
    import backoff

    return backoff.on_exception(
        backoff.expo, Exception, max_tries=3, factor=0.1, base=2, max_value=5
    )(noop)


def _hyx_retry(fn: Any = noop) -> Any:
    from hyx.retry import retry
    from hyx.retry.backoffs import expo

    backoff = expo(min_delay_secs=0.1, base=2, max_delay_secs=5)
    return retry(on=Exception, attempts=2, backoff=backoff)(fn)  # attempts = retries


def _hyx_breaker(fn: Any = noop) -> Any:
    from hyx.circuitbreaker import consecutive_breaker

    return consecutive_breaker(failure_threshold=5, recovery_time_secs=30)(fn)


def _hyx_stack() -> Any:
    from hyx.bulkhead import bulkhead
    from hyx.timeout import timeout

    limited = bulkhead(max_concurrency=10, max_capacity=10)(noop)
    return timeout(2.0)(_hyx_retry(_hyx_breaker(limited)))


def _pyres(**config: Any) -> Any:
    import pyresilience as p

    made: dict[str, Callable[[], Any]] = {
        "retry": lambda: p.RetryConfig(max_attempts=3, delay=0.1, backoff_factor=2, max_delay=5),
        "circuit_breaker": lambda: p.CircuitBreakerConfig(failure_threshold=5,
                                                          recovery_timeout=30),
        "bulkhead": lambda: p.BulkheadConfig(max_concurrent=10),
        "timeout": lambda: p.TimeoutConfig(seconds=2.0, per_attempt=False),
        "fallback": lambda: p.FallbackConfig(handler=lambda _exc: None),
    }  # fmt: skip
    chosen: dict[str, Any] = {key: made[key]() for key in config}
    return p.resilient(**chosen)(noop)


def _aiobreaker() -> Any:
    import aiobreaker  # type: ignore[import-untyped, unused-ignore]

    breaker = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=dt.timedelta(seconds=30))
    return breaker(noop)


def _purgatory(fn: Any = noop) -> Any:
    import purgatory

    factory = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)
    return factory("bench")(fn)


def _hyx(module: str, name: str, *args: Any, **kwargs: Any) -> Any:
    return getattr(__import__(f"hyx.{module}", fromlist=[name]), name)(*args, **kwargs)(noop)


# -- floors and hand-composed stacks -------------------------------------------------------


def _floor_semaphore() -> Any:
    sem = asyncio.Semaphore(10)

    async def fn() -> int:
        async with sem:
            return await noop()

    return fn


async def _floor_timeout() -> int:
    async with asyncio.timeout(2.0):
        return await noop()


async def _floor_wait_for() -> int:
    return await asyncio.wait_for(noop(), 2.0)


async def _floor_fallback() -> int | None:
    try:
        return await noop()
    except Exception:  # this is the fallback
        return None


async def _floor_hedge() -> int:
    task = asyncio.ensure_future(noop())
    await asyncio.wait((task,), timeout=0.05)  # a real hedge would start a second call
    return await task


def _composed(retry: Any, breaker: Any) -> Any:
    """asyncio.timeout around `retry` around `breaker` around a Semaphore, by hand."""
    sem = asyncio.Semaphore(10)

    async def limited() -> int:
        async with sem:
            return await noop()

    guarded = retry(breaker(limited))

    async def fn() -> int:
        async with asyncio.timeout(2.0):
            result: int = await guarded()
            return result

    return fn


def _floor_stack() -> Any:
    sem = asyncio.Semaphore(10)

    async def fn() -> int:
        async with asyncio.timeout(2.0), sem:
            return await noop()

    return fn


HYX, PYRES = ("hyx",), ("pyresilience",)
PEER_CASES = [
    Case("bare", lambda: noop, "await noop()"),
    Case("retry/tenacity @retry", _tenacity, "@retry(stop_after_attempt(3),"
         " wait_exponential(0.1, max=5), reraise=True)", ("tenacity",)),
    Case("retry/stamina @retry", _stamina, "@stamina.retry(on=Exception, attempts=3,"
         " timeout=None, wait_initial=0.1, wait_max=5); set_testing(False)", ("stamina",)),
    Case("retry/backoff @on_exception", _backoff, "@on_exception(expo, Exception, max_tries=3,"
         " factor=0.1, max_value=5)", ("backoff",)),
    Case("retry/hyx @retry", _hyx_retry, "@retry(on=Exception, attempts=2 (retries),"
         " backoff=expo(0.1, max_delay_secs=5))", HYX),
    Case("retry/pyresilience", lambda: _pyres(retry=1), "@resilient(retry=RetryConfig(3, ...))",
         PYRES),
    Case("breaker/aiobreaker", _aiobreaker, "@CircuitBreaker(fail_max=5, timeout_duration=30 s)",
         ("aiobreaker",)),
    Case("breaker/purgatory", _purgatory, "@AsyncCircuitBreakerFactory(default_threshold=5,"
         " default_ttl=30)('bench')", ("purgatory",)),
    Case("breaker/hyx consecutive_breaker", _hyx_breaker, "@consecutive_breaker(5, 30)", HYX),
    Case("breaker/pyresilience", lambda: _pyres(circuit_breaker=1),
         "@resilient(circuit_breaker=CircuitBreakerConfig(5, 30))", PYRES),
    Case("bulkhead/asyncio.Semaphore (floor)", _floor_semaphore,
         "async with Semaphore(10): await noop()"),
    Case("bulkhead/hyx bulkhead", lambda: _hyx("bulkhead", "bulkhead", max_concurrency=10,
         max_capacity=10), "@bulkhead(max_concurrency=10, max_capacity=10)", HYX),
    Case("bulkhead/pyresilience", lambda: _pyres(bulkhead=1),
         "@resilient(bulkhead=BulkheadConfig(10))", PYRES),
    Case("timeout/asyncio.timeout (floor)", lambda: _floor_timeout,
         "async with asyncio.timeout(2.0): await noop()"),
    Case("timeout/asyncio.wait_for (floor)", lambda: _floor_wait_for,
         "await asyncio.wait_for(noop(), 2.0)"),
    Case("timeout/hyx timeout", lambda: _hyx("timeout", "timeout", 2.0), "@timeout(2.0)", HYX),
    Case("timeout/pyresilience", lambda: _pyres(timeout=1),
         "@resilient(timeout=TimeoutConfig(2.0))", PYRES),
    Case("fallback/try-except (floor)", lambda: _floor_fallback,
         "try: return await noop() except Exception: return None"),
    Case("fallback/hyx fallback", lambda: _hyx("fallback", "fallback", _none, on=Exception),
         "@fallback(async handler -> None, on=Exception)", HYX),
    Case("fallback/pyresilience", lambda: _pyres(fallback=1),
         "@resilient(fallback=FallbackConfig(handler=lambda exc: None))", PYRES),
    Case("hedge/Task + asyncio.wait (floor)", lambda: _floor_hedge,
         "ensure_future(noop()); await asyncio.wait({task}, timeout=0.05)"),
    Case("stack/hyx stacked decorators", _hyx_stack,
         "@timeout(2) @retry(2, expo) @consecutive_breaker(5, 30) @bulkhead(10, 10)", HYX),
    Case("stack/pyresilience", lambda: _pyres(timeout=1, retry=1, circuit_breaker=1, bulkhead=1),
         "@resilient(timeout=..., retry=..., circuit_breaker=..., bulkhead=...)", PYRES),
    Case("stack/fastest composed: asyncio.timeout+hyx retry+hyx breaker+Semaphore",
         lambda: _composed(_hyx_retry, _hyx_breaker),
         "async with timeout(2): @hyx retry @hyx consecutive_breaker async with Semaphore(10)",
         HYX),
    Case("stack/stamina+purgatory: asyncio.timeout+stamina+purgatory+Semaphore",
         lambda: _composed(_stamina, _purgatory),
         "async with timeout(2): @stamina.retry @purgatory breaker async with Semaphore(10)",
         ("stamina", "purgatory")),
    Case("stack/asyncio.timeout + Semaphore (floor)", _floor_stack,
         "async with asyncio.timeout(2.0), Semaphore(10): await noop()"),
]  # fmt: skip


async def _none(*_: object, **__: object) -> None:
    return None


def cases() -> list[Case]:
    """Every case, this tree's policies first."""
    return [PEER_CASES[0], *resilient_cases(resilient), *PEER_CASES[1:]]


def _over(name: str) -> tuple[str, str]:
    return (name, "bare")


def _category_figures() -> list[Figure]:
    out = []
    for case in resilient_cases(resilient):
        category = case.name.split("/")[0]
        if case.name.endswith(".call"):
            continue
        peers = [_over(c.name) for c in PEER_CASES if c.name.startswith(category + "/")]
        floors = [t for t in peers if t[0].endswith("(floor)")]
        others = [t for t in peers if t not in floors and not t[0].startswith("stack/")]
        if others:
            out.append(Figure(f"{case.name} / fastest peer", _over(case.name), others, 1.0))
        if floors:
            out.append(Figure(f"{case.name} / stdlib floor", _over(case.name), floors))
    return out


# fmt: off
PAGE = Report(
    "overhead",
    "Happy-path overhead per call",
    "bare",
    [
        Figure("Retry / tenacity @retry", _over("retry/resilient Retry"),
               [_over("retry/tenacity @retry")], 0.1),
        Figure("pipeline / fastest composed peer stack", _over("stack/resilient pipeline"),
               [_over(PEER_CASES[-3].name)], 0.4),
        Figure("pipeline / fastest single-library stack", _over("stack/resilient pipeline"),
               [_over("stack/hyx stacked decorators"), _over("stack/pyresilience")], 0.4),
        Figure("pipeline / asyncio.timeout+stamina+purgatory+Semaphore",
               _over("stack/resilient pipeline"), [_over(PEER_CASES[-2].name)]),
        Figure("Pipeline.call / decorated pipeline", _over("stack/resilient Pipeline.call"),
               [_over("stack/resilient pipeline")], 1.15),
        *_category_figures(),
    ],
    chart="benchmarks-overhead.png",
)
# fmt: on


if __name__ == "__main__":
    raise SystemExit(_perf.main("benchmarks.overhead", cases, PAGE))
