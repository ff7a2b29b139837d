"""
The contract every policy shares: a decorator, `.call(fn, *args, **kwargs)`, hooks.

A policy implements one method, `_run(fn, args, kwargs)`, which awaits
`fn(*args, **kwargs)` as often as its logic says (a fresh awaitable each time).
Everything else (decorating, pipeline layers, call events, hooks, naming, decision
logging) lives here once. Call events are only built while someone listens, so the
unobserved happy path is the decorator's frame plus one `_run` frame.

A policy without ``name=`` that decorates a function is named after it
(``module.qualname``, as stamina's instrumentation names its callables), so the metrics,
spans, events and logs of different functions don't merge under ``retry``. Decorating a
second function with the same unnamed policy gives it back its kind's name: its state and
counters are shared by both, so no one function's name would be true of it.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from types import FunctionType
from typing import Any, ClassVar, ParamSpec, TypeAlias, TypeVar

from .callables import awaitable_checked, check_async, label, not_callable, returns_coroutine
from .clock import Clock
from .events import (
    CallCancelled,
    CallFailed,
    CallStarted,
    CallSucceeded,
    Event,
    Hook,
    deliver,
    maker,
)
from .hooks import (
    NOT_STARTED,
    STALE,
    Plan,
    forget_plan,
    global_hooks,
    log_listener_failure,
    plan_of,
)
from .logging import DecisionLog, decision_log, level_of
from .validate import check_clock, check_hooks, check_name

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
_CO_COROUTINE = inspect.CO_COROUTINE
_UNVETTED: Any = object()
# `_named_after` of a policy whose name no decoration changes: given by the user, or
# already shared by two functions.
_FIXED = "\x00fixed"


class Policy(ABC):
    """
    Base of every policy: decorate an async function with it, or `await policy.call(...)`.

    Subclasses implement `_run`; they get `name`, `clock`, hooks and call events from here.
    """

    kind: ClassVar[str] = "policy"
    _decisions: ClassVar[DecisionLog] = decision_log(kind)
    _run_is_async: ClassVar[bool] = False
    __slots__ = (
        "__weakref__",
        "_clock",
        "_hooks",
        "_monotonic",
        "_named_after",
        "_plan",
        "_vetted",
        "name",
    )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._decisions = decision_log(cls.kind)  # per kind, found without a lookup
        # Whether `_run` is an ``async def``: `call` then hands back its coroutine itself.
        cls._run_is_async = inspect.iscoroutinefunction(cls._run)

    def __init__(
        self,
        *,
        name: str | None,
        clock: Clock | None,
        hooks: Iterable[Hook] | None,
    ) -> None:
        owner = type(self).__name__
        self.name: str = check_name(owner, name, self.kind)
        # None: unnamed and not yet decorating; a label: named after that function.
        self._named_after: str | None = None if name is None else _FIXED
        self._clock: Clock = check_clock(owner, clock)
        self._monotonic = self._clock.monotonic  # looked up once: read twice per call
        self._hooks: tuple[Hook, ...] = check_hooks(owner, hooks)
        # Who hears this policy, and how; rebuilt when any hook set changes.
        self._plan: Plan = STALE
        # The last function `.call` found to be an `async def`: calling it again skips
        # even the code-flags check (an identity test instead of ~100 ns).
        self._vetted: object = _UNVETTED

    @property
    def clock(self) -> Clock:
        """
        The clock this policy reads time from.
        """
        return self._clock

    def __repr__(self) -> str:
        # A user's policy that defines no repr of its own still reads like the built-in
        # ones (which override this with live state) in a pipeline's repr and in logs.
        return f"<{type(self).__name__} {self.name!r}>"

    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """
        Decorate an async function so that every call goes through this policy.

        A policy made without ``name=`` takes the function's name (``module.qualname``)
        the first time; decorating another function gives it back its kind's name.

        Raises:
            TypeError: `fn` is a plain (non-async) function or an async generator
                function.
        """
        check_async(type(self).__name__, fn)
        self._name_after(fn)
        return functools.wraps(fn)(self._guard(fn))

    @returns_coroutine
    def call(
        self, fn: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs
    ) -> Coroutine[Any, Any, T]:
        """
        Run `fn(*args, **kwargs)` through this policy and return its result.

        Returns the coroutine to await, as an ``async def`` would: the policy's own when
        it has one (no coroutine of `call` around it, so every I/O wait of `fn` resumes
        through one frame less). Nothing runs until it is awaited.

        Raises:
            TypeError: `fn` is not callable, or returned something that can't be awaited
                (a plain function's result, an async generator): raised on the first
                attempt and, as a programming error, not retried; `fn` is not called
                again within the call.
        """
        if fn is not self._vetted:
            fn = self._vet(fn)
        if self._hooks or _GLOBAL_HOOKS:
            return self._observe(fn, args, kwargs)
        if self._run_is_async:
            return self._run(fn, args, kwargs)  # type: ignore[return-value]  # a coroutine
        # A plain `_run` decides at call time (a rate limiter takes its permit): it runs
        # when the call is awaited, as from an ``async def call``.
        return self._run_awaited(fn, args, kwargs)

    def runner(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        """
        Return a function running `fn` through this policy, as `.call` would.

        ``run = policy.runner(fn)``, then ``await run(*args)`` is ``await policy.call(fn,
        *args)``: for a caller running one function call after call (the aiohttp
        middleware does for every request). For a single policy it is `.call` with `fn`
        bound; a pipeline's (`Pipeline.runner`) also does `.call`'s per-function work
        once. Unlike decorating `fn`, it names no policy after `fn`.

        Raises:
            TypeError: `fn` is not callable (a coroutine object, ``fetch(x)`` where
                ``fetch`` was meant, is closed and the message shows the right call).
        """
        if not callable(fn):
            raise not_callable(
                f"{type(self).__name__}.runner(fn=...)",
                fn,
                "policy.runner({0}), not policy.runner({0}(...))",
            )
        return functools.partial(self.call, fn)

    async def _run_awaited(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        return await self._run(fn, args, kwargs)

    def _vet(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
        """
        Return `fn` if it is an `async def`, else `fn` wrapped to check what it returns.
        """
        code = getattr(fn, "__code__", None)
        if code is None or not code.co_flags & _CO_COROUTINE:
            return awaitable_checked(type(self).__name__, fn)
        if type(fn) is FunctionType and fn.__closure__ is None:
            # Remembered only when holding it keeps nothing else alive: not a bound
            # method (its instance) nor a closure (its cells, e.g. a request's data).
            self._vetted = fn
        return fn

    def _guard(self, fn: AsyncFn[T]) -> Callable[..., Coroutine[Any, Any, T]]:
        # The decorator's wrapper. The observer check is inlined: this frame is the
        # whole per-call cost of the contract, so it stays as small as hyx's and smaller
        # than a partial + method. It holds the policy, not its bound methods: calling
        # `policy._run(...)` costs no more (no bound method is built) and each bound
        # method held was ~100 bytes per decorated function.
        policy = self

        async def guarded(*args: Any, **kwargs: Any) -> T:
            if policy._hooks or _GLOBAL_HOOKS:  # our own instance
                return await policy._observe(fn, args, kwargs)
            return await policy._run(fn, args, kwargs)

        return guarded

    def _bind(self, inner: AsyncFn[T]) -> AsyncFn[T]:
        """
        Wrap `inner` in this policy as one layer of a pipeline.

        The layer is a plain function returning the policy's awaitable (holding the
        policy, not its bound methods, as `_guard` says).
        """
        policy = self

        def layer(*args: Any, **kwargs: Any) -> Awaitable[T]:
            if policy._hooks or _GLOBAL_HOOKS:  # our own instance
                return policy._observe(inner, args, kwargs)
            return policy._run(inner, args, kwargs)

        return layer

    def add_hook(self, hook: Hook) -> Callable[[], None]:
        """
        Send this policy's events to `hook` as well.

        Returns:
            A function that removes the hook again.
        """
        (checked,) = check_hooks(type(self).__name__, (hook,))
        self._hooks = (*self._hooks, checked)
        forget_plan(self)
        return lambda: self.remove_hook(checked)

    def remove_hook(self, hook: Hook) -> None:
        """
        Stop sending this policy's events to `hook`; a no-op if it was not added.
        """
        # Equality, not identity: `obj.method` is a new bound method on every access.
        self._hooks = tuple(h for h in self._hooks if h != hook)
        forget_plan(self)

    @abstractmethod
    def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> Awaitable[T]:
        """
        Apply the policy: await `fn(*args, **kwargs)` as often as its logic says.
        """

    def _name_after(self, fn: object, name: str | None = None) -> None:
        """
        Take `fn`'s name if this policy has none of its own (see the module docstring).

        `name` is `label(fn)` when the caller knows it: the policies of a pipeline share
        one string.
        """
        named_after = self._named_after
        if named_after == _FIXED:
            return
        if name is None:
            name = label(fn)
        if name is None or name == named_after:
            return
        if named_after is None:
            self.name, self._named_after = name, name
        else:  # a second function: shared state gets the shared, default name
            self.name, self._named_after = self.kind, _FIXED
        forget_plan(self)  # listeners bound the old name

    def _listening(self, event_type: type[Event] | None = None) -> bool:
        # Asked on decision paths only: is there anyone to tell, hooks or a log? Naming
        # the event lets a DEBUG decision skip the work while only WARNING is on.
        if self._hooks or _GLOBAL_HOOKS:
            return True
        log = self._decisions  # inlined DecisionLog.wanted: this is every decision's cost
        return log.enabled(log.levels.get(event_type, log.loudest))

    def _current_plan(self) -> Plan:
        plan = self._plan
        if plan is STALE:
            plan = plan_of(self)
        return plan

    def _emit(self, event_type: type[Event], /, **fields: Any) -> None:
        # Building the event is the cost: only when some hook wants this type, or the
        # decision's logger is on for its level.
        hooks = self._current_plan().wanting(event_type) if self._hooks or _GLOBAL_HOOKS else ()
        log = self._decisions
        level = level_of(event_type, fields)
        if level is not None and not log.logger.isEnabledFor(level):
            level = None  # not logged at this level now
        if hooks or level is not None:
            now = self._clock.monotonic()
            event = event_type(kind=self.kind, name=self.name, time=now, **fields)
            if hooks:
                deliver(hooks, event)
            if level is not None:
                log.write(level, event)

    async def _observe(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        # Every observed call of every layer runs this, so the common case (one hook
        # hearing calls, as a listener: Prometheus or OpenTelemetry) is written out:
        # two clock reads, one or two method calls, no event objects, no checks (a stale
        # plan has no sole listener). A call_started that returns None wants no end:
        # the inner layers of a traced pipeline cost one method call. The plan is read
        # once, up front, so a call's end goes to whoever heard its start: a hook added
        # or removed mid-call never sees half a call.
        plan = self._plan
        ended = plan.sole_end
        if ended is None:
            return await self._observe_all(fn, args, kwargs)
        token = None
        start = plan.sole_start
        if start is not None:
            try:
                token = start()
            except Exception:  # noqa: BLE001  # observing a call must never break it
                log_listener_failure(start, "call_started")
            if token is None:  # this call is of no interest to it (or it broke)
                return await self._run(fn, args, kwargs)
        monotonic = self._monotonic
        began = monotonic()
        try:
            result = await self._run(fn, args, kwargs)
        except BaseException as error:
            try:
                ended(token, monotonic() - began, error)
            except Exception:  # noqa: BLE001  # see above
                log_listener_failure(ended, "call_ended")
            raise
        try:
            ended(token, monotonic() - began, None)
        except Exception:  # noqa: BLE001  # see above
            log_listener_failure(ended, "call_ended")
        return result

    async def _observe_all(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        # Everything but the fast path: a stale plan, several listeners, hooks that want
        # call events, or nobody hearing calls. Event hooks hear the start before the
        # listeners and the end after them, and listeners end in reverse: nested like
        # context managers, so an event hook still sees a listener's span current.
        plan = self._plan
        if plan is STALE:
            plan = self._current_plan()
        if not plan.any_call:
            return await self._run(fn, args, kwargs)
        monotonic, kind, name = self._monotonic, self.kind, self.name
        if plan.on_start:
            deliver(plan.on_start, _new_started(kind, name, monotonic()))
        tokens = [_start(start) for start, _ in plan.listeners] if plan.listeners else None
        began = monotonic()  # after the listeners' starts, as on the fast path
        try:
            result = await self._run(fn, args, kwargs)
        except asyncio.CancelledError as error:
            now = monotonic()
            if plan.on_cancel:
                deliver(plan.on_cancel, _new_cancelled(kind, name, now, now - began))
            _end(plan, tokens, now - began, error)
            raise
        except BaseException as error:
            now = monotonic()
            if plan.on_failure:
                deliver(plan.on_failure, _new_failed(kind, name, now, now - began, error))
            _end(plan, tokens, now - began, error)
            raise
        now = monotonic()
        if plan.on_success:
            deliver(plan.on_success, _new_succeeded(kind, name, now, now - began))
        _end(plan, tokens, now - began, None)
        return result


def _start(start: Any) -> Any:
    if start is None:
        return None  # a listener without call_started hears every end, token None
    try:
        token = start()
    except Exception:  # noqa: BLE001  # observing a call must never break it
        log_listener_failure(start, "call_started")
        return NOT_STARTED
    return NOT_STARTED if token is None else token


def _end(
    plan: Plan, tokens: list[Any] | None, duration: float, error: BaseException | None
) -> None:
    if tokens is None:
        return
    for (_, ended), token in zip(reversed(plan.listeners), reversed(tokens), strict=True):
        if token is not NOT_STARTED:
            try:
                ended(token, duration, error)
            except Exception:  # noqa: BLE001  # see above
                log_listener_failure(ended, "call_ended")
