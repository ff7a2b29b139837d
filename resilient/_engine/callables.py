"""
What a policy can wrap, and the name it takes from it (internal).

`@policy` takes coroutine functions only; `.call(fn)` takes any callable that returns
an awaitable, and says so clearly, on the first attempt, when one doesn't.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

__all__ = [
    "awaitable_checked",
    "check_async",
    "is_coroutine_callable",
    "label",
    "not_callable",
    "returns_coroutine",
]

F = TypeVar("F", bound=Callable[..., Any])
_RETURNS_COROUTINE = "_resilient_returns_coroutine"


def returns_coroutine(fn: F) -> F:
    """
    Mark `fn`, a plain function that returns a coroutine, as a coroutine function.

    `Policy.call` returns the policy's own coroutine rather than being an ``async def``
    around it; it must still be taken for what it is where that is asked (a health
    check of ``functools.partial(policy.call, probe)`` runs on the loop, not in a
    thread). 3.12's `inspect.markcoroutinefunction` tells `inspect`; on 3.11 our own
    mark tells `is_coroutine_callable`.
    """
    setattr(fn, _RETURNS_COROUTINE, True)
    mark = getattr(inspect, "markcoroutinefunction", None)
    return mark(fn) if mark is not None else fn


def is_coroutine_callable(fn: object) -> bool:
    """
    Whether calling `fn` returns a coroutine.

    True for an ``async def``, an object whose ``__call__`` is one, a function marked
    with `returns_coroutine` (a bound method of one too), and a `functools.partial` of
    any of these.
    """
    if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004  # the method itself, not callable()
    ):
        return True
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, _RETURNS_COROUTINE, False) is True


def label(fn: object) -> str | None:
    """
    The name an unnamed policy takes from the function it decorates, or None.
    """
    # stamina's guess_name: module and qualified name, unique within a process.
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        return None
    module = getattr(fn, "__module__", None)
    return f"{module}.{qualname}" if isinstance(module, str) else qualname


def check_async(owner: str, fn: object) -> None:
    """
    Refuse to decorate what a policy can't wrap: a plain `def`, an async generator function.
    """
    if inspect.isasyncgenfunction(fn):
        raise TypeError(_ASYNC_GENERATOR.format(owner, fn.__qualname__))
    if inspect.isfunction(fn) and not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{owner} decorates async functions; {fn.__qualname__} is not 'async def'")


_ASYNC_GENERATOR = (
    "{0} can't wrap {1}: it is an async generator function, and an async generator is"
    " iterated, not awaited, so a policy can't see when it fails or ends; wrap a"
    " coroutine function (an 'async def' that returns), e.g. one that collects the items"
)


def awaitable_checked(owner: str, fn: object) -> Callable[..., Awaitable[Any]]:
    """
    Return `fn` wrapped to raise a clear TypeError when it returns no awaitable (internal).

    For `.call(fn)` with an `fn` that is not an `async def`: a lambda or partial
    returning a coroutine, a callable object, a method returning a Future all work; a
    plain function's result fails on the first attempt, before any policy could retry
    the confusing "can't be used in 'await' expression" it would give.
    """
    if not callable(fn):
        raise not_callable(
            f"{owner}.call(fn=...)", fn, "policy.call({0}, *args), not policy.call({0}(*args))"
        )

    misuse: list[TypeError] = []  # once found, later attempts (on=predicate) don't call fn

    def checked(*args: Any, **kwargs: Any) -> Awaitable[Any]:
        if misuse:
            raise misuse[0]
        result = fn(*args, **kwargs)
        if inspect.isawaitable(result):
            return result
        misuse.append(_not_awaitable(owner, fn, result))
        raise misuse[0]

    return checked


def not_callable(
    where: str, value: object, usage: str, expected: str = "an async callable"
) -> TypeError:
    """
    The TypeError for `value` given where a callable was expected, saying how to fix it.

    The usual mistake is calling the function where it should be passed,
    ``policy.call(fetch(x))``: the coroutine it made is closed here, so it doesn't also
    warn "coroutine ... was never awaited" later, and the message shows the right call.

    Args:
        where: The parameter, e.g. ``Retry.call(fn=...)``.
        value: What was passed.
        usage: The right and the wrong call, with ``{0}`` for the function's name.
        expected: What the parameter takes.
    """
    if inspect.iscoroutine(value):
        name = value.__name__
        value.close()
        return TypeError(
            f"{where}: expected {expected}, got a coroutine object ({name}(...) was"
            f" called already); pass the function, not its call: {usage.format(name)}"
        )
    return TypeError(f"{where}: expected {expected}, got {value!r}")


def _not_awaitable(owner: str, fn: object, result: object) -> TypeError:
    name = getattr(fn, "__qualname__", repr(fn))
    if inspect.isasyncgen(result):
        return TypeError(_ASYNC_GENERATOR.format(f"{owner}.call()", name))
    return TypeError(
        f"{owner}.call(fn=...): {name} returned {type(result).__name__} {result!r:.60},"
        " which can't be awaited; pass an async function (or a callable returning an"
        " awaitable). It ran once and is not called again in this call."
    )
