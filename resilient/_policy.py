"""
The contract every policy shares: a decorator, `.call(fn, *args, **kwargs)`, hooks.

A policy implements one method, `_run(fn, args, kwargs)`, which awaits
`fn(*args, **kwargs)` as often as its logic says (a fresh awaitable each time).
Everything else (decorating, pipeline layers, call events, hooks) lives here once. Call
events are only built while someone listens, so the unobserved happy path is the
decorator's frame plus one `_run` frame.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any, ClassVar, ParamSpec, TypeAlias, TypeVar

from ._clock import Clock
from ._events import (
    CallCancelled,
    CallFailed,
    CallStarted,
    CallSucceeded,
    Event,
    Hook,
    deliver,
    global_hooks,
    global_version,
    hooks_wanting,
    maker,
)
from ._validate import check_clock, check_hooks, check_name

__all__ = ["Args", "AsyncFn", "Kwargs", "Policy"]

T = TypeVar("T")
P = ParamSpec("P")
AsyncFn: TypeAlias = Callable[..., Awaitable[T]]
Args: TypeAlias = tuple[Any, ...]
Kwargs: TypeAlias = dict[str, Any]

_GLOBAL_HOOKS = global_hooks()
_new_started = maker(CallStarted)
_new_succeeded = maker(CallSucceeded)
_new_failed = maker(CallFailed)
_new_cancelled = maker(CallCancelled)


class Policy(ABC):
    """
    Base of every policy: decorate an async function with it, or `await policy.call(...)`.

    Subclasses implement `_run`; they get `name`, `clock`, hooks and call events from here.
    """

    kind: ClassVar[str] = "policy"
    __slots__ = ("_clock", "_hooks", "_plan_version", "_plans", "name")

    def __init__(
        self,
        *,
        name: str | None,
        clock: Clock | None,
        hooks: Iterable[Hook] | None,
    ) -> None:
        owner = type(self).__name__
        self.name: str = check_name(owner, name, self.kind)
        self._clock: Clock = check_clock(owner, clock)
        self._hooks: tuple[Hook, ...] = check_hooks(owner, hooks)
        # Per event type, the hooks that want it; rebuilt when any hook set changes.
        self._plans: dict[type[Event], tuple[Hook, ...]] = {}
        self._plan_version = -1

    @property
    def clock(self) -> Clock:
        """
        The clock this policy reads time from.
        """
        return self._clock

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """
        Decorate an async function so that every call goes through this policy.

        Raises:
            TypeError: `fn` is a plain (non-async) function.
        """
        _check_async(self, fn)
        return functools.wraps(fn)(self._guard(fn))

    async def call(self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """
        Run `fn(*args, **kwargs)` through this policy and return its result.
        """
        if self._hooks or _GLOBAL_HOOKS:
            return await self._observe(fn, args, kwargs)
        return await self._run(fn, args, kwargs)

    def _guard(self, fn: AsyncFn[T]) -> Callable[..., Coroutine[Any, Any, T]]:
        # The decorator's wrapper. Bound methods are looked up once here and the
        # observer check is inlined: this frame is the whole per-call cost of the
        # contract, so it stays as small as hyx's and smaller than a partial + method.
        run, observe, policy = self._run, self._observe, self

        async def guarded(*args: Any, **kwargs: Any) -> T:
            if policy._hooks or _GLOBAL_HOOKS:  # our own instance
                return await observe(fn, args, kwargs)
            return await run(fn, args, kwargs)

        return guarded

    def _bind(self, inner: AsyncFn[T]) -> AsyncFn[T]:
        """
        Wrap `inner` in this policy as one layer of a pipeline.

        The layer is a plain function returning the policy's awaitable.
        """
        run, observe, policy = self._run, self._observe, self

        def layer(*args: Any, **kwargs: Any) -> Awaitable[T]:
            if policy._hooks or _GLOBAL_HOOKS:  # our own instance
                return observe(inner, args, kwargs)
            return run(inner, args, kwargs)

        return layer

    def add_hook(self, hook: Hook) -> Callable[[], None]:
        """
        Send this policy's events to `hook` as well.

        Returns:
            A function that removes the hook again.
        """
        (checked,) = check_hooks(type(self).__name__, (hook,))
        self._hooks = (*self._hooks, checked)
        self._plans.clear()
        return lambda: self.remove_hook(checked)

    def remove_hook(self, hook: Hook) -> None:
        """
        Stop sending this policy's events to `hook`; a no-op if it was not added.
        """
        # Equality, not identity: `obj.method` is a new bound method on every access.
        self._hooks = tuple(h for h in self._hooks if h != hook)
        self._plans.clear()

    @abstractmethod
    def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> Awaitable[T]:
        """
        Apply the policy: await `fn(*args, **kwargs)` as often as its logic says.
        """

    def _listening(self) -> bool:
        return bool(self._hooks or _GLOBAL_HOOKS)

    def _hooks_for(self, event_type: type[Event]) -> tuple[Hook, ...]:
        version = global_version()
        if version != self._plan_version:
            self._plans.clear()
            self._plan_version = version
        hooks = self._plans.get(event_type)
        if hooks is None:
            hooks = self._plans[event_type] = hooks_wanting(self._hooks, event_type)
        return hooks

    def _emit(self, event_type: type[Event], /, **fields: Any) -> None:
        # Building the event is the cost: only when some hook wants this type.
        hooks = self._hooks_for(event_type)
        if hooks:
            deliver(
                hooks,
                event_type(kind=self.kind, name=self.name, time=self._clock.monotonic(), **fields),
            )

    async def _observe(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        # Every observed call runs this, so the call events are built with their
        # positional constructors and the hook plans are read once, up front. Up front
        # also means a call's end event goes to the hooks that were there when it
        # started: a hook added or removed mid-call never sees half a call.
        clock, kind, name = self._clock, self.kind, self.name
        hooks_for = self._hooks_for
        on_start, on_success = hooks_for(CallStarted), hooks_for(CallSucceeded)
        on_failure, on_cancel = hooks_for(CallFailed), hooks_for(CallCancelled)
        started = clock.monotonic()
        if on_start:
            deliver(on_start, _new_started(kind, name, started))
        try:
            result = await self._run(fn, args, kwargs)
        except asyncio.CancelledError:
            if on_cancel:
                now = clock.monotonic()
                deliver(on_cancel, _new_cancelled(kind, name, now, now - started))
            raise
        except BaseException as error:
            if on_failure:
                now = clock.monotonic()
                deliver(on_failure, _new_failed(kind, name, now, now - started, error))
            raise
        if on_success:
            now = clock.monotonic()
            deliver(on_success, _new_succeeded(kind, name, now, now - started))
        return result


def _check_async(policy: Policy, fn: object) -> None:
    if inspect.isfunction(fn) and not inspect.iscoroutinefunction(fn):
        raise TypeError(
            f"{type(policy).__name__} decorates async functions; {fn.__qualname__} is"
            " not 'async def'"
        )
