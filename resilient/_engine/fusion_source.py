"""
The source of fused calls (see fusion.py): unobserved, and heard by one listener per policy.

Unobserved, a step is ``t = s._open()`` ... ``s._close(t, error)`` around the steps inside
it, the retry's first attempt around the steps below it.

Observed, each policy's listener is called where `Policy._observe` would call it, in the
same order: per policy, outermost first, ``token = call_started()`` (if defined; one that
raises is logged and that policy's end skipped; None means no end), then ``began``, then
the policy's work, then ``call_ended(token, monotonic() - began, error)`` with the error
that leaves the policy (after ``_close`` turned it into `TimeoutExceeded`, say), inner
ends before outer ones. A bulkhead that must queue (`NOT_NOW`) runs its own `_run` under
its listener, over the chained layers below it, which observe themselves; so do the
retry's retries (its listener hears all its attempts). Hooks changed since the call read
its listeners (generation ``g``): the chained layers from the next policy on.

Names in the generated code: ``s{i}`` the step i, ``t{i}`` its token; per policy p (steps
skip the retry: p = i, or i + 1 below it) ``a{p}``/``z{p}`` its listener's call_started
and call_ended (None when nobody hears it), ``k{p}`` the token, ``m{p}`` its clock's
monotonic (from `_observed`, with the listener), ``b{p}`` when it began.
"""

from __future__ import annotations

__all__ = ["heard_lines", "unheard_lines"]

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


def _indented(lines: list[str], levels: int = 1) -> list[str]:
    return ["    " * levels + line for line in lines]


def _closing(step: int) -> list[str]:
    # In the step's `except BaseException as e{step}`: close with the error and raise
    # what _close says in its place.
    s = step
    return [
        f"c{s} = s{s}._close(t{s}, e{s})",
        f"if c{s} is None or c{s} is e{s}:",
        f"    del c{s}  # no cycle through this frame on the way out",
        "    raise",
        "try:",
        f"    raise c{s}  # its cause set by _close",
        "finally:",
        f"    del c{s}  # its traceback holds this frame: no cycle either",
    ]


def _queued(step: int, policy: int, heard: bool) -> str:
    # A step that must await to decide: the chained layers from there (heard: the step's
    # own `_run`, its listener being called here, over the layers below it).
    if heard:
        below = f"_layer(everyone, {policy + 1}, fn, built)"
        return f"result = await s{step}._run({below}, args, kwargs)"
    return f"result = await _layer(everyone, {policy}, fn, built)(*args, **kwargs)"


def _step(step: int, policy: int, inner: list[str]) -> list[str]:
    s = step
    return [
        f"t{s} = s{s}._open()",
        f"if t{s} is NOT_NOW:",
        "    " + _queued(s, policy, heard=False),
        "else:",
        "    try:",
        *_indented(inner, 2),
        f"    except BaseException as e{s}:",
        *_indented(_closing(s), 2),
        f"    s{s}._close(t{s}, None)",
    ]


def _started(policy: int) -> list[str]:
    p = policy
    return [
        f"k{p} = None",
        f"if a{p} is not None:",
        "    try:",
        f"        k{p} = a{p}()",
        "    except Exception:",
        f'        _failed(a{p}, "call_started")',
        f"    if k{p} is None:  # it raised, or wants no end for this call",
        f"        z{p} = None",
        f"if z{p} is not None:",
        f"    b{p} = m{p}()",
    ]


def _reported(policy: int, body: list[str]) -> list[str]:
    # `body`, with what raises out of it (already raised: its traceback and context
    # set, as a chained layer's listener sees it) reported to the policy's listener.
    p = policy
    return [
        "try:",
        *_indented(body),
        f"except BaseException as x{p}:",
        f"    if z{p} is not None:",
        f"        _ended(z{p}, k{p}, m{p}() - b{p}, x{p})",
        "    raise",
    ]


def _succeeded(policy: int) -> list[str]:
    p = policy
    return [
        f"if z{p} is not None:",
        "    try:",
        f"        z{p}(k{p}, m{p}() - b{p}, None)",
        "    except Exception:",
        f'        _failed(z{p}, "call_ended")',
    ]


def _unchanged(policy: int, lines: list[str]) -> list[str]:
    # `lines` (the policy's part of the call) while the hooks are those the call read
    # its listeners under (generation `g`). Else (an outer policy's listener or decision
    # hook changed them, or another thread did) the chained layers from this policy on,
    # each reading its plan now, as it would have: a listener removed meanwhile hears
    # nothing more of this call, one added hears it from here.
    if policy == 0:
        return lines  # `fused` read them just now
    return [
        "if _GENERATION[0] != g:",
        f"    result = await _layer(everyone, {policy}, fn, built)(*args, **kwargs)",
        "else:",
        *_indented(lines),
    ]


def _heard_step(step: int, policy: int, inner: list[str]) -> list[str]:
    # The unobserved step with every way out of it reported: a rejection from _open,
    # the queued path, what _close raises in the error's place, a _close that raises.
    s, p = step, policy
    heard = [
        *_started(p),
        *_reported(p, [f"t{s} = s{s}._open()"]),
        f"if t{s} is NOT_NOW:",
        *_indented(_reported(p, [_queued(s, p, heard=True)])),
        "else:",
        "    try:",
        *_indented(inner, 2),
        f"    except BaseException as e{s}:",
        *_indented(_reported(p, _closing(s)), 2),
        *_indented(_reported(p, [f"s{s}._close(t{s}, None)"])),
        *_succeeded(p),
    ]
    return _unchanged(p, heard)


def _steps(step: int, at: int, count: int, core: list[str], heard: bool) -> list[str]:
    # Steps `step`..`count`-1 nested around `core`, the retry (if any) after step `at`.
    if step == count:
        return core
    policy = step if step < at else step + 1
    inner = _steps(step + 1, at, count, core, heard)
    return _heard_step(step, policy, inner) if heard else _step(step, policy, inner)


def _lines(at: int, count: int, retried: bool, heard: bool) -> list[str]:
    if not retried:
        return _steps(0, count, count, _CALL, heard)
    inner = "\n".join(_indented(_steps(at, at, count, _CALL, heard)))
    block = _RETRY_BLOCK.format(inner=inner, below=at + 1).splitlines()
    if heard:  # the retry's listener hears all its attempts
        block = _unchanged(at, [*_started(at), *_reported(at, block), *_succeeded(at)])
    return _steps(0, at, at, block, heard)


def unheard_lines(at: int, count: int, retried: bool) -> list[str]:
    """
    The unobserved fused call: `count` steps, the retry (if any) after step `at`.
    """
    return _lines(at, count, retried, heard=False)


def heard_lines(at: int, count: int, retried: bool) -> list[str]:
    """
    The fused call heard by one listener per policy (at most), as `unheard_lines` says.
    """
    return _lines(at, count, retried, heard=True)
