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
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

from ._events import Hook
from ._policy import Policy, Thunk

__all__ = ["Pipeline", "pipeline"]

T = TypeVar("T")


class Pipeline(Policy):
    """
    Several policies applied as one, outermost first; build it with `pipeline(...)`.

    A pipeline emits no call events of its own: each policy in it emits its own.
    """

    kind = "pipeline"
    __slots__ = ("_inner", "_outer", "policies")

    def __init__(self, *policies: Policy) -> None:
        flat = _flatten(policies)
        super().__init__(name="pipeline", clock=None, hooks=None)
        self.policies: tuple[Policy, ...] = flat
        self._outer: Callable[[Thunk[object]], Awaitable[object]] = flat[0]._invoke
        # Bound once here so a call only allocates one partial per inner layer.
        self._inner: tuple[Callable[[Thunk[object]], Awaitable[object]], ...] = tuple(
            p._invoke for p in reversed(flat[1:])
        )

    def _invoke(self, thunk: Thunk[T]) -> Awaitable[T]:
        for invoke in self._inner:
            thunk = functools.partial(invoke, thunk)  # type: ignore[assignment]  # same shape
        return self._outer(thunk)  # type: ignore[return-value]  # T flows through

    _run = _invoke

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
