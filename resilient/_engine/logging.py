"""
Decisions logged through `logging`, on one logger per policy kind.

A policy's decisions (a retry scheduled, a breaker changing state, a rejection, a
timeout, a hedge, a fallback) go to ``resilient.<kind>`` (``resilient.retry``,
``resilient.circuit_breaker``, ...) at these levels:

    event                        level
    RetryScheduled               INFO     a retry is routine, not a warning
    StateChanged to open         WARNING  a dependency is being cut off
    StateChanged to half-open    INFO
    StateChanged to closed       INFO     recovered
    Rejected (any reason)        DEBUG    one per refused call: an outage makes many
    TimedOut                     INFO
    HedgeSent                    DEBUG    routine for a hedging policy
    FallbackUsed                 INFO     a failure was answered and so hidden

Calls themselves are never logged. The check is `Logger.isEnabledFor`, which logging
caches per level (and clears when levels change), made only on a decision's path: the
happy path pays nothing, and a decision with its level off builds no record.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, Final

from .events import (
    Event,
    FallbackUsed,
    HedgeSent,
    Rejected,
    RetryScheduled,
    StateChanged,
    TimedOut,
)

__all__ = ["DecisionLog", "decision_log", "level_of"]

# A library leaves output to the application (logging HOWTO, "Configuring Logging for a
# Library"): without this, Python's last-resort handler would print every breaker opening
# to stderr of an application that never configured logging.
logging.getLogger("resilient").addHandler(logging.NullHandler())

_FIXED_LEVELS: Final[Mapping[type[Event], int]] = {
    RetryScheduled: logging.INFO,
    Rejected: logging.DEBUG,
    TimedOut: logging.INFO,
    HedgeSent: logging.DEBUG,
    FallbackUsed: logging.INFO,
}

# How each decision reads: a %-format and its arguments, formatted only when emitted.
_MESSAGES: Final[Mapping[type[Event], tuple[str, Callable[[Any], tuple[object, ...]]]]] = {
    RetryScheduled: (
        "%s %r: attempt %d failed (%s); retrying in %.3f s",
        lambda e: (e.kind, e.name, e.attempt, _what(e.error), e.delay),
    ),
    Rejected: ("%s %r rejected a call: %s", lambda e: (e.kind, e.name, e.reason.value)),
    StateChanged: ("%s %r: %s -> %s", lambda e: (e.kind, e.name, e.old.value, e.new.value)),
    TimedOut: ("%s %r: the call timed out after %.3f s", lambda e: (e.kind, e.name, e.timeout)),
    HedgeSent: ("%s %r: started attempt %d", lambda e: (e.kind, e.name, e.attempt)),
    FallbackUsed: (
        "%s %r answered in place of a failed call (%s)",
        lambda e: (e.kind, e.name, _what(e.error)),
    ),
}


def _what(error: BaseException | None) -> str:
    return "a result was retried" if error is None else repr(error)


def level_of(event_type: type[Event], fields: Mapping[str, Any]) -> int | None:
    """
    The level a decision is logged at, or None for events that are never logged.
    """
    if event_type is StateChanged:
        # By the state's name: the engine can't import the breaker's enum.
        return logging.WARNING if fields["new"].name == "OPEN" else logging.INFO
    return _FIXED_LEVELS.get(event_type)


class DecisionLog:
    """
    The logger of one policy kind, and the level each decision is checked at (internal).

    Attributes:
        logger: ``resilient.<kind>``.
        enabled: Its bound ``isEnabledFor``, looked up once: `Policy._listening` calls
            it on every decision.
        levels: Per event type (None: any), the level to ask about before building an
            event; for `StateChanged` the loudest it may be logged at.
        loudest: The loudest level this kind logs at.
    """

    __slots__ = ("enabled", "levels", "logger", "loudest")

    def __init__(self, kind: str) -> None:
        self.logger = logging.getLogger(f"resilient.{kind}")
        self.enabled = self.logger.isEnabledFor
        self.loudest = logging.WARNING if kind == "circuit_breaker" else logging.INFO
        self.levels: dict[type[Event] | None, int] = dict(_FIXED_LEVELS.items())
        self.levels[None] = self.levels[StateChanged] = self.loudest

    def write(self, level: int, event: Event) -> None:
        """
        Log `event` at `level`; the event itself rides along as ``record.resilient_event``.
        """
        message, arguments = _MESSAGES[type(event)]
        self.logger.log(level, message, *arguments(event), extra={"resilient_event": event})


@functools.cache  # one per kind, shared by every policy class of that kind
def decision_log(kind: str) -> DecisionLog:
    """
    The `DecisionLog` of a policy kind.
    """
    return DecisionLog(kind)
