"""
Fusion: a pipeline of built-in policies runs a call in one frame, not one per layer.

Chained layers cost a coroutine (and its frame) per policy per call. Sequentially that
is cheap, but 10,000 calls in flight keep 10,000 of each alive, and the garbage collector
walks them all: a four-policy pipeline cost 1.2-1.4x `asyncio.timeout` + `Semaphore`
with gc on (issue #11). Most built-in policies do their per-call work synchronously
around the one awaited call, so a pipeline of them can do that work in one frame:

- a *step* (`Timeout`, `CircuitBreaker`, `Bulkhead`) opens before the call and closes
  after it. ``token = step._open()`` may raise the step's rejection, or return `NOT_NOW`
  when it can't decide without awaiting (a bulkhead that must queue): the rest of the
  pipeline then runs as chained layers from that step on. ``step._close(token, error)``
  returns the error to raise in place of `error` (a timeout turns its own cancellation
  into `TimeoutExceeded`);
- a *retry* (`Retry`, at most one per pipeline) runs the first attempt in the fused
  frame (``_begin``, ``_retries_first``) and hands a failure it retries to its own loop
  (``_retry``), around the chained layers below it.

The fused function is generated once per shape (how many steps, where the retry is):
unrolled, one nested ``try`` per step, which CPython 3.11+ enters at no cost, so a call
pays no loop and no list.

A policy fuses only when its exact class says so (``_fusion`` in the class's own
namespace: a subclass may override `_run`) and the instance agrees (``_fuses()``, when
defined: a breaker sharing its state through a store awaits it). An observed call (a
policy of the pipeline has hooks, or global hooks are set) stays fused while each policy
is heard by at most one call listener and no call-event hook, the common case of
Prometheus or OpenTelemetry: a second coroutine, ``heard``, calls the listeners as
`Policy._observe` would (fusion_source.py), where the chained layers cost two coroutines
per policy. It is a coroutine of its own so that the unobserved call's frame stays as
small as it was (inlined, its locals cost that call ~2%). It reads the listeners once,
up front; when hooks change before an inner policy's turn (an outer listener's
``call_started`` or decision hook changed them), the chained layers run from that policy
on, reading their plans then, as they would have. Any other observer takes the chained
layers: the per-call events are built there. A pipeline of more than
`_MAX_FUSED` policies is chained (the generated code would nest more blocks than CPython
compiles).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, Protocol, TypeAlias, TypeVar

from .fusion_source import heard_lines, unheard_lines
from .hooks import _GENERATION, global_hooks, log_listener_failure  # the engine's own counter
from .policy import Args, AsyncFn, Kwargs, Policy

__all__ = ["NOT_NOW", "Fusion", "fusion_of"]

T = TypeVar("T")

NOT_NOW: Final = object()
"""What `_open` returns when it can't decide synchronously: run the layers from here."""

Fusion: TypeAlias = Callable[[AsyncFn[Any]], Callable[..., Coroutine[Any, Any, Any]]]
"""``fusion(fn)``: the fused coroutine function around `fn` (its chained layers, for the
slow paths, are made the first time one needs them)."""

_GLOBAL_HOOKS = global_hooks()
_STEP, _RETRY = "step", "retry"
_CHAINED: Final = True  # `_observed`: the chained layers observe the call
# Policies fused at most: each step nests two blocks, and CPython refuses more than 20
# statically nested blocks (SyntaxError) and 100 levels of indentation. A longer
# pipeline, rare and not what fusion is for, runs as chained layers.
_MAX_FUSED = 10


class _Retry(Protocol):
    def _begin(self) -> float: ...

    def _retries_first(self, error: BaseException | None, result: object) -> bool: ...

    def _results_matter(self) -> bool: ...

    def _retry(  # noqa: PLR0917  # Retry's own signature
        self, fn: AsyncFn[Any], args: Args, kwargs: Kwargs, started: float, error: Any, result: Any
    ) -> Coroutine[Any, Any, Any]: ...


def _fusion_of(policy: Policy) -> str | None:
    kind = type(policy).__dict__.get("_fusion")
    agrees = getattr(policy, "_fuses", None)
    return kind if isinstance(kind, str) and (agrees is None or agrees()) else None


def fusion_of(policies: Sequence[Policy]) -> Fusion | None:
    """
    How to fuse `policies` (outermost first), or None when they don't all fuse.
    """
    kinds = [_fusion_of(policy) for policy in policies]
    if not 2 <= len(kinds) <= _MAX_FUSED or None in kinds or kinds.count(_RETRY) > 1:  # noqa: PLR2004
        return None
    everyone = tuple(policies)
    at = kinds.index(_RETRY) if _RETRY in kinds else len(everyone)
    return _fusion(everyone, at)


def _layer(
    policies: tuple[Policy, ...], index: int, fn: AsyncFn[T], built: list[Any]
) -> AsyncFn[T]:
    # The chained layers of policies[index:] around fn, made once per function (kept in
    # `built`) and only when a call first needs them.
    layers = built[0]
    if layers is None:
        layers = built[0] = _chained_layers(policies, fn)
    return layers[index] if index < len(layers) else fn


def _chained_layers(policies: Sequence[Policy], fn: AsyncFn[T]) -> list[AsyncFn[T]]:
    """
    ``layers[i]`` runs `fn` through ``policies[i:]`` as chained layers, events included.
    """
    layers: list[AsyncFn[T]] = []
    for policy in reversed(policies):
        fn = policy._bind(fn)  # noqa: SLF001  # Policy's own protocol
        layers.append(fn)
    layers.reverse()
    return layers


def _observed(policies: tuple[Policy, ...]) -> bool | tuple[Any, ...]:
    """
    How a call of the fused `policies` is observed, for the hooks of now.

    False: no hooks at all. `_CHAINED`: a policy has several listeners or call-event
    hooks. Else the flat tuple ``(call_started, call_ended, monotonic)`` per policy,
    outermost first, (None, None, None) for one nobody hears: each policy's plan read
    once, as `Policy._observe` reads its own once per call. All None (decision hooks
    only) is still `heard`: a decision hook of an outer policy may add a listener to an
    inner one mid-call, which the chained layers would call.
    """
    if not _GLOBAL_HOOKS and not any(policy._hooks for policy in policies):  # noqa: SLF001
        return False
    listeners: list[Any] = []
    for policy in policies:
        if not (policy._hooks or _GLOBAL_HOOKS):  # noqa: SLF001  # the contract's own state
            listeners += (None, None, None)
            continue
        plan = policy._current_plan()  # noqa: SLF001  # a stale one is built now
        if plan.sole_end is not None:
            # The clock read with it rides along: no cell per policy in every pipeline.
            listeners += (plan.sole_start, plan.sole_end, policy._monotonic)  # noqa: SLF001
        elif plan.any_call:
            return _CHAINED
        else:
            listeners += (None, None, None)
    return tuple(listeners)


def _ended(end: Any, token: Any, duration: float, error: BaseException) -> None:
    # A fused call's failure told to a listener, from the handler of `error`.
    try:
        end(token, duration, error)
    except Exception:  # noqa: BLE001  # observing a call must never break it
        log_listener_failure(end, "call_ended")


_SOURCE = """\
def factory(everyone, steps, retry, results_matter):
    # Once per pipeline: what its fused functions share, in cells they all hold.
    # (hooks generation seen, how calls were observed then: _observed, the generation
    # once they were read), replaced whole: a pipeline may serve loops in several
    # threads. The two generations differ when reading them changed hooks (a hook's
    # listen_calls did): the next call reads them again, as chained layers would.
    seen = [(-1, False, -1)]
{unpack}

    async def heard(fn, built, mark, args, kwargs):
        # A call each policy's one listener (if any) hears, from this frame; `g`: the
        # hooks generation its listeners were read under. Once per pipeline, not per
        # function: a fused function holds no second closure.
        _, listeners, g = mark
        {listeners} = listeners
        result = None
{heard}
        return result

    def fuse(fn):
        # Once per function: `built` holds its chained layers, made on a first slow path.
        built = [None]

        async def fused(*args, **kwargs):
            mark = seen[0]
            if mark[0] != _GENERATION[0]:
                generation = _GENERATION[0]
                mark = seen[0] = (generation, _observed(everyone), _GENERATION[0])
            if mark[1]:
                if mark[1] is _CHAINED:  # the chained layers build the call events
                    return await _layer(everyone, 0, fn, built)(*args, **kwargs)
                return await heard(fn, built, mark, args, kwargs)
            result = None
{body}
            return result

        return fused

    return fuse
"""

_FACTORIES: dict[tuple[int, int, bool], Callable[..., Any]] = {}


def _factory(at: int, count: int, retried: bool) -> Callable[..., Any]:
    """
    The fused function's factory for `count` steps, `at` of them outside the retry.

    Its code is unrolled, one nested ``try`` per step (free in CPython 3.11+), so a call
    pays no loop and no list; generated once per shape, as dataclasses generates methods.
    """
    factory = _FACTORIES.get((at, count, retried))
    if factory is None:
        policies = count + retried
        unpack = [f"    s{i} = steps[{i}]" for i in range(count)]
        source = _SOURCE.format(
            body="\n".join(" " * 12 + line for line in unheard_lines(at, count, retried)),
            heard="\n".join(" " * 8 + line for line in heard_lines(at, count, retried)),
            listeners=", ".join(f"a{p}, z{p}, m{p}" for p in range(policies)),
            unpack="\n".join(unpack),
        )
        namespace: dict[str, Any] = {
            "NOT_NOW": NOT_NOW, "_GENERATION": _GENERATION, "_layer": _layer,
            "_observed": _observed, "_CHAINED": _CHAINED, "_ended": _ended,
            "_failed": log_listener_failure,
        }  # fmt: skip
        code = compile(source, f"<resilient fused pipeline: {at} of {count} steps>", "exec")
        exec(code, namespace)  # noqa: S102  # our own template, no outside text
        factory = _FACTORIES[(at, count, retried)] = namespace["factory"]
    return factory


def _fusion(everyone: tuple[Policy, ...], at: int) -> Fusion:
    # The retry at `at` (none when at == len(everyone)); the steps are the others, in order.
    retry: _Retry | None = everyone[at] if at < len(everyone) else None  # type: ignore[assignment]
    steps = everyone[:at] + everyone[at + 1 :]
    factory = _factory(at if retry is not None else len(steps), len(steps), retry is not None)
    # A retry's settings never change: whether a result can be retried is known now.
    results_matter = retry is not None and retry._results_matter()  # noqa: SLF001
    fuse: Fusion = factory(everyone, steps, retry, results_matter)
    return fuse
