"""
Composition: `pipeline(a, b, c)` runs a call through `a`, then `b`, then `c`.

The first policy is the outermost. Where a policy sits decides what it guards:

    pipeline(
        Fallback(value=...),         # last resort, sees every failure below
        Timeout(5.0),                # total budget for the call, retries included
        Retry(attempts=3),           # each attempt passes everything below
        CircuitBreaker(name="svc"),  # counts attempts, rejects fast while open
        Bulkhead(10, max_queue=20),  # limits attempts in flight to the dependency
        Timeout(1.0),                # per-attempt budget (capped by the total)
    )

This is the order Polly v8 and resilience4j recommend: a `Timeout` outside `Retry`
bounds the whole call, inside it bounds each attempt; the breaker sits inside `Retry` so
each attempt is counted and an open circuit fails the remaining attempts fast (`Retry`
does not retry `CircuitOpenError` unless told to). `Hedge` takes `Retry`'s place when
tail latency matters more than load.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from types import FunctionType
from typing import Any, ParamSpec, TypeVar

from .callables import check_async, label, not_callable, returns_coroutine
from .events import Hook
from .fusion import fusion_of
from .hooks import global_hooks
from .policy import Args, AsyncFn, Kwargs, Policy

__all__ = ["Pipeline", "pipeline"]

T = TypeVar("T")
P = ParamSpec("P")

_GLOBAL_HOOKS = global_hooks()
# Functions whose chains `.call` keeps: a handful in practice (the middleware calls one),
# a bound so a pipeline handed ever new functions doesn't grow without end.
_MAX_CHAINS = 32


class Pipeline(Policy):
    """
    Several policies applied as one, outermost first; build it with `pipeline(...)`.

    A pipeline emits no call events of its own: each policy in it emits its own.
    """

    kind = "pipeline"
    __slots__ = ("_chains", "_fusion", "_inner", "_outer", "policies")

    def __init__(self, *policies: Policy) -> None:
        flat = _flatten(policies)
        super().__init__(name="pipeline", clock=None, hooks=None)
        self.policies: tuple[Policy, ...] = flat
        self._outer = flat[0]
        self._inner = tuple(reversed(flat[1:]))
        # `.call`'s layer chains (or fused functions) by function, built on first call.
        self._chains: dict[Callable[..., Any], AsyncFn[Any]] = {}
        # Built-in policies run a call in one frame (fusion.py); None: chained layers.
        self._fusion = fusion_of(flat)

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """
        Decorate an async function so that every call goes through the whole pipeline.

        The layers are chained once, here, so a call allocates nothing per layer. Each
        policy made without ``name=`` is named after `fn`, as `Policy.__call__` says.

        Raises:
            TypeError: `fn` is a plain (non-async) function or an async generator
                function.
        """
        check_async(type(self).__name__, fn)
        name = label(fn)
        for policy in self.policies:
            policy._name_after(fn, name)  # noqa: SLF001  # Policy's own protocol
        if self._fusion is not None:
            wrapper = self._fusion(fn)
        else:
            wrapper = self._outer._guard(self._chain(fn))  # noqa: SLF001  # Policy's own protocol
        return functools.wraps(fn)(wrapper)

    @returns_coroutine
    def call(  # the same call as an async def, one coroutine less (see below)
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]:
        """
        Run `fn(*args, **kwargs)` through every policy, outermost first.

        Returns the coroutine to await, as an ``async def`` would. For a fused pipeline
        it is the fused call itself, not a coroutine awaiting it: each suspension of the
        call (every I/O wait of `fn`) passes one frame less.

        The layers around a module-level ``async def`` are chained on its first call
        and kept, so calling it again costs what a decorated call does; a bound method,
        a closure or another callable is chained on each call (the chain would keep it
        alive, or the check of what a non-async one returns would outlive its call).

        Raises:
            TypeError: As `Policy.call` says, when `fn` gives nothing to await (raised
                when the coroutine is awaited).
        """
        inner = self._chains.get(fn) if type(fn) is FunctionType else None
        if inner is None:
            inner = self._inner_chain(fn)
        if self._fusion is not None:
            return inner(*args, **kwargs)  # type: ignore[return-value]  # fused: a coroutine
        return self._run_chained(inner, *args, **kwargs)

    def runner(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """
        Return a function running `fn` through every policy, as `.call` would.

        ``run = pipeline.runner(fn)``, then ``await run(*args)`` is ``await
        pipeline.call(fn, *args)``, and `run` is a coroutine function. For an ``async
        def`` (a bound method or a closure too; `.call` keeps chains for plain
        functions only) the layers are chained (or fused) once, here, and held by
        `run`; a fused pipeline returns its fused function itself, so a call costs what
        a decorated one does. Another callable is checked on each call, as `.call`
        checks it. Unlike decorating `fn`, it names no policy.

        Raises:
            TypeError: `fn` is not callable (a coroutine object, ``fetch(x)`` where
                ``fetch`` was meant, is closed and the message shows the right call).
        """
        if not callable(fn):
            raise not_callable(
                "Pipeline.runner(fn=...)", fn, "pipeline.runner({0}), not pipeline.runner({0}(...))"
            )
        vetted = self._vet(fn)
        if vetted is not fn:
            # Not an `async def`: the check of what it returns remembers a misuse for the
            # rest of its call (no attempt calls it again), so each call gets its own, as
            # from `.call`; one held by the runner would fail every later call at once.
            return functools.partial(self.call, fn)
        if self._fusion is not None:
            return self._fusion(vetted)
        # A coroutine function, as the fused one is: a policy can decorate the runner,
        # and a health check of it runs on the loop.
        return functools.partial(self._run_chained, self._chain(vetted))

    async def _run_chained(self, inner: AsyncFn[T], /, *args: Any, **kwargs: Any) -> T:
        outer = self._outer
        # The outer layer written out, as the decorator's wrapper does (`Policy._guard`).
        if outer._hooks or _GLOBAL_HOOKS:  # noqa: SLF001  # Policy's own protocol
            return await outer._observe(inner, args, kwargs)  # noqa: SLF001
        return await outer._run(inner, args, kwargs)  # noqa: SLF001

    def _inner_chain(self, fn: Callable[..., Awaitable[T]]) -> AsyncFn[T]:
        vetted = self._vet(fn)
        # Kept only when holding it keeps nothing else alive (as `Policy._vet` says), and
        # only for an `async def`: a wrapper checking what `fn` returns remembers a misuse
        # for the rest of its call, not for every call after.
        kept = (
            vetted is fn
            and type(fn) is FunctionType
            and fn.__closure__ is None
            and len(self._chains) < _MAX_CHAINS
        )
        # Fused: the whole pipeline in one function; else the layers under the outer one.
        chain = self._chain(vetted) if self._fusion is None else self._fusion(vetted)
        if kept:
            self._chains[fn] = chain
        return chain

    def _chain(self, fn: AsyncFn[T]) -> AsyncFn[T]:
        for policy in self._inner:
            fn = policy._bind(fn)  # noqa: SLF001  # Policy's own protocol
        return fn

    def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> Awaitable[T]:  # pragma: no cover
        # The contract's method, never a layer's: `pipeline()` flattens a nested pipeline.
        return self._outer._bind(self._chain(fn))(*args, **kwargs)  # noqa: SLF001

    def add_hook(self, hook: Hook) -> Callable[[], None]:
        """
        Send the events of every policy in the pipeline to `hook`.

        Returns:
            A function that removes the hook from all of them again.
        """
        removers = [policy.add_hook(hook) for policy in self.policies]

        def remove_all() -> None:
            for remove in removers:
                remove()

        return remove_all

    def remove_hook(self, hook: Hook) -> None:
        """
        Remove `hook` from every policy in the pipeline.
        """
        for policy in self.policies:
            policy.remove_hook(hook)

    def __repr__(self) -> str:
        return "pipeline(" + ", ".join(repr(p) for p in self.policies) + ")"


def _flatten(policies: Iterable[object]) -> tuple[Policy, ...]:
    flat: list[Policy] = []
    for position, policy in enumerate(policies):
        if isinstance(policy, Pipeline):
            flat.extend(policy.policies)
        elif isinstance(policy, Policy):
            flat.append(policy)
        else:
            raise TypeError(f"pipeline(): argument {position} is not a policy: {policy!r}")
    if not flat:
        raise ValueError("pipeline(): needs at least one policy")
    return tuple(flat)


def pipeline(*policies: Policy) -> Pipeline:
    """
    Compose policies into one, the first outermost.

    Args:
        *policies: Policies (or pipelines, which are flattened), outermost first.

    Returns:
        A `Pipeline`, itself a policy: a decorator with `.call(fn, *args, **kwargs)`.

    Raises:
        ValueError: No policy was given.
        TypeError: An argument is not a policy.
    """
    return Pipeline(*policies)
