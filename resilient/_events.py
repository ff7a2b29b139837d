"""
Typed events for every decision a policy makes, and the hooks that receive them.

A hook is any callable taking one `Event`. Hooks are registered globally with
`add_hook` or per policy (`hooks=` or `policy.add_hook`). Events are only built when at
least one hook would receive them, so an unobserved policy pays nothing for them. A hook
that raises is logged and skipped: observing a call must never break it.

The Prometheus and OpenTelemetry integrations are hook consumers.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

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
    "add_hook",
    "remove_hook",
]

_log = logging.getLogger("resilient")


class RejectionReason(enum.Enum):
    """
    Why a policy refused to run a call (or a retry).
    """

    CIRCUIT_OPEN = "circuit_open"
    BULKHEAD_FULL = "bulkhead_full"
    RETRY_BUDGET = "retry_budget"


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """
    Fields every event carries.

    Attributes:
        kind: The policy's kind: ``"retry"``, ``"circuit_breaker"``, ``"bulkhead"``,
            ``"timeout"``, ``"fallback"`` or ``"hedge"``.
        name: The policy's name (a low-cardinality label).
        time: The policy clock's monotonic time when the event happened.
    """

    kind: str
    name: str
    time: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStarted(Event):
    """
    A call entered the policy.
    """


@dataclass(frozen=True, slots=True, kw_only=True)
class CallSucceeded(Event):
    """
    A call left the policy with a result.

    Attributes:
        duration: Seconds spent inside the policy.
    """

    duration: float


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


@dataclass(frozen=True, slots=True, kw_only=True)
class CallCancelled(Event):
    """
    A call was cancelled while inside the policy; not a failure of the dependency.

    Attributes:
        duration: Seconds spent inside the policy.
    """

    duration: float


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Rejected(Event):
    """
    A policy refused a call or a retry.

    Attributes:
        reason: Why.
    """

    reason: RejectionReason


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


@dataclass(frozen=True, slots=True, kw_only=True)
class TimedOut(Event):
    """
    A timeout cancelled the call it guarded.

    Attributes:
        timeout: The budget in seconds that ran out.
    """

    timeout: float


@dataclass(frozen=True, slots=True, kw_only=True)
class HedgeSent(Event):
    """
    A hedged attempt was started because the earlier ones were slow or failed.

    Attributes:
        attempt: The number of the attempt started (2 for the first hedge).
    """

    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FallbackUsed(Event):
    """
    A fallback answered in place of a failed call.

    Attributes:
        error: The exception the fallback replaced.
    """

    error: BaseException


Hook: TypeAlias = Callable[[Event], object]

# A list, not a tuple, mutated in place: policies hold no copy, so a hook added after a
# policy was built still sees its events.
_GLOBAL_HOOKS: list[Hook] = []


def add_hook(hook: Hook) -> Callable[[], None]:
    """
    Send every policy's events to `hook`.

    Args:
        hook: A callable taking one `Event`; its return value is ignored.

    Returns:
        A function that removes the hook again.
    """
    if not callable(hook):
        raise TypeError(f"add_hook(hook=...): expected a callable, got {hook!r}")
    _GLOBAL_HOOKS.append(hook)
    return lambda: remove_hook(hook)


def remove_hook(hook: Hook) -> None:
    """
    Stop sending events to a hook added with `add_hook`; a no-op if it is not there.
    """
    with contextlib.suppress(ValueError):
        _GLOBAL_HOOKS.remove(hook)


def global_hooks() -> list[Hook]:
    """
    Return the live list of global hooks (internal; do not mutate).
    """
    return _GLOBAL_HOOKS


def dispatch(hooks: tuple[Hook, ...], event: Event) -> None:
    """
    Deliver `event` to the policy's own hooks, then to the global ones.
    """
    for hook in (*hooks, *_GLOBAL_HOOKS):
        try:
            hook(event)
        except Exception:  # noqa: BLE001  # a broken hook must not break the call it observes
            _log.exception("resilient: hook %r failed on %r", hook, event)
