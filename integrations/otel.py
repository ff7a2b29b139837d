"""
OpenTelemetry tracing: one span per protected call, each decision a span event.

    from resilient.integrations.otel import OpenTelemetryHooks

    remove = OpenTelemetryHooks().install()           # every policy, global provider
    retry = Retry(attempts=3, hooks=[OpenTelemetryHooks(tracer_provider=provider)])

    app = web.Application(middlewares=[resilience_middleware(),
                                       aiohttp_server_span_middleware()])

Needs the ``otel`` extra, ``pip install 'resilient[otel]'``: the OpenTelemetry API only,
as OpenTelemetry asks of libraries. Without an SDK configured every span is a no-op.

What a call looks like: a span ``resilient <kind> <name>`` (kind INTERNAL) with
``resilient.policy.kind``, ``resilient.policy.name``, ``resilient.attempts`` and
``resilient.outcome`` (success, fallback, failure, rejected, timeout, cancelled); the
policies' decisions as span events (``resilient.retry_scheduled``, ``resilient.rejected``,
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
  (its decisions become events of the same span). A context variable holds the stack of
  open calls, so folding is per task: concurrent calls never share a span, and a hedged
  attempt (a task in a copy of the caller's context) folds into its caller's span. A
  policy called under a span the user opened inside the call (say around a database
  query) gets its own span, a child of the user's. Limitation: the events don't say
  which policies form one pipeline, so a protected call made directly inside another
  one, under no span of the user's, is folded into it too.
- **Current for the whole call, restored exactly.** The span is attached on
  `CallStarted` and detached on the call's end event, which the policy emits in the
  same task; both are LIFO per task because policy calls nest. The context is detached
  before the span is touched, so even a span method that fails leaves nothing attached.
  Tasks the call starts (hedged attempts, the user's background tasks) copy the context
  with our span in it. OpenTelemetry's ``start_as_current_span`` is not usable here: the
  start and the end arrive as two separate events.
"""

from __future__ import annotations

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
    CallCancelled,
    CallFailed,
    CallStarted,
    CallSucceeded,
    Event,
    FallbackUsed,
    HedgeSent,
    Rejected,
    RejectedError,
    RetryScheduled,
    StateChanged,
    TimedOut,
    TimeoutExceeded,
    add_hook,
    remove_hook,
)
from resilient._events import global_hooks

from ._otel_common import (
    ATTEMPT,
    ATTEMPTS,
    ERROR_TYPE,
    KIND,
    NAME,
    OUTCOME,
    error_type,
    fail,
    tracer_for,
)

__all__ = ["OpenTelemetryHooks", "aiohttp_server_span_middleware"]


class _Call:
    """
    The span of one logical call, shared by its pipeline layers and hedged attempts.

    It is also the outermost layer's entry on the stack of open layers (`_LAYER`).
    """

    __slots__ = ("attempts", "context", "done", "fallback", "otel_token", "owner", "span", "token")

    def __init__(
        self, owner: OpenTelemetryHooks, span: Span, context: otel_context.Context
    ) -> None:
        self.owner = owner
        self.span = span
        self.context = context  # current while the call runs: ours, or the caller's
        self.attempts = 1
        self.fallback = False
        self.done = False
        self.otel_token: Token[otel_context.Context] | None = None
        self.token: Token[_Call | _Fold | None] | None = None


class _Fold:
    """
    An inner policy's layer, folded into the call's span.

    Its call is None when the hooks were being removed or the span failed to start.
    """

    __slots__ = ("call", "token")

    def __init__(self, call: _Call | None) -> None:
        self.call = call
        self.token: Token[_Call | _Fold | None] | None = None


# The open layers of this task, innermost on top; each end event pops one. One stack for
# every OpenTelemetryHooks instance, so two instances on one policy still unwind LIFO
# (the first to see a call opens its span, the other folds into it).
_LAYER: ContextVar[_Call | _Fold | None] = ContextVar("resilient_otel_layer", default=None)


def _pop() -> _Call | None:
    """
    Undo the innermost layer of this task; return its call when that call now ends.
    """
    layer = _LAYER.get()
    if layer is None or layer.token is None:
        return None  # the call started before the hooks were installed
    try:
        _LAYER.reset(layer.token)
    except (ValueError, RuntimeError):
        return None  # not the context the call started in: a coroutine closed by the GC
    if isinstance(layer, _Fold):
        return None
    layer.done = True
    if layer.otel_token is not None:
        otel_context.detach(layer.otel_token)  # before anything that could fail
    owner = layer.owner  # maybe another instance than the one popping
    owner._open -= 1  # noqa: SLF001  # see above
    if owner._draining and owner._open <= 0:  # noqa: SLF001
        owner._draining = False  # noqa: SLF001  # hooks= given to policies work on
        remove_hook(owner)
    return layer


def _live_call() -> _Call | None:
    layer = _LAYER.get()
    call = layer.call if isinstance(layer, _Fold) else layer
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
    """

    __slots__ = ("_draining", "_handlers", "_names", "_open", "_tracer")

    event_types: Final = frozenset(
        {
            CallStarted,
            CallSucceeded,
            CallFailed,
            CallCancelled,
            RetryScheduled,
            Rejected,
            TimedOut,
            HedgeSent,
            FallbackUsed,
            StateChanged,
        }
    )

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = tracer_for(tracer_provider)
        self._names: dict[tuple[str, str], tuple[str, dict[str, str | int]]] = {}
        self._open = 0
        self._draining = False
        self._handlers: dict[type[Event], Callable[[Any], None]] = {
            CallStarted: self._started,
            CallSucceeded: _succeeded,
            CallFailed: _failed,
            CallCancelled: _cancelled,
            RetryScheduled: _retry_scheduled,
            Rejected: _rejected,
            TimedOut: _timed_out,
            HedgeSent: _hedge_sent,
            FallbackUsed: _fallback_used,
            StateChanged: _state_changed,
        }

    def __call__(self, event: Event) -> None:
        """
        Receive one event (policies call this).
        """
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def install(self) -> Callable[[], None]:
        """
        Trace every policy's calls, with `resilient.add_hook`.

        Returns:
            A function that uninstalls the hooks. Calls in flight at that moment still
            end their spans and restore their context; until the last of them has
            ended, calls that start get no span.
        """
        self._draining = False
        if self not in global_hooks():  # installing twice would deliver every event twice
            add_hook(self)
        return self._uninstall

    def _uninstall(self) -> None:
        # Removing at once would leave the spans of calls in flight open, and current in
        # their tasks for good: their end events would no longer reach us. Drain them.
        if self._open > 0:
            self._draining = True  # _pop removes the hook after the last one
        else:
            remove_hook(self)

    def _started(self, event: CallStarted) -> None:
        top = _LAYER.get()
        if top is not None:
            call = top.call if isinstance(top, _Fold) else top
            if call is not None and not call.done and otel_context.get_current() is call.context:
                fold = _Fold(call)  # an inner layer of the same call
                fold.token = _LAYER.set(fold)
                return
        layer: _Call | _Fold = _Fold(None)
        try:
            if not self._draining:
                layer = self._open_span(event)
        finally:
            layer.token = _LAYER.set(layer)  # even if the SDK failed: the end event pops it

    def _open_span(self, event: CallStarted) -> _Call:
        named = self._names.get((event.kind, event.name))
        if named is None:
            named = self._name(event.kind, event.name)
        parent = otel_context.get_current()
        # Only kind and name here: the SDK validates every attribute on every call, so
        # outcome and attempts are written at the end, and only when they aren't the
        # plain success of one attempt (their absence says that).
        span = self._tracer.start_span(named[0], parent, attributes=named[1])
        if not span.is_recording():
            call = _Call(self, span, parent)  # no SDK, or sampled out: nothing to attach
        else:
            call = _Call(self, span, trace.set_span_in_context(span, parent))
            call.otel_token = otel_context.attach(call.context)
        self._open += 1
        return call

    def _name(self, kind: str, name: str) -> tuple[str, dict[str, str | int]]:
        title = f"resilient {kind}" if name == kind else f"resilient {kind} {name}"
        attributes: dict[str, str | int] = {KIND: kind, NAME: name}
        named = self._names[kind, name] = (title, attributes)
        return named

    def __repr__(self) -> str:
        state = " draining" if self._draining else ""
        return f"<OpenTelemetryHooks {self._open} open{state}>"


# -- end events ----------------------------------------------------------------------------


def _succeeded(_: CallSucceeded) -> None:
    call = _pop()
    if call is not None:
        span = call.span
        if call.fallback:
            span.set_attributes({ATTEMPTS: call.attempts, OUTCOME: "fallback"})
        elif call.attempts != 1:
            # A success after retries says so; the plain success stays attribute-free.
            span.set_attributes({ATTEMPTS: call.attempts, OUTCOME: "success"})
        span.end()


def _failed(event: CallFailed) -> None:
    call = _pop()
    if call is None:
        return
    span = call.span
    try:
        error = event.error
        if isinstance(error, TimeoutExceeded):
            outcome = "timeout"
        elif isinstance(error, RejectedError):
            outcome = "rejected"
        else:
            outcome = "failure"
        span.set_attributes(
            {ATTEMPTS: call.attempts, OUTCOME: outcome, ERROR_TYPE: error_type(error)}
        )
        fail(span, error)
    finally:
        span.end()


def _cancelled(_: CallCancelled) -> None:
    call = _pop()
    if call is not None:
        # Cancellation is the caller's decision, not an error of the call (as asyncio
        # and the OpenTelemetry HTTP instrumentations treat it): status stays unset.
        span = call.span
        span.add_event("resilient.cancelled")
        span.set_attributes({ATTEMPTS: call.attempts, OUTCOME: "cancelled"})
        span.end()


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
