"""Contenders built from peer libraries and from plain asyncio ("floors").

Each ``build_*`` function returns one :class:`~benchmarks._harness.Contender`
wrapping :func:`~benchmarks._harness.noop` the way the library's own docs
recommend for asyncio code.  Builders must run inside the event loop (hyx's
timeout grabs the running loop when it decorates).  Imports are local to the
builders so a missing or broken peer only loses its own rows.

:data:`LACKS` records which peer does not offer which capability natively
for asyncio code; those pairs are reported rather than faked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

from benchmarks import _params as p
from benchmarks._harness import AsyncFn, Contender, Kind, Unavailable, noop

Builder = Callable[[], Contender]


def _contender(
    category: str,
    library: str,
    label: str,
    fn: AsyncFn,
    api: str,
    *,
    kind: Kind = "peer",
    note: str = "",
    primary: bool = True,
) -> Contender:
    """Build a contender with a key derived from category and label."""
    return Contender(
        key=f"{category}/{label}",
        category=category,
        label=label,
        library=library,
        kind=kind,
        fn=fn,
        api=api,
        note=note,
        primary=primary,
    )


# --------------------------------------------------------------------- retry


def build_tenacity_retry() -> Contender:
    """tenacity's ``@retry`` on an ``async def`` (becomes AsyncRetrying)."""
    import tenacity

    fn = tenacity.retry(
        stop=tenacity.stop_after_attempt(p.RETRY_ATTEMPTS),
        wait=tenacity.wait_exponential(
            multiplier=p.BACKOFF_INITIAL_S, exp_base=p.BACKOFF_BASE, max=p.BACKOFF_MAX_S
        ),
        reraise=True,
    )(noop)
    return _contender(
        "retry",
        "tenacity",
        "tenacity @retry",
        fn,
        "@tenacity.retry(stop=stop_after_attempt(3), wait=wait_exponential(0.1, max=5),"
        " reraise=True)",
        note="copies the AsyncRetrying object on every call",
    )


def build_tenacity_async_for() -> Contender:
    """tenacity's documented ``async for attempt in AsyncRetrying(...)`` loop."""
    import tenacity

    stop = tenacity.stop_after_attempt(p.RETRY_ATTEMPTS)
    wait = tenacity.wait_exponential(
        multiplier=p.BACKOFF_INITIAL_S, exp_base=p.BACKOFF_BASE, max=p.BACKOFF_MAX_S
    )

    async def fn() -> int:
        async for attempt in tenacity.AsyncRetrying(stop=stop, wait=wait, reraise=True):
            with attempt:
                return await noop()
        raise AssertionError("unreachable: reraise=True")

    return _contender(
        "retry",
        "tenacity",
        "tenacity async for AsyncRetrying",
        fn,
        "async for attempt in AsyncRetrying(stop=..., wait=..., reraise=True): with attempt:",
        note="variant; builds a new AsyncRetrying per call",
        primary=False,
    )


def build_stamina_retry() -> Contender:
    """stamina's ``@retry`` (tenacity underneath), test mode off."""
    import stamina

    stamina.set_testing(False)
    fn = stamina.retry(
        on=Exception,
        attempts=p.RETRY_ATTEMPTS,
        timeout=None,
        wait_initial=p.BACKOFF_INITIAL_S,
        wait_max=p.BACKOFF_MAX_S,
        wait_exp_base=p.BACKOFF_BASE,
    )(noop)
    return _contender(
        "retry",
        "stamina",
        "stamina @retry",
        fn,
        "@stamina.retry(on=Exception, attempts=3, timeout=None, wait_initial=0.1,"
        " wait_max=5); set_testing(False); default instrumentation",
        note="wraps tenacity.AsyncRetrying, built anew per call; default jitter 1 s;"
        " instrumentation hooks only run on retries",
    )


def build_backoff_retry() -> Contender:
    """backoff's ``@on_exception`` on an ``async def``."""
    import backoff

    fn = backoff.on_exception(
        backoff.expo,
        Exception,
        max_tries=p.RETRY_ATTEMPTS,
        factor=p.BACKOFF_INITIAL_S,
        base=p.BACKOFF_BASE,
        max_value=p.BACKOFF_MAX_S,
    )(noop)
    return _contender(
        "retry",
        "backoff",
        "backoff @on_exception",
        fn,
        "@backoff.on_exception(backoff.expo, Exception, max_tries=3, factor=0.1, max_value=5)",
        note="calls datetime.now() twice and builds a details dict per call",
    )


def build_hyx_retry() -> Contender:
    """hyx's ``@retry`` with its ``expo`` backoff."""
    from hyx.retry import retry
    from hyx.retry.backoffs import expo

    backoff = expo(
        min_delay_secs=p.BACKOFF_INITIAL_S,
        base=p.BACKOFF_BASE,
        max_delay_secs=p.BACKOFF_MAX_S,
    )
    fn: AsyncFn = retry(on=Exception, attempts=p.RETRY_ATTEMPTS - 1, backoff=backoff)(noop)
    return _contender(
        "retry",
        "hyx",
        "hyx @retry",
        fn,
        "@hyx.retry.retry(on=Exception, attempts=2,"
        " backoff=expo(min_delay_secs=0.1, max_delay_secs=5))",
        note="hyx counts attempts as *retries*: attempts=2 gives 3 calls (attempts=3 would give 4)",
    )


def build_pyresilience_retry() -> Contender:
    """pyresilience's all-in-one ``@resilient`` with only retry enabled."""
    import pyresilience

    fn = pyresilience.resilient(
        retry=pyresilience.RetryConfig(
            max_attempts=p.RETRY_ATTEMPTS,
            delay=p.BACKOFF_INITIAL_S,
            backoff_factor=p.BACKOFF_BASE,
            max_delay=p.BACKOFF_MAX_S,
        )
    )(noop)
    return _contender(
        "retry",
        "pyresilience",
        "pyresilience @resilient(retry)",
        fn,
        "@pyresilience.resilient(retry=RetryConfig(max_attempts=3, delay=0.1, max_delay=5))",
        note="sets a ContextVar (call id) on every call",
    )


# ------------------------------------------------------------------- breaker


def build_aiobreaker() -> Contender:
    """aiobreaker's ``CircuitBreaker`` used as a decorator."""
    import aiobreaker  # type: ignore[import-untyped, unused-ignore]

    breaker = aiobreaker.CircuitBreaker(
        fail_max=p.FAILURE_THRESHOLD,
        timeout_duration=dt.timedelta(seconds=p.RESET_TIMEOUT_S),
    )
    fn: AsyncFn = breaker(noop)
    return _contender(
        "breaker",
        "aiobreaker",
        "aiobreaker CircuitBreaker",
        fn,
        "@CircuitBreaker(fail_max=5, timeout_duration=timedelta(seconds=30))",
    )


def build_purgatory() -> Contender:
    """purgatory's async factory decorator, default in-memory storage."""
    import purgatory

    factory = purgatory.AsyncCircuitBreakerFactory(
        default_threshold=p.FAILURE_THRESHOLD, default_ttl=p.RESET_TIMEOUT_S
    )
    fn: AsyncFn = factory("bench-breaker")(noop)
    return _contender(
        "breaker",
        "purgatory",
        "purgatory AsyncCircuitBreakerFactory",
        fn,
        "@AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=30)('bench-breaker')",
        note="looks the breaker up in its (in-memory) unit of work on every call",
    )


def build_hyx_breaker() -> Contender:
    """hyx's ``consecutive_breaker`` used as a decorator."""
    from hyx.circuitbreaker import consecutive_breaker

    fn: AsyncFn = consecutive_breaker(
        exceptions=Exception,
        failure_threshold=p.FAILURE_THRESHOLD,
        recovery_time_secs=p.RESET_TIMEOUT_S,
    )(noop)
    return _contender(
        "breaker",
        "hyx",
        "hyx consecutive_breaker",
        fn,
        "@consecutive_breaker(failure_threshold=5, recovery_time_secs=30)",
        note="wraps the call in functools.partial; two awaited state transitions per call",
    )


def build_pyresilience_breaker() -> Contender:
    """pyresilience ``@resilient`` with only the circuit breaker enabled."""
    import pyresilience

    fn = pyresilience.resilient(
        circuit_breaker=pyresilience.CircuitBreakerConfig(
            failure_threshold=p.FAILURE_THRESHOLD, recovery_timeout=p.RESET_TIMEOUT_S
        )
    )(noop)
    return _contender(
        "breaker",
        "pyresilience",
        "pyresilience @resilient(circuit_breaker)",
        fn,
        "@resilient(circuit_breaker=CircuitBreakerConfig(failure_threshold=5,"
        " recovery_timeout=30))",
        note="takes a threading.Lock twice per call",
    )


# ------------------------------------------------------------------ bulkhead


def build_semaphore_floor() -> Contender:
    """A plain ``asyncio.Semaphore`` -- the least a bulkhead can cost."""
    sem = asyncio.Semaphore(p.MAX_CONCURRENT)

    async def fn() -> int:
        async with sem:
            return await noop()

    return _contender(
        "bulkhead",
        "asyncio",
        "asyncio.Semaphore (floor)",
        fn,
        "async with asyncio.Semaphore(10): await noop()",
        kind="floor",
        note="queues without limit, never rejects",
    )


def build_hyx_bulkhead() -> Contender:
    """hyx's ``bulkhead`` used as a decorator."""
    from hyx.bulkhead import bulkhead

    fn: AsyncFn = bulkhead(max_concurrency=p.MAX_CONCURRENT, max_capacity=p.MAX_CONCURRENT)(noop)
    return _contender(
        "bulkhead",
        "hyx",
        "hyx bulkhead",
        fn,
        "@bulkhead(max_concurrency=10, max_capacity=10)",
        note="max_capacity is required (concurrent + queued); two semaphores per call",
    )


def build_pyresilience_bulkhead() -> Contender:
    """pyresilience ``@resilient`` with only the bulkhead enabled."""
    import pyresilience

    fn = pyresilience.resilient(
        bulkhead=pyresilience.BulkheadConfig(max_concurrent=p.MAX_CONCURRENT)
    )(noop)
    return _contender(
        "bulkhead",
        "pyresilience",
        "pyresilience @resilient(bulkhead)",
        fn,
        "@resilient(bulkhead=BulkheadConfig(max_concurrent=10))",
        note="max_wait=0 default: rejects at once when full instead of queueing",
    )


# ------------------------------------------------------------------- timeout


def build_asyncio_timeout_floor() -> Contender:
    """``async with asyncio.timeout(2)`` (Python 3.11+)."""

    async def fn() -> int:
        async with asyncio.timeout(p.TIMEOUT_S):
            return await noop()

    return _contender(
        "timeout",
        "asyncio",
        "asyncio.timeout (floor)",
        fn,
        "async with asyncio.timeout(2.0): await noop()",
        kind="floor",
    )


def build_wait_for_floor() -> Contender:
    """``asyncio.wait_for(noop(), 2)``, what hyx and pyresilience build on."""

    async def fn() -> int:
        return await asyncio.wait_for(noop(), p.TIMEOUT_S)

    return _contender(
        "timeout",
        "asyncio",
        "asyncio.wait_for (floor)",
        fn,
        "await asyncio.wait_for(noop(), 2.0)",
        kind="floor",
        note="on 3.11 wraps the coroutine in a new Task per call",
    )


def build_hyx_timeout() -> Contender:
    """hyx's ``timeout`` used as a decorator (needs the running loop)."""
    from hyx.timeout import timeout

    fn: AsyncFn = timeout(p.TIMEOUT_S)(noop)
    return _contender(
        "timeout",
        "hyx",
        "hyx timeout",
        fn,
        "@hyx.timeout.timeout(2.0)",
        note="creates a Task per call and then asyncio.wait_for on it;"
        " must be decorated inside a running loop",
    )


def build_pyresilience_timeout() -> Contender:
    """pyresilience ``@resilient`` with only the timeout enabled."""
    import pyresilience

    fn = pyresilience.resilient(timeout=pyresilience.TimeoutConfig(seconds=p.TIMEOUT_S))(noop)
    return _contender(
        "timeout",
        "pyresilience",
        "pyresilience @resilient(timeout)",
        fn,
        "@resilient(timeout=TimeoutConfig(seconds=2.0))",
        note="asyncio.wait_for per attempt (a Task per call on 3.11);"
        " enabling timeout leaves its no-retry fast path",
    )


# ------------------------------------------------------------------ fallback


def build_try_except_floor() -> Contender:
    """A hand-written ``try/except Exception: return None``."""

    async def fn() -> int | None:
        try:
            return await noop()
        except Exception:  # this *is* the fallback
            return None

    return _contender(
        "fallback",
        "python",
        "try/except (floor)",
        fn,
        "try: return await noop() except Exception: return None",
        kind="floor",
    )


def build_hyx_fallback() -> Contender:
    """hyx's ``fallback`` decorator with an async handler returning None."""
    from hyx.fallback import fallback

    async def handler(result: object, *args: object, **kwargs: object) -> None:  # noqa: ARG001
        return None

    fn: AsyncFn = fallback(handler, on=Exception)(noop)
    return _contender(
        "fallback",
        "hyx",
        "hyx fallback",
        fn,
        "@fallback(handler, on=Exception) with async handler -> None",
        note="handler must be an async callable (no static value)",
    )


def build_pyresilience_fallback() -> Contender:
    """pyresilience ``@resilient`` with only the fallback enabled."""
    import pyresilience

    def handler(_exc: BaseException) -> None:
        return None

    fn = pyresilience.resilient(fallback=pyresilience.FallbackConfig(handler=handler))(noop)
    return _contender(
        "fallback",
        "pyresilience",
        "pyresilience @resilient(fallback)",
        fn,
        "@resilient(fallback=FallbackConfig(handler=lambda exc: None))",
        note="FallbackConfig(handler=None) silently DISABLES the fallback,"
        " so a static None needs a callable",
    )


# --------------------------------------------------------------------- hedge


def build_hedge_floor() -> Contender:
    """The least a hedge costs: run the call as a Task, wait with a deadline."""

    async def fn() -> int:
        task = asyncio.ensure_future(noop())
        done, _ = await asyncio.wait((task,), timeout=p.HEDGE_DELAY_S)
        if done:
            return task.result()
        return await task  # a real hedge would start a second call here

    return _contender(
        "hedge",
        "asyncio",
        "Task + asyncio.wait(timeout) (floor)",
        fn,
        "task = ensure_future(noop()); await asyncio.wait({task}, timeout=0.05)",
        kind="floor",
        note="hand-rolled primary-call half of a hedge; no library offers one",
    )


# --------------------------------------------------------------------- stack


def build_hyx_stack() -> Contender:
    """hyx's decorators stacked: timeout > retry > breaker > bulkhead."""
    from hyx.bulkhead import bulkhead
    from hyx.circuitbreaker import consecutive_breaker
    from hyx.retry import retry
    from hyx.retry.backoffs import expo
    from hyx.timeout import timeout

    limited = bulkhead(max_concurrency=p.MAX_CONCURRENT, max_capacity=p.MAX_CONCURRENT)(noop)
    guarded = consecutive_breaker(
        failure_threshold=p.FAILURE_THRESHOLD, recovery_time_secs=p.RESET_TIMEOUT_S
    )(limited)
    backoff = expo(
        min_delay_secs=p.BACKOFF_INITIAL_S,
        base=p.BACKOFF_BASE,
        max_delay_secs=p.BACKOFF_MAX_S,
    )
    retried = retry(on=Exception, attempts=p.RETRY_ATTEMPTS - 1, backoff=backoff)
    fn: AsyncFn = timeout(p.TIMEOUT_S)(retried(guarded))
    return _contender(
        "stack",
        "hyx",
        "hyx stacked decorators",
        fn,
        "@timeout(2) @retry(attempts=2, expo) @consecutive_breaker(5, 30) @bulkhead(10, 10)",
    )


def build_pyresilience_stack() -> Contender:
    """pyresilience's single decorator with timeout, retry, breaker, bulkhead."""
    import pyresilience

    fn = pyresilience.resilient(
        timeout=pyresilience.TimeoutConfig(seconds=p.TIMEOUT_S, per_attempt=False),
        retry=pyresilience.RetryConfig(
            max_attempts=p.RETRY_ATTEMPTS,
            delay=p.BACKOFF_INITIAL_S,
            backoff_factor=p.BACKOFF_BASE,
            max_delay=p.BACKOFF_MAX_S,
        ),
        circuit_breaker=pyresilience.CircuitBreakerConfig(
            failure_threshold=p.FAILURE_THRESHOLD, recovery_timeout=p.RESET_TIMEOUT_S
        ),
        bulkhead=pyresilience.BulkheadConfig(max_concurrent=p.MAX_CONCURRENT),
    )(noop)
    return _contender(
        "stack",
        "pyresilience",
        "pyresilience @resilient(all four)",
        fn,
        "@resilient(timeout=TimeoutConfig(2, per_attempt=False),"
        " retry=RetryConfig(3, ...),"
        " circuit_breaker=CircuitBreakerConfig(5, 30), bulkhead=BulkheadConfig(10))",
        note="fixed internal order (breaker > bulkhead > retry > per-call wait_for);"
        " per_attempt=False makes the 2 s a total budget like an outer timeout",
    )


def build_best_of_breed_stack() -> Contender:
    """asyncio.timeout + stamina retry + purgatory breaker + Semaphore, by hand."""
    import purgatory
    import stamina

    stamina.set_testing(False)
    sem = asyncio.Semaphore(p.MAX_CONCURRENT)
    factory = purgatory.AsyncCircuitBreakerFactory(
        default_threshold=p.FAILURE_THRESHOLD, default_ttl=p.RESET_TIMEOUT_S
    )

    @stamina.retry(
        on=Exception,
        attempts=p.RETRY_ATTEMPTS,
        timeout=None,
        wait_initial=p.BACKOFF_INITIAL_S,
        wait_max=p.BACKOFF_MAX_S,
        wait_exp_base=p.BACKOFF_BASE,
    )
    @factory("bench-stack")  # type: ignore[untyped-decorator]
    async def guarded() -> int:
        async with sem:
            return await noop()

    async def fn() -> int:
        async with asyncio.timeout(p.TIMEOUT_S):
            result: int = await guarded()
            return result

    return _contender(
        "stack",
        "stamina+purgatory+asyncio",
        "best-of-breed: asyncio.timeout+stamina+purgatory+Semaphore",
        fn,
        "async with asyncio.timeout(2): @stamina.retry(...) @purgatory_factory('s')"
        " async with Semaphore(10)",
        note="composed by hand",
    )


def build_stack_floor() -> Contender:
    """asyncio.timeout + Semaphore only: the stdlib part of any stack."""
    sem = asyncio.Semaphore(p.MAX_CONCURRENT)

    async def fn() -> int:
        async with asyncio.timeout(p.TIMEOUT_S):
            async with sem:
                return await noop()

    return _contender(
        "stack",
        "asyncio",
        "asyncio.timeout + Semaphore (floor)",
        fn,
        "async with asyncio.timeout(2.0): async with Semaphore(10): await noop()",
        kind="floor",
        note="no retry or breaker bookkeeping at all",
    )


BUILDERS: tuple[tuple[str, str, Builder], ...] = (
    ("retry", "tenacity", build_tenacity_retry),
    ("retry", "tenacity", build_tenacity_async_for),
    ("retry", "stamina", build_stamina_retry),
    ("retry", "backoff", build_backoff_retry),
    ("retry", "hyx", build_hyx_retry),
    ("retry", "pyresilience", build_pyresilience_retry),
    ("breaker", "aiobreaker", build_aiobreaker),
    ("breaker", "purgatory", build_purgatory),
    ("breaker", "hyx", build_hyx_breaker),
    ("breaker", "pyresilience", build_pyresilience_breaker),
    ("bulkhead", "asyncio", build_semaphore_floor),
    ("bulkhead", "hyx", build_hyx_bulkhead),
    ("bulkhead", "pyresilience", build_pyresilience_bulkhead),
    ("timeout", "asyncio", build_asyncio_timeout_floor),
    ("timeout", "asyncio", build_wait_for_floor),
    ("timeout", "hyx", build_hyx_timeout),
    ("timeout", "pyresilience", build_pyresilience_timeout),
    ("fallback", "python", build_try_except_floor),
    ("fallback", "hyx", build_hyx_fallback),
    ("fallback", "pyresilience", build_pyresilience_fallback),
    ("hedge", "asyncio", build_hedge_floor),
    ("stack", "hyx", build_hyx_stack),
    ("stack", "pyresilience", build_pyresilience_stack),
    ("stack", "stamina+purgatory+asyncio", build_best_of_breed_stack),
    ("stack", "asyncio", build_stack_floor),
)
"""(category, library, builder) for every peer and floor contender."""

PEER_LIBRARIES: tuple[str, ...] = (
    "tenacity",
    "stamina",
    "backoff",
    "aiobreaker",
    "purgatory",
    "hyx",
    "pyresilience",
)
"""Distributions whose versions are reported."""

_RETRY_ONLY = "retry-only library"

LACKS: tuple[Unavailable, ...] = (
    *(
        Unavailable(cat, lib, _RETRY_ONLY)
        for lib in ("tenacity", "stamina", "backoff")
        for cat in ("breaker", "bulkhead", "timeout", "hedge")
    ),
    Unavailable(
        "fallback",
        "tenacity",
        "retry-only; retry_error_callback covers only retry exhaustion",
    ),
    Unavailable("fallback", "stamina", _RETRY_ONLY),
    Unavailable(
        "fallback",
        "backoff",
        "retry-only; raise_on_giveup=False covers only retry exhaustion",
    ),
    *(
        Unavailable(cat, lib, "circuit-breaker-only library")
        for lib in ("aiobreaker", "purgatory")
        for cat in ("retry", "bulkhead", "timeout", "fallback", "hedge")
    ),
    Unavailable("hedge", "hyx", "no hedging in hyx 0.0.2 (the only release on PyPI here)"),
    Unavailable("hedge", "pyresilience", "no hedging in pyresilience 0.4.1"),
    Unavailable(
        "breaker",
        "pybreaker",
        "skipped entirely: no native asyncio support (needs tornado)",
    ),
)
"""Capabilities a peer does not offer natively for asyncio code."""
