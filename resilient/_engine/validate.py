"""
Construction-time checks shared by every policy.

Each raises `ValueError` (or `TypeError` for a value of the wrong type) naming the
policy and the parameter, so a misconfiguration fails where it was written.
"""

from __future__ import annotations

import builtins
import inspect
import math
from collections.abc import Callable, Iterable

from tenacity.retry import retry_base

from .clock import SYSTEM_CLOCK, Clock
from .errors import PROGRAMMING_ERRORS, RejectedError
from .events import Hook

__all__ = [
    "check_async_redis",
    "check_clock",
    "check_exception_types",
    "check_fraction",
    "check_hooks",
    "check_int",
    "check_name",
    "check_rate",
    "check_seconds",
    "error_matcher",
    "retryable_by_default",
]


def check_int(owner: str, param: str, value: object, *, minimum: int) -> int:
    """
    Return `value` if it is an int (not a bool) of at least `minimum`.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{owner}({param}=...): expected an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{owner}({param}={value!r}): {param} must be >= {minimum}")
    return value


def check_seconds(owner: str, param: str, value: object, *, allow_zero: bool = False) -> float:
    """
    Return `value` as a float if it is a finite number of seconds > 0 (or >= 0).
    """
    return _finite(owner, param, value, expected="seconds as a number", allow_zero=allow_zero)


def check_rate(owner: str, param: str, value: object) -> float:
    """
    Return `value` as a float if it is a finite number > 0 (a rate or a cost, not seconds).
    """
    return _finite(owner, param, value, expected="a number", allow_zero=False)


def _finite(owner: str, param: str, value: object, *, expected: str, allow_zero: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}({param}=...): expected {expected}, got {value!r}")
    try:
        number = float(value)
    except OverflowError:  # an int beyond a float's range: as infinite
        number = math.inf
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{owner}({param}={value!r}): {param} must be finite and {bound}")
    return number


def check_fraction(owner: str, param: str, value: object) -> float:
    """
    Return `value` as a float if it lies in (0, 1].
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{owner}({param}=...): expected a number in (0, 1], got {value!r}")
    if not 0 < value <= 1:
        raise ValueError(f"{owner}({param}={value!r}): {param} must be in (0, 1]")
    return float(value)


def check_name(owner: str, value: object, default: str) -> str:
    """
    Return the policy name, or `default` when None; names must be non-empty strings.
    """
    if value is None:
        return default
    if not isinstance(value, str):
        raise TypeError(f"{owner}(name=...): expected a string, got {value!r}")
    if not value:
        raise ValueError(f"{owner}(name={value!r}): name must be a non-empty string")
    return value


def check_clock(owner: str, value: object) -> Clock:
    """
    Return the clock to use: the system clock when None.
    """
    if value is None:
        return SYSTEM_CLOCK
    if not isinstance(value, Clock):
        raise TypeError(
            f"{owner}(clock=...): expected a Clock (monotonic, wall, sleep, call_at), got {value!r}"
        )
    return value


def check_async_redis(owner: str, client: object) -> None:
    """
    Raise `TypeError` unless `client` is an asyncio Redis client (``redis.asyncio``).

    Duck-typed, so redis-py is not imported here: its commands must be coroutines. A
    synchronous ``redis.Redis`` would block the event loop on every command and then
    fail when its reply is awaited, so it is refused here, where it was written.
    """
    if not hasattr(client, "register_script"):
        raise TypeError(
            f"{owner}(client=...): expected a redis.asyncio client"
            f" (redis.asyncio.Redis or RedisCluster), got {client!r}"
        )
    # On the instance, not its class: an AsyncMock standing in for a client passes.
    if not inspect.iscoroutinefunction(getattr(client, "execute_command", None)):
        raise TypeError(
            f"{owner}(client=...): {client!r} is a synchronous Redis client; use"
            " redis.asyncio.Redis (or redis.asyncio.RedisCluster): it runs on your event loop"
        )


def check_hooks(owner: str, value: Iterable[Hook] | None) -> tuple[Hook, ...]:
    """
    Return the hooks as a tuple, each checked to be callable.
    """
    if value is None:
        return ()
    hooks = tuple(value)
    for hook in hooks:
        if not callable(hook):
            raise TypeError(f"{owner}(hooks=...): {hook!r} is not callable")
    return hooks


def check_exception_types(owner: str, param: str, value: object) -> tuple[type[BaseException], ...]:
    """
    Return `value` as a tuple of exception classes (one class or an iterable of them).
    """
    items = (value,) if isinstance(value, type | str) else value
    if not isinstance(items, Iterable):
        raise TypeError(f"{owner}({param}=...): expected exception types, got {value!r}")
    types = tuple(items)
    for item in types:
        if isinstance(item, str):
            raise TypeError(f"{owner}({param}=...): {_string_advice(item)}")
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise TypeError(f"{owner}({param}=...): {item!r} is not an exception type")
    return types


def _string_advice(name: str) -> str:
    # A name is the likeliest slip (`on="ConnectionError"`): say so, and suggest the class.
    found = getattr(builtins, name, None)
    if isinstance(found, type) and issubclass(found, BaseException):
        return f"{name!r} is a string, not an exception type; pass the class: {name}"
    return f"{name!r} is a string, not an exception type; pass the exception class itself"


ErrorPredicate = Callable[[BaseException], bool]


def error_matcher(
    owner: str,
    param: str,
    value: object,
    *,
    allow_empty: bool = False,
    spare_programming_errors: bool = False,
) -> ErrorPredicate:
    """
    Turn exception types or a predicate into one predicate over exceptions.

    `asyncio.CancelledError` never matches: cancellation is not a dependency failure.
    With `spare_programming_errors`, a `PROGRAMMING_ERRORS` instance matches types only
    when one of them is (a subclass of) a programming error: ``on=Exception`` spares a
    ``TypeError``, ``on=TypeError`` does not. A predicate always decides alone.

    Raises:
        TypeError: `value` is a tenacity ``retry_*`` strategy (only `Retry(on=...)`
            understands those), or neither types nor a callable.
        ValueError: No exception type was given (the policy would match nothing).
    """
    if isinstance(value, retry_base):
        raise TypeError(
            f"{owner}({param}=...): tenacity retry_* strategies are only understood by"
            " Retry(on=...); pass exception types or a predicate over the exception"
        )
    if callable(value) and not isinstance(value, type):
        predicate: ErrorPredicate = value

        def matches(error: BaseException) -> bool:
            return isinstance(error, Exception) and bool(predicate(error))

        return matches
    types = check_exception_types(owner, param, value)
    if not types and not allow_empty:
        raise ValueError(f"{owner}({param}=()): give at least one exception type")
    if spare_programming_errors:
        named = tuple(t for t in types if issubclass(t, PROGRAMMING_ERRORS))

        def is_failure(error: BaseException) -> bool:
            if not (isinstance(error, types) and isinstance(error, Exception)):
                return False
            return not isinstance(error, PROGRAMMING_ERRORS) or isinstance(error, named)

        return is_failure

    def is_instance(error: BaseException) -> bool:
        return isinstance(error, types) and isinstance(error, Exception)

    return is_instance


_NOT_RETRIED: tuple[type[Exception], ...] = (RejectedError, *PROGRAMMING_ERRORS)


def retryable_by_default(error: BaseException) -> bool:
    """
    Whether `Retry` and `Hedge` try again after `error` when not told otherwise.

    Any `Exception` but a `RejectedError` or a programming error: a rejection means
    "don't call now", and trying again at once only burns attempts; a programming error
    (`PROGRAMMING_ERRORS`) comes back on every attempt, repeating the call's side effects.
    """
    # Judged once per exception class: isinstance against the seven types costs more
    # than the rest of the judgement.
    kind = type(error)
    verdict = _VERDICTS.get(kind)
    if verdict is None:
        verdict = issubclass(kind, Exception) and not issubclass(kind, _NOT_RETRIED)
        if len(_VERDICTS) < _MAX_VERDICTS:  # classes made on the fly must not grow it forever
            _VERDICTS[kind] = verdict
    return verdict


_VERDICTS: dict[type[BaseException], bool] = {}
_MAX_VERDICTS = 1024
