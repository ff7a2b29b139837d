"""
OpenTelemetry tracing: one span per protected call, each decision a span event.

    from resilient.integrations.otel import OpenTelemetryHooks

    remove = OpenTelemetryHooks().install()           # every policy, global provider
    retry = Retry(attempts=3, hooks=[OpenTelemetryHooks(tracer_provider=provider)])

    app = web.Application(middlewares=[resilience_middleware(),
                                       aiohttp_server_span_middleware()])

Needs the ``otel`` extra, ``pip install 'resilient[otel]'``: the OpenTelemetry API only,
as OpenTelemetry asks of libraries. Without an SDK configured every span is a no-op.

What a call looks like: a span ``resilient <kind> <name>`` (kind INTERNAL), bare when the
call was a plain success, else with ``resilient.policy.name``, ``resilient.attempts`` and
``resilient.outcome`` (success, fallback, failure, rejected, timeout, cancelled); the policies'
decisions as span events (``resilient.retry_scheduled``, ``resilient.rejected``,
``resilient.timed_out``, ``resilient.hedge_sent``, ``resilient.fallback_used``,
``resilient.state_changed``, ``resilient.cancelled``), each naming the policy that made
it; a failure recorded with ``record_exception`` and status ERROR. docs/tracing.md has
the full list.

Why it is built this way:

- **Span events, not a child span per attempt.** Attempts already show up as children:
  the span is current while the call runs, so the user's own client spans (one per HTTP
  request, per query) and the next hop's server spans nest under it, one per attempt.
  A child span of ours per attempt would only add a level between the call and those
  spans, doubling the depth of every trace in Jaeger or Tempo and the cost per attempt.
  What is *not* visible as a child (why a retry happened, how long the backoff was, that
  a breaker refused) is a point in time with attributes: a span event, shown on the
  span's timeline, as the HTTP instrumentations show ``exception``.
- **One span per logical call, not per pipeline layer.** ``pipeline(Timeout, Retry,
  CircuitBreaker, Bulkhead)`` is one decision about one call; four nested spans of
  identical extent would bury the trace. The outermost policy opens the span; an inner
  policy whose call starts while that span is still the current context folds into it
  (its decisions become events of the same span). A context variable holds the innermost
  traced call, so folding is per task: concurrent calls never share a span, and a hedged
  attempt (a task in a copy of the caller's context) folds into its caller's span. A
  policy called under a span the user opened inside the call (say around a database
  query) gets its own span, a child of the user's. Limitation: the events don't say
  which policies form one pipeline, so a protected call made directly inside another
  one, under no span of the user's, is folded into it too.
- **Current for the whole call, restored exactly.** Policies report a call's start and
  end to a `resilient.CallListener` (`PolicySpans`, one per policy), in the task of the
  call, handing back what the start returned: the span is attached at the start and
  detached at the end, LIFO because policy calls nest. The context is detached before
  the span is touched, so even a span method that fails leaves nothing attached. Tasks
  the call starts (hedged attempts, the user's background tasks) copy the context with
  our span in it. No event object is built for a call, which keeps the hooks within
  1.2x of one bare SDK span (docs/benchmarks.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Any, Final

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import Span
except ImportError as exc:  # pragma: no cover - needs an environment without the extra
    raise ImportError(
        "resilient.integrations.otel needs opentelemetry-api: pip install 'resilient[otel]'"
    ) from exc

from resilient import (
    Event,
    FallbackUsed,
    HedgeSent,
    Policy,
    Rejected,
    RejectedError,
    RetryScheduled,
    StateChanged,
    TimedOut,
    TimeoutExceeded,
    add_hook,
    remove_hook,
)

from ._otel_common import (
    ATTEMPT,
    ATTEMPTS,
    ERROR_TYPE,
    KIND,
    NAME,
    OUTCOME,
    attach,
    detach,
    error_type,
    fail,
    get_current,
    tracer_for,
)

__all__ = ["OpenTelemetryHooks", "PolicySpans", "aiohttp_server_span_middleware"]


class _Call:
    """
    The span of one logical call, shared by its pipeline layers and hedged attempts.
    """

    __slots__ = ("attempts", "context", "done", "fallback", "otel_token", "span", "token")

    def __init__(self, span: Span, context: otel_context.Context) -> None:
        self.span = span
        self.context = context  # current while the call runs: ours, or the caller's
        self.attempts = 1
        self.fallback = False
        self.done = False
        self.otel_token: Token[otel_context.Context] | None = None
        self.token: Token[_Call | None] | None = None


# The innermost traced call of this task. One variable for every OpenTelemetryHooks
# instance, so two instances on one policy share a span (the first to hear the call
# opens it, the other folds into it).
_CALL: ContextVar[_Call | None] = ContextVar("resilient_otel_call", default=None)


def _live_call() -> _Call | None:
    call = _CALL.get()
    return None if call is None or call.done else call


class OpenTelemetryHooks:
    """
    A hook that traces policy calls: a span per call, decisions as span events.

    Install it for every policy with `install()`, or give it to some with
    ``hooks=[...]`` (or ``pipeline.add_hook``). One instance serves any number of
    policies, tasks and event loops.

    Args:
        tracer_provider: Where spans go; default: the global provider, through the
            API's proxy (a no-op until an SDK is configured).
        name_attribute: Give every span ``resilient.policy.name`` from its start, where
            samplers see it. By default the span's name carries the policy's kind and
            name, and the attribute is written only on the spans of calls that were not
            a plain success (with the outcome): the SDK validates each attribute a span
            starts with on every call, about 20,000 instructions for this one, which
            took the hooks on a 4-policy pipeline from 0.93x to 1.20x one bare SDK span
            (docs/benchmarks.md, "The OpenTelemetry gap, found").

    Raises:
        TypeError: `tracer_provider` has no ``get_tracer`` (not a provider), or
            `name_attribute` is not a bool.
    """

    __slots__ = ("__weakref__", "_handlers", "_name_attribute", "_tracer")

    # Calls are heard through `listen_calls`; only decisions arrive as events.
    event_types: Final = frozenset(
        {RetryScheduled, Rejected, TimedOut, HedgeSent, FallbackUsed, StateChanged}
    )

    def __init__(
        self, tracer_provider: trace.TracerProvider | None = None, *, name_attribute: bool = False
    ) -> None:
        if not isinstance(name_attribute, bool):
            raise TypeError(
                f"OpenTelemetryHooks(name_attribute={name_attribute!r}): expected True or False"
            )
        if tracer_provider is not None and not callable(
            getattr(tracer_provider, "get_tracer", None)
        ):
            raise TypeError(
                f"OpenTelemetryHooks(tracer_provider={tracer_provider!r}): expected an"
                " OpenTelemetry TracerProvider (or None for the global one)"
            )
        self._tracer = tracer_for(tracer_provider)
        self._name_attribute = name_attribute
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            RetryScheduled: _retry_scheduled,
            Rejected: _rejected,
            TimedOut: _timed_out,
            HedgeSent: _hedge_sent,
            FallbackUsed: _fallback_used,
            StateChanged: _state_changed,
        }

    def __call__(self, event: Event) -> None:
        """
        Receive one decision event (policies call this).
        """
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def listen_calls(self, policy: Policy) -> PolicySpans:
        """
        Trace `policy`'s calls: what the policy reports each call's start and end to.
        """
        return PolicySpans(self, policy.kind, policy.name)

    def install(self) -> Callable[[], None]:
        """
        Trace every policy's calls, with `resilient.add_hook`.

        Returns:
            A function that uninstalls the hooks. Calls in flight at that moment still
            end their spans and restore their context (a call's end goes to whoever
            heard its start); decisions they make afterwards are not recorded.
        """
        # Installing twice would deliver every event twice: take out the one a previous
        # install added (a no-op if none) before adding.
        remove_hook(self)
        add_hook(self)
        return self._uninstall

    def _uninstall(self) -> None:
        remove_hook(self)

    def __repr__(self) -> str:
        named = " name_attribute=True" if self._name_attribute else ""
        return f"<OpenTelemetryHooks tracer={self._tracer!r}{named}>"


class PolicySpans:
    """
    The call listener `OpenTelemetryHooks.listen_calls` binds to one policy.

    `call_started` opens the call's span and makes it current (or folds the call into the
    span of the call it is a layer of); `call_ended` restores the context, then ends the
    span with the call's outcome. The policy calls both in the task of the call.
    """

    __slots__ = ("_attributes", "_name", "_owner", "_title")

    def __init__(self, owner: OpenTelemetryHooks, kind: str, name: str) -> None:
        self._owner = owner
        self._name = name
        self._title = f"resilient {kind}" if name == kind else f"resilient {kind} {name}"
        # No attribute at the start unless asked for: the span's name says the kind and
        # the name, and the SDK validates what a span starts with on every call, through
        # the sampler's read-only copy (a mappingproxy: CPython checks it against
        # `Mapping` in Python code each time, as it never caches a class registered
        # directly with an ABC). On the slower machine that one attribute took the hooks
        # on a pipeline past 1.2x one span (docs/benchmarks.md). Name, outcome and
        # attempts are written at the end, and only when the call was not the plain
        # success of one attempt (their absence says that).
        self._attributes: dict[str, str | int] | None = (
            {NAME: name} if owner._name_attribute else None  # noqa: SLF001  # its owner's
        )

    def call_started(self) -> _Call | None:
        """
        Open the span of a call and make it current.

        Returns None (no end wanted) for a call folded into the current call's span.
        """
        parent = get_current()
        current = _CALL.get()
        if current is not None and not current.done and parent is current.context:
            return None  # an inner layer of a traced call: its decisions go to that span
        tracer = self._owner._tracer  # noqa: SLF001  # the owner's, read by its own listener
        span = tracer.start_span(self._title, parent, attributes=self._attributes)
        try:
            if span.is_recording():
                call = _Call(span, trace.set_span_in_context(span, parent))
                call.otel_token = attach(call.context)
            else:
                call = _Call(span, parent)  # no SDK, or sampled out: nothing to attach
        except Exception:
            span.end()  # the policy logs the error and won't call call_ended for it
            raise
        call.token = _CALL.set(call)
        return call

    def call_ended(self, call: _Call, _duration: float, error: BaseException | None) -> None:
        """
        Restore the context the call started in and end its span with its outcome.
        """
        call.done = True
        try:
            # Before anything that could fail, so nothing stays attached.
            _CALL.reset(call.token)  # type: ignore[arg-type]  # set in call_started
            if call.otel_token is not None:
                detach(call.otel_token)
        except (ValueError, RuntimeError):
            pass  # not the context the call started in: a coroutine closed by the GC
        span = call.span
        try:
            if error is None:
                if call.fallback:
                    span.set_attributes(self._ended(call, "fallback"))
                elif call.attempts != 1:
                    # A success after retries says so; the plain success stays bare.
                    span.set_attributes(self._ended(call, "success"))
            elif isinstance(error, asyncio.CancelledError):
                # Cancellation is the caller's decision, not an error of the call (as
                # asyncio and the OpenTelemetry HTTP instrumentations treat it): status
                # stays unset.
                # Attributes first: should the event fail, the span still says cancelled
                # (no attribute would read as a plain success).
                span.set_attributes(self._ended(call, "cancelled"))
                span.add_event("resilient.cancelled")
            else:
                attributes = self._ended(call, _outcome(error))
                attributes[ERROR_TYPE] = error_type(error)
                span.set_attributes(attributes)
                fail(span, error)
        finally:
            span.end()

    def _ended(self, call: _Call, outcome: str) -> dict[str, str | int]:
        # What a call that was not a plain success ends with; the name too unless the
        # span started with it.
        attributes: dict[str, str | int] = {ATTEMPTS: call.attempts, OUTCOME: outcome}
        if self._attributes is None:
            attributes[NAME] = self._name
        return attributes


def _outcome(error: BaseException) -> str:
    if isinstance(error, TimeoutExceeded):
        return "timeout"
    if isinstance(error, RejectedError):
        return "rejected"
    return "failure"


# -- decisions -----------------------------------------------------------------------------


def _note(name: str, event: Event, call: _Call | None, attributes: dict[str, Any]) -> None:
    # Outside any traced call (a Timeout or Bulkhead used with `async with`, a breaker's
    # trip() or reset()), the decision goes to whatever span is current.
    span = call.span if call is not None else trace.get_current_span()
    if span.is_recording():
        attributes[KIND] = event.kind
        attributes[NAME] = event.name
        span.add_event(name, attributes)


def _retry_scheduled(event: RetryScheduled) -> None:
    call = _live_call()
    if call is not None:
        call.attempts += 1
    attributes: dict[str, Any] = {ATTEMPT: event.attempt, "resilient.retry.delay": event.delay}
    if event.error is not None:
        attributes[ERROR_TYPE] = error_type(event.error)
    _note("resilient.retry_scheduled", event, call, attributes)


def _hedge_sent(event: HedgeSent) -> None:
    call = _live_call()
    if call is not None:
        call.attempts += 1
    _note("resilient.hedge_sent", event, call, {ATTEMPT: event.attempt})


def _rejected(event: Rejected) -> None:
    reason = {"resilient.rejection.reason": event.reason.value}
    _note("resilient.rejected", event, _live_call(), reason)


def _timed_out(event: TimedOut) -> None:
    _note("resilient.timed_out", event, _live_call(), {"resilient.timeout": event.timeout})


def _fallback_used(event: FallbackUsed) -> None:
    call = _live_call()
    if call is not None:
        call.fallback = True
    _note("resilient.fallback_used", event, call, {ERROR_TYPE: error_type(event.error)})


def _state_changed(event: StateChanged) -> None:
    states = {
        "resilient.circuit.old_state": event.old.value,
        "resilient.circuit.new_state": event.new.value,
    }
    _note("resilient.state_changed", event, _live_call(), states)


# Re-exported here, defined apart to keep each module small.
from ._otel_aiohttp import aiohttp_server_span_middleware  # noqa: E402
from ._public import publish  # noqa: E402

publish(globals())  # public names show this path, not their private modules
