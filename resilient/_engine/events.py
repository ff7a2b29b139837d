"""
Typed events for every decision a policy makes, and the hooks that receive them.

A hook is any callable taking one `Event`. Hooks are registered globally with
`add_hook` or per policy (`hooks=` or `policy.add_hook`); the `hooks` module keeps track of who
hears whom. A hook may narrow what it receives with an ``event_types`` attribute (the
`Event` classes it wants). An event is only built when some hook wants it, so an
unobserved policy pays nothing for events, and a metrics hook that ignores `CallStarted`
doesn't pay for building it. A hook that raises is logged and skipped: observing a call
must never break it.

The Prometheus and OpenTelemetry integrations are hook consumers; they hear calls as
`CallListener`s (see the `hooks` module) and decisions as events.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeVar

__all__ = [
    "CallCancelled",
    "CallFailed",
    "CallStarted",
    "CallSucceeded",
    "Event",
    "FallbackUsed",
    "HedgeSent",
    "Hook",
    "Rejected",
    "RejectionReason",
    "RetryScheduled",
    "StateChanged",
    "TimedOut",
]

_log = logging.getLogger("resilient")

_E = TypeVar("_E")


def _fast_init(cls: type[_E]) -> type[_E]:
    """
    Give a frozen, slotted event dataclass a faster ``__init__``, same signature.

    A frozen dataclass's generated ``__init__`` sets each field through
    ``object.__setattr__``, which is most of an event's cost (~700 ns for four fields
    on CPython 3.11); writing through the slots' own descriptors halves it, and the
    instance stays frozen. Events are built on every observed call, so it matters.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    setters = {
        f"_set_{name}": next(k.__dict__[name] for k in cls.__mro__ if name in k.__dict__).__set__
        for name in names
    }
    params = ", ".join(names)
    body = "\n".join(f"    _set_{name}(self, {name})" for name in names)
    # Generated code, as dataclasses itself generates __init__: names are field names.
    # `_new` is the same with positional arguments and no type.__call__, for the hot
    # path in _policy (internal).
    source = (
        f"def __init__(self, *, {params}):\n{body}\n"
        f"def _new({params}):\n    self = _alloc(_cls)\n{body}\n    return self\n"
    )
    namespace: dict[str, Any] = {**setters, "_alloc": object.__new__, "_cls": cls}
    exec(source, namespace)  # noqa: S102
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init  # type: ignore[method-assign]
    _MAKERS[cls] = namespace["_new"]  # type: ignore[index]  # event classes only
    return cls


_MAKERS: dict[type[Event], Callable[..., Event]] = {}


def maker(event_type: type[_E]) -> Callable[..., _E]:
    """
    The positional constructor of an event class, fields in declaration order (internal).
    """
    return _MAKERS[event_type]  # type: ignore[index, return-value]


class RejectionReason(enum.Enum):
    """
    Why a policy refused to run a call (or a retry).
    """

    CIRCUIT_OPEN = "circuit_open"
    BULKHEAD_FULL = "bulkhead_full"
    RETRY_BUDGET = "retry_budget"
    RATE_LIMITED = "rate_limited"
    CONCURRENCY_LIMIT = "concurrency_limit"
    THROTTLED = "throttled"
    STORE_UNAVAILABLE = "store_unavailable"
    PRIORITY_SHED = "priority_shed"
    """A waiter shed for a higher-priority call, or a sheddable call refused a wait."""
    DEADLINE_EXCEEDED = "deadline_exceeded"
    """The caller's deadline passed while it waited (or before)."""
    DEADLINE_TOO_SHORT = "deadline_too_short"
    """The deadline left is shorter than the wait, or than the typical service time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """
    Fields every event carries.

    Attributes:
        kind: The policy's kind: ``"retry"``, ``"circuit_breaker"``, ``"bulkhead"``,
            ``"timeout"``, ``"fallback"``, ``"hedge"``, ``"rate_limiter"``,
            ``"adaptive_concurrency"`` or ``"adaptive_throttle"``.
        name: The policy's name (a low-cardinality label).
        time: The policy clock's monotonic time when the event happened.
    """

    kind: str
    name: str
    time: float


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CallStarted(Event):
    """
    A call entered the policy.
    """


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CallSucceeded(Event):
    """
    A call left the policy with a result.

    Attributes:
        duration: Seconds spent inside the policy.
    """

    duration: float


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CallFailed(Event):
    """
    A call left the policy with an exception (including the policy's own rejections).

    Attributes:
        duration: Seconds spent inside the policy.
        error: The exception that left the policy.
    """

    duration: float
    error: BaseException


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class CallCancelled(Event):
    """
    A call was cancelled while inside the policy; not a failure of the dependency.

    Attributes:
        duration: Seconds spent inside the policy.
    """

    duration: float


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class RetryScheduled(Event):
    """
    An attempt failed and another one will follow after `delay` seconds.

    Attributes:
        attempt: The number of the attempt that failed (1 for the first).
        delay: Seconds to wait before the next attempt.
        error: The failed attempt's exception, or None when a result was retried.
    """

    attempt: int
    delay: float
    error: BaseException | None


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected(Event):
    """
    A policy refused a call or a retry.

    Attributes:
        reason: Why.
    """

    reason: RejectionReason


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class StateChanged(Event):
    """
    A circuit breaker moved between states.

    Attributes:
        old: The state left, e.g. ``CircuitState.CLOSED``.
        new: The state entered.
    """

    old: enum.Enum
    new: enum.Enum


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class TimedOut(Event):
    """
    A timeout cancelled the call it guarded.

    Attributes:
        timeout: The budget in seconds that ran out.
    """

    timeout: float


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeSent(Event):
    """
    A hedged attempt was started because the earlier ones were slow or failed.

    Attributes:
        attempt: The number of the attempt started (2 for the first hedge).
    """

    attempt: int


@_fast_init
@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsed(Event):
    """
    A fallback answered in place of a failed call.

    Attributes:
        error: The exception the fallback replaced.
    """

    error: BaseException


Hook: TypeAlias = Callable[[Event], object]


def deliver(hooks: tuple[Hook, ...], event: Event) -> None:
    """
    Call each hook with `event`; a hook that raises is logged and skipped.
    """
    for hook in hooks:
        try:
            hook(event)
        except Exception:  # noqa: BLE001  # a broken hook must not break the call it observes
            _log.exception("resilient: hook %r failed on %r", hook, event)
