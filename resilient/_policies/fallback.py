"""
Fallback: answer with a value, or a handler's answer, when the call fails.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar, overload

from .._engine.clock import Clock
from .._engine.events import FallbackUsed, Hook
from .._engine.policy import Args, AsyncFn, Kwargs, Policy
from .._engine.validate import error_matcher

__all__ = ["Fallback", "FallbackStatistics"]

T = TypeVar("T")
R = TypeVar("R")  # the fallback's own answer
P = ParamSpec("P")
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class FallbackStatistics:
    """
    A snapshot of a `Fallback`: calls made and how many were answered by the fallback.
    """

    calls: int
    fallbacks: int


class Fallback(Policy, Generic[R]):
    """
    Replace a failure with a value, or with what `handler(error)` returns.

    Typed by its answer: ``Fallback(value=None).call(fetch)`` is ``T | None`` when
    ``fetch`` returns ``T``.

    Args:
        value: The answer to give when the call fails.
        handler: Called with the exception instead; may be sync or async. Exactly one of
            `value` and `handler` must be given.
        on: Exception types, or a predicate over the exception, that the fallback
            answers (default: any `Exception` but a programming error, see
            `PROGRAMMING_ERRORS`; name one, ``on=(OSError, TypeError)``, or pass a
            predicate to answer it too). Anything else propagates, and
            `asyncio.CancelledError` always does.
        name: A label for events and metrics (default ``"fallback"``).
        clock: Time source (default: the system clock).
        hooks: Event hooks for this policy only.

    Raises:
        ValueError: Neither or both of `value` and `handler` were given.
    """

    kind = "fallback"
    __slots__ = ("_calls", "_fallbacks", "_handler", "_on", "_value")

    @overload
    def __init__(
        self: Fallback[R],
        value: R,
        *,
        on: Any = ...,
        name: str | None = ...,
        clock: Clock | None = ...,
        hooks: Iterable[Hook] | None = ...,
    ) -> None: ...

    @overload
    def __init__(
        self: Fallback[R],
        *,
        handler: Callable[[BaseException], Awaitable[R]],
        on: Any = ...,
        name: str | None = ...,
        clock: Clock | None = ...,
        hooks: Iterable[Hook] | None = ...,
    ) -> None: ...

    @overload
    def __init__(
        self: Fallback[R],
        *,
        handler: Callable[[BaseException], R],
        on: Any = ...,
        name: str | None = ...,
        clock: Clock | None = ...,
        hooks: Iterable[Hook] | None = ...,
    ) -> None: ...

    def __init__(
        self,
        value: Any = _MISSING,
        *,
        handler: Callable[[BaseException], Any] | None = None,
        on: Any = Exception,
        name: str | None = None,
        clock: Clock | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        super().__init__(name=name, clock=clock, hooks=hooks)
        if (value is _MISSING) == (handler is None):
            raise ValueError("Fallback(value=..., handler=...): give exactly one of them")
        if handler is not None and not callable(handler):
            raise TypeError(f"Fallback(handler=...): expected a callable, got {handler!r}")
        self._value = value
        self._handler = handler
        self._on = error_matcher("Fallback", "on", on, spare_programming_errors=True)
        self._calls = 0
        self._fallbacks = 0

    if TYPE_CHECKING:
        # The same methods as Policy's, typed with the fallback's answer: a Fallback
        # widens the result, which is why they override it (and only for the checker:
        # at run time Policy's own run, with no extra frame).

        def __call__(  # type: ignore[override]
            self, fn: Callable[P, Awaitable[T]]
        ) -> Callable[P, Coroutine[Any, Any, T | R]]: ...

        async def call(  # type: ignore[override]
            self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
        ) -> T | R: ...

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        self._calls += 1
        try:
            return await fn(*args, **kwargs)
        except Exception as error:
            if not self._on(error):
                raise
            return await self._answer(error)  # type: ignore[no-any-return]  # the user's answer

    async def _answer(self, error: Exception) -> Any:
        self._fallbacks += 1
        if self._listening(FallbackUsed):
            self._emit(FallbackUsed, error=error)
        if self._handler is None:
            return self._value
        answer = self._handler(error)
        if inspect.isawaitable(answer):
            answer = await answer
        return answer

    def statistics(self) -> FallbackStatistics:
        """
        Return a snapshot of this policy's counters.
        """
        return FallbackStatistics(calls=self._calls, fallbacks=self._fallbacks)

    def __repr__(self) -> str:
        answer = (
            f"handler={self._handler!r}" if self._handler is not None else f"value={self._value!r}"
        )
        return f"<Fallback {self.name!r} {answer} calls={self._calls} fallbacks={self._fallbacks}>"
