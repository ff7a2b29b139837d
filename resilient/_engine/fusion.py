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
defined: a breaker sharing its state through a store awaits it). A fused call takes the
chained layers whenever a policy of the pipeline has hooks, or global hooks are set: the
per-call events are built there. A pipeline of more than `_MAX_FUSED` policies is chained
(the generated code would nest more blocks than CPython compiles).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Final, Protocol, TypeAlias, TypeVar

from .hooks import _GENERATION, global_hooks  # the engine's own counter
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


def _observed(policies: tuple[Policy, ...]) -> bool:
    if _GLOBAL_HOOKS:
        return True
    for policy in policies:  # noqa: SIM110  # no generator object
        if policy._hooks:  # noqa: SLF001  # the contract's own state
            return True
    return False


def _step_lines(step: int, at: int, count: int, core: list[str]) -> list[str]:
    # Steps `step`..`count`-1 nested around `core`, each closing with what came out of
    # the ones inside it. Step indices skip the retry: policy index = step (+1 below it).
    if step == count:
        return core
    policy = step if step < at else step + 1
    inner = ["    " * 2 + line for line in _step_lines(step + 1, at, count, core)]
    return [
        f"t{step} = s{step}._open()",
        f"if t{step} is NOT_NOW:",
        f"    result = await _layer(everyone, {policy}, fn, built)(*args, **kwargs)",
        "else:",
        "    try:",
        *inner,
        f"    except BaseException as e{step}:",
        f"        c{step} = s{step}._close(t{step}, e{step})",
        f"        if c{step} is None or c{step} is e{step}:",
        f"            del c{step}  # no cycle through this frame on the way out",
        "            raise",
        "        try:",
        f"            raise c{step}  # its cause set by _close",
        "        finally:",
        f"            del c{step}  # its traceback holds this frame: no cycle either",
        f"    s{step}._close(t{step}, None)",
    ]


_CALL = ["result = await fn(*args, **kwargs)"]
# The retry's first attempt runs here; a failure it retries goes to its loop, outside
# the except block and with no frame still holding the first error (as Retry._run).
_RETRY_BLOCK = """\
started = retry._begin()
error = None
try:
{inner}
except BaseException as raised:
    if not retry._retries_first(raised, None):
        raise
    error, again = raised, True
else:
    again = results_matter and retry._retries_first(None, result)
if again:
    below = _layer(everyone, {below}, fn, built)
    retrying = retry._retry(below, args, kwargs, started, error, result)
    error = result = None
    result = await retrying"""

_SOURCE = """\
def factory(everyone, steps, retry, results_matter):
    # Once per pipeline: what its fused functions share, in cells they all hold.
    # (hooks generation seen, whether a policy was observed then), replaced whole: a
    # pipeline may serve loops in several threads.
    seen = [(-1, False)]
{unpack}

    def fuse(fn):
        # Once per function: `built` holds its chained layers, made on a first slow path.
        built = [None]

        async def fused(*args, **kwargs):
            mark = seen[0]
            if mark[0] != _GENERATION[0]:
                mark = seen[0] = (_GENERATION[0], _observed(everyone))
            if mark[1]:  # hooks were added: the chained layers build the call events
                return await _layer(everyone, 0, fn, built)(*args, **kwargs)
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
        if retried:
            inner = "\n".join("    " + line for line in _step_lines(at, at, count, _CALL))
            core = _RETRY_BLOCK.format(inner=inner, below=at + 1).splitlines()
            body = _step_lines(0, at, at, core)
        else:
            body = _step_lines(0, count, count, _CALL)
        unpack = "".join(f"    s{i} = steps[{i}]\n" for i in range(count))
        source = _SOURCE.format(
            body="\n".join(" " * 12 + line for line in body), unpack=unpack.rstrip("\n")
        )
        namespace: dict[str, Any] = {
            "NOT_NOW": NOT_NOW, "_GENERATION": _GENERATION, "_layer": _layer,
            "_observed": _observed,
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
