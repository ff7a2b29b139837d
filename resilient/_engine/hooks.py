"""
Which hooks hear a policy, and how: call listeners and event hooks.

Every observed call reports its start and its end. A plain hook hears them as events
(`CallStarted`, `CallSucceeded`, `CallFailed`, `CallCancelled`), which costs building a
frozen event per layer per call. A hook that defines ``listen_calls(policy)`` hears them
instead through a `CallListener` it binds to each policy once: two method calls and no
event objects, which is what lets the Prometheus and OpenTelemetry integrations stay
near free on the happy path. Decisions (retries, rejections, ...) are rare and stay
events for every hook.

A policy keeps a `Plan`: who hears what, built on its first observed call and thrown
away when a hook is added to it or removed, or a global one is: every policy that has a
plan is known here (weakly) for that. So a call reads one attribute to know whom to
tell, and checks nothing else.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

from .events import CallCancelled, CallFailed, CallStarted, CallSucceeded, Event, Hook

if TYPE_CHECKING:
    from .policy import Policy

__all__ = ["CallListener", "add_hook", "remove_hook"]

_log = logging.getLogger("resilient")

_CALL_EVENTS: Final = (CallStarted, CallSucceeded, CallFailed, CallCancelled)

NOT_STARTED: Final = object()
"""The token of a listener whose `call_started` raised or returned None: no end for it."""


@runtime_checkable
class CallListener(Protocol):
    """
    Hears one policy's calls as a start and an end, without event objects.

    A hook opts in by defining ``listen_calls(policy) -> CallListener | None``; the
    policy then never builds call events for that hook. ``listen_calls`` runs once per
    policy (again after hooks change) and may return None to ignore the policy.

    `call_ended` is required. `call_started` is optional: define it to get a token
    (e.g. a span) back in `call_ended`, or to return None when this call is of no
    interest (its end is then not reported, and the call costs the policy one method
    call); without it the token is None and the start costs nothing. Both run in the
    task of the call, `call_started` right before the call and `call_ended` right after
    it. Either may raise: the error is logged and the call goes on (a raising
    `call_started` skips its `call_ended`).
    """

    def call_ended(self, token: Any, duration: float, error: BaseException | None) -> None:
        """
        A call left the policy.

        Args:
            token: What `call_started` returned (never None), or None without one.
            duration: Seconds spent inside the policy (the policy clock's).
            error: None on success; an `asyncio.CancelledError` when the call was
                cancelled; else the exception that left the policy (its own
                rejections and timeouts included).
        """


class Plan:
    """
    Who hears one policy (internal).

    The call listeners, the call-event hooks, and per event type the hooks that want it.

    Attributes:
        sole_end: The `call_ended` of the only party interested in calls, when that is one
            listener (the fast path); None otherwise.
        sole_start: Its `call_started`, if it has one.
        listeners: Every listener's (call_started or None, call_ended), hook order.
        on_start, on_success, on_failure, on_cancel: The event hooks wanting each call
            event.
        any_call: Whether anybody hears calls at all.
    """

    __slots__ = (
        "_events",
        "_hooks",
        "any_call",
        "listeners",
        "on_cancel",
        "on_failure",
        "on_start",
        "on_success",
        "sole_end",
        "sole_start",
    )

    def __init__(self, hooks: tuple[Hook, ...], policy: Policy | None) -> None:
        self._hooks = hooks
        self._events: dict[type[Event], tuple[Hook, ...]] = {}
        listeners: list[tuple[Any, Any]] = []
        event_hooks: list[Hook] = []
        for hook in hooks:
            # Looked up on the class: a Mock or proxy hook answers any attribute, and
            # must not be taken for a listener and lose its call events.
            if getattr(type(hook), "listen_calls", None) is None:
                event_hooks.append(hook)
            elif policy is not None:
                listener = _bind(hook, hook.listen_calls, policy)  # type: ignore[attr-defined]
                if listener is not None:
                    listeners.append((getattr(listener, "call_started", None), listener.call_ended))
        self.listeners: tuple[tuple[Any, Any], ...] = tuple(listeners)
        self.on_start, self.on_success, self.on_failure, self.on_cancel = (
            _wanting(event_hooks, event_type) for event_type in _CALL_EVENTS
        )
        call_hooks = self.on_start or self.on_success or self.on_failure or self.on_cancel
        self.any_call = bool(self.listeners or call_hooks)
        sole = self.listeners[0] if len(self.listeners) == 1 and not call_hooks else None
        self.sole_start = None if sole is None else sole[0]
        self.sole_end = None if sole is None else sole[1]

    def wanting(self, event_type: type[Event]) -> tuple[Hook, ...]:
        """
        The hooks that want events of `event_type` (a decision; not call events).
        """
        hooks = self._events.get(event_type)
        if hooks is None:
            hooks = self._events[event_type] = _wanting(self._hooks, event_type)
        return hooks


def _bind(hook: Hook, listen: Any, policy: Policy) -> CallListener | None:
    try:
        listener = listen(policy)
    except Exception:  # noqa: BLE001  # a broken hook must not break the policy it observes
        _log.exception("resilient: hook %r failed to listen to %r", hook, policy)
        return None
    if listener is not None and not callable(getattr(listener, "call_ended", None)):
        _log.error("resilient: %r.listen_calls gave %r, which has no call_ended", hook, listener)
        return None
    return listener  # type: ignore[no-any-return]  # checked above


def _wanting(hooks: tuple[Hook, ...] | list[Hook], event_type: type[Event]) -> tuple[Hook, ...]:
    return tuple(
        hook
        for hook in hooks
        if (types := getattr(hook, "event_types", None)) is None or event_type in types
    )


def log_listener_failure(listener: Any, what: str) -> None:
    """
    Log a listener that raised (from inside the except block that caught it).
    """
    _log.exception("resilient: call listener %r failed in %s", listener, what)


STALE: Final = Plan((), None)
"""The plan of a policy that must build its plan anew before its next call."""

# A list, not a tuple, mutated in place: policies hold no copy, so a hook added after a
# policy was built still sees its events.
_GLOBAL_HOOKS: list[Hook] = []
# Every policy holding a plan, so a change to the global hooks can throw the plans away.
_PLANNED: weakref.WeakSet[Policy] = weakref.WeakSet()
_LOCK = threading.Lock()  # policies on several threads' loops may plan at once
# Bumped under the lock by every change to any hooks: a plan built across a change is
# not kept.
_GENERATION: list[int] = [0]


def plan_of(policy: Policy) -> Plan:
    """
    Build the plan of `policy` and keep it there, unless hooks changed meanwhile (internal).

    A hook added or removed on another thread while the plan is built must not be
    overwritten by it: the plan is kept only if no change happened since its hooks were
    read. Otherwise it serves this one call and the next one builds afresh.
    """
    with _LOCK:
        generation = _GENERATION[0]
        _PLANNED.add(policy)
    plan = Plan(_distinct((*policy._hooks, *_GLOBAL_HOOKS)), policy)  # noqa: SLF001  # see STALE
    with _LOCK:
        if generation == _GENERATION[0]:
            policy._plan = plan  # noqa: SLF001
    return plan


def _distinct(hooks: tuple[Hook, ...]) -> tuple[Hook, ...]:
    # A hook given twice (the policy's own and installed too, or added twice) hears each
    # event once: heard twice, a tracer would count every retry twice. Equal hooks are
    # one, as `remove_hook` takes them (`obj.method` is a new bound method each time).
    kept: list[Hook] = []
    for hook in hooks:
        if hook not in kept:
            kept.append(hook)
    return hooks if len(kept) == len(hooks) else tuple(kept)


def forget_plan(policy: Policy) -> None:
    """
    Make `policy` build its plan afresh: its own hooks changed (internal).
    """
    with _LOCK:
        _GENERATION[0] += 1
        policy._plan = STALE  # noqa: SLF001  # the policy's plan is this module's business


def _forget_plans() -> None:
    with _LOCK:
        _GENERATION[0] += 1
        planned = list(_PLANNED)
        _PLANNED.clear()
        for policy in planned:
            policy._plan = STALE  # noqa: SLF001  # see forget_plan


def add_hook(hook: Hook) -> Callable[[], None]:
    """
    Send every policy's events to `hook`.

    Args:
        hook: A callable taking one `Event`; its return value is ignored. It may also
            define ``listen_calls(policy)`` to hear calls as a `CallListener`.

    Returns:
        A function that removes the hook again.
    """
    if not callable(hook):
        raise TypeError(f"add_hook(hook=...): expected a callable, got {hook!r}")
    _GLOBAL_HOOKS.append(hook)
    _forget_plans()
    return lambda: remove_hook(hook)


def remove_hook(hook: Hook) -> None:
    """
    Stop sending events to a hook added with `add_hook`; a no-op if it is not there.
    """
    with contextlib.suppress(ValueError):
        _GLOBAL_HOOKS.remove(hook)
    _forget_plans()


def global_hooks() -> list[Hook]:
    """
    Return the live list of global hooks (internal; do not mutate).
    """
    return _GLOBAL_HOOKS
