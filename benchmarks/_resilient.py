"""Contenders built from this project's own ``resilient`` package.

The package is imported dynamically so the harness runs (and reports
``resilient`` as missing) while the library is still being written, and so a
half-finished API only loses the rows it breaks.  The calls follow the
public contract::

    from resilient import (Retry, CircuitBreaker, Bulkhead, Timeout, Fallback,
                           Hedge, pipeline)
    Retry(attempts=3)(fn)            # every policy/pipeline is a decorator
    Retry(attempts=3).call(fn)       # or runs a call directly
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Protocol

from benchmarks import _params as p
from benchmarks._harness import AsyncFn, Contender, noop

LIBRARY = "resilient"

ResilientBuilder = Callable[[ModuleType], Contender]


class Policy(Protocol):
    """The contract every resilient policy and pipeline object fulfils."""

    def __call__(self, fn: AsyncFn, /) -> AsyncFn:
        """Wrap ``fn`` in the policy."""
        ...


class RetryPolicy(Policy, Protocol):
    """A policy that can also run a call directly."""

    async def call(self, fn: AsyncFn, /) -> object:
        """Run ``fn()`` under the policy."""
        ...


def import_resilient() -> tuple[ModuleType | None, str]:
    """Return (module, "") or (None, why it could not be imported)."""
    try:
        return importlib.import_module(LIBRARY), ""
    except Exception as exc:  # any import failure means "missing"
        return None, f"`import resilient` failed: {type(exc).__name__}: {exc}"


def version(module: ModuleType) -> str:
    """Best-effort version string of the imported package."""
    try:
        from importlib.metadata import version as dist_version

        return dist_version(LIBRARY)
    except Exception:  # not installed as a distribution
        if getattr(module, "__file__", None) is None:
            return "namespace package (no __init__.py yet)"
        return str(getattr(module, "__version__", "source tree (not installed)"))


def _contender(
    category: str, label: str, fn: AsyncFn, api: str, *, primary: bool = True
) -> Contender:
    """A resilient contender."""
    return Contender(
        key=f"{category}/{label}",
        category=category,
        label=label,
        library=LIBRARY,
        kind="resilient",
        fn=fn,
        api=api,
        primary=primary,
    )


def _decorate(policy: Policy) -> AsyncFn:
    """Apply a policy object as a decorator to :func:`noop`."""
    return policy(noop)


def _retry(mod: ModuleType) -> RetryPolicy:
    """``Retry(attempts=3)``."""
    policy: RetryPolicy = mod.Retry(attempts=p.RETRY_ATTEMPTS)
    return policy


def _breaker(mod: ModuleType, name: str) -> Policy:
    """``CircuitBreaker(name=name, failure_threshold=5, reset_timeout=30.0)``."""
    policy: Policy = mod.CircuitBreaker(
        name=name,
        failure_threshold=p.FAILURE_THRESHOLD,
        reset_timeout=p.RESET_TIMEOUT_S,
    )
    return policy


def _bulkhead(mod: ModuleType) -> Policy:
    """``Bulkhead(max_concurrent=10)``."""
    policy: Policy = mod.Bulkhead(max_concurrent=p.MAX_CONCURRENT)
    return policy


def _timeout(mod: ModuleType) -> Policy:
    """``Timeout(2.0)``."""
    policy: Policy = mod.Timeout(p.TIMEOUT_S)
    return policy


def build_retry(mod: ModuleType) -> Contender:
    """``@Retry(attempts=3)``."""
    return _contender("retry", "resilient Retry", _decorate(_retry(mod)), "@Retry(attempts=3)")


def build_retry_call(mod: ModuleType) -> Contender:
    """``Retry(attempts=3).call(noop)`` -- the non-decorator entry point."""
    fn: AsyncFn = functools.partial(_retry(mod).call, noop)
    return _contender(
        "retry",
        "resilient Retry.call",
        fn,
        "Retry(attempts=3).call(noop)",
        primary=False,
    )


def build_breaker(mod: ModuleType) -> Contender:
    """``@CircuitBreaker(name=..., failure_threshold=5, reset_timeout=30)``."""
    return _contender(
        "breaker",
        "resilient CircuitBreaker",
        _decorate(_breaker(mod, "bench-breaker")),
        "@CircuitBreaker(name='bench-breaker', failure_threshold=5, reset_timeout=30.0)",
    )


def build_bulkhead(mod: ModuleType) -> Contender:
    """``@Bulkhead(max_concurrent=10)``."""
    return _contender(
        "bulkhead",
        "resilient Bulkhead",
        _decorate(_bulkhead(mod)),
        "@Bulkhead(max_concurrent=10)",
    )


def build_timeout(mod: ModuleType) -> Contender:
    """``@Timeout(2.0)``."""
    return _contender("timeout", "resilient Timeout", _decorate(_timeout(mod)), "@Timeout(2.0)")


def build_fallback(mod: ModuleType) -> Contender:
    """``@Fallback(value=None)``."""
    return _contender(
        "fallback",
        "resilient Fallback",
        _decorate(mod.Fallback(value=None)),
        "@Fallback(value=None)",
    )


def build_hedge(mod: ModuleType) -> Contender:
    """``@Hedge(delay=0.05, max_hedged=1)``."""
    policy = mod.Hedge(delay=p.HEDGE_DELAY_S, max_hedged=p.MAX_HEDGED)
    return _contender(
        "hedge",
        "resilient Hedge",
        _decorate(policy),
        "@Hedge(delay=0.05, max_hedged=1)",
    )


def build_pipeline(mod: ModuleType) -> Contender:
    """``@pipeline(Timeout, Retry, CircuitBreaker, Bulkhead)``."""
    policy = mod.pipeline(_timeout(mod), _retry(mod), _breaker(mod, "bench-stack"), _bulkhead(mod))
    return _contender(
        "stack",
        "resilient pipeline",
        _decorate(policy),
        "@pipeline(Timeout(2.0), Retry(attempts=3),"
        " CircuitBreaker(name='bench-stack', ...),"
        " Bulkhead(max_concurrent=10))",
    )


BUILDERS: tuple[tuple[str, ResilientBuilder], ...] = (
    ("retry", build_retry),
    ("retry", build_retry_call),
    ("breaker", build_breaker),
    ("bulkhead", build_bulkhead),
    ("timeout", build_timeout),
    ("fallback", build_fallback),
    ("hedge", build_hedge),
    ("stack", build_pipeline),
)
"""(category, builder) for every resilient contender."""
