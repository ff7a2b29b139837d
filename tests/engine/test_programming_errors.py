"""
Programming errors (`PROGRAMMING_ERRORS`: TypeError, AttributeError, ...) fail loudly:
not retried, not counted by breakers, not answered by fallbacks, unless named in ``on=``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import tenacity

from resilient import (
    PROGRAMMING_ERRORS,
    CircuitBreaker,
    CircuitState,
    EndpointPool,
    Fallback,
    Hedge,
    Instance,
    PolicyMisuseError,
    Retry,
    pipeline,
)
from resilient._engine import validate as _validate
from resilient.testing import FakeClock, instant_retries


def raising(error: BaseException, calls: list[int]) -> Callable[[], Awaitable[str]]:
    """
    An async function that records each call (its side effect) and raises `error`.
    """

    async def fn() -> str:
        calls.append(1)
        raise error

    return fn


def mistyped(calls: list[int]) -> Callable[[], Awaitable[str]]:
    """
    An async function with a genuine mistake in it: a call with a missing argument.
    """

    def takes_two(a: int, b: int) -> str:
        return f"{a}{b}"

    async def fn() -> str:
        calls.append(1)
        return takes_two(1)  # type: ignore[call-arg]  # the mistake under test

    return fn


def test_the_documented_set() -> None:
    """The tuple names the errors that mean the code is wrong, and no data errors."""
    assert set(PROGRAMMING_ERRORS) == {
        AssertionError,
        AttributeError,
        NameError,
        NotImplementedError,
        SyntaxError,
        TypeError,
        PolicyMisuseError,
    }
    for data_error in (KeyError, IndexError, ValueError, ImportError, ConnectionError):
        assert not issubclass(data_error, PROGRAMMING_ERRORS)


async def test_fallback_over_retry_raises_a_mistyped_call_after_one_side_effect() -> None:
    """The issue's case: pipeline(Fallback(value=...), Retry(3)) over a mistyped call
    raises the TypeError after one call, instead of answering after three."""
    calls: list[int] = []
    policy = pipeline(Fallback(value="fallback"), Retry(3))
    with instant_retries(), pytest.raises(TypeError, match="missing 1 required"):
        await policy.call(mistyped(calls))
    assert calls == [1]


@pytest.mark.parametrize("error_type", PROGRAMMING_ERRORS)
async def test_retry_does_not_retry_programming_errors(error_type: type[Exception]) -> None:
    """Each programming error is raised on the first attempt, unretried."""
    calls: list[int] = []
    retry = Retry(3)
    with instant_retries(), pytest.raises(error_type):
        await retry.call(raising(error_type("bug"), calls))
    assert calls == [1]
    assert retry.statistics().retries == 0


@pytest.mark.parametrize("error_type", [KeyError, IndexError, ValueError, ConnectionError])
async def test_retry_still_retries_data_and_network_errors(error_type: type[Exception]) -> None:
    """Errors that can come from data or the network are retried as before."""
    calls: list[int] = []
    with instant_retries(), pytest.raises(error_type):
        await Retry(3).call(raising(error_type("x"), calls))
    assert calls == [1, 1, 1]


async def test_a_subclass_of_a_programming_error_is_one_too() -> None:
    """An error deriving from TypeError is not retried by default either."""

    class PayloadTypeError(TypeError):
        pass

    calls: list[int] = []
    with instant_retries(), pytest.raises(PayloadTypeError):
        await Retry(3).call(raising(PayloadTypeError("x"), calls))
    assert calls == [1]


@pytest.mark.parametrize(
    "on",
    [
        TypeError,
        (ConnectionError, TypeError),
        lambda error: True,
        tenacity.retry_if_exception_type(TypeError),
    ],
    ids=["named", "named-among-others", "predicate", "tenacity-strategy"],
)
async def test_retry_retries_a_programming_error_it_is_told_to(on: Any) -> None:
    """Naming the type, or passing a predicate or strategy, retries it: the user said so."""
    calls: list[int] = []
    with instant_retries(), pytest.raises(TypeError):
        await Retry(3, on=on).call(raising(TypeError("x"), calls))
    assert calls == [1, 1, 1]


@pytest.mark.parametrize("on", [Exception, (Exception, ConnectionError), BaseException])
async def test_a_broad_type_does_not_name_programming_errors(on: Any) -> None:
    """``on=Exception`` means "any failure", not "bugs too": a TypeError is not retried."""
    calls: list[int] = []
    with instant_retries(), pytest.raises(TypeError):
        await Retry(3, on=on).call(raising(TypeError("x"), calls))
    assert calls == [1]


async def test_naming_one_programming_error_does_not_name_the_others() -> None:
    """``on=(Exception, TypeError)`` retries a TypeError but not an AttributeError."""
    calls: list[int] = []
    retry = Retry(3, on=(Exception, TypeError))
    with instant_retries(), pytest.raises(AttributeError):
        await retry.call(raising(AttributeError("x"), calls))
    assert calls == [1]


async def test_fallback_lets_programming_errors_through() -> None:
    """A default Fallback answers a ConnectionError but raises a NameError."""
    fallback = Fallback(value="cached")
    assert await fallback.call(raising(ConnectionError("down"), [])) == "cached"
    with pytest.raises(NameError):
        await fallback.call(raising(NameError("undefined"), []))
    assert fallback.statistics().fallbacks == 1


@pytest.mark.parametrize("on", [AttributeError, lambda error: True], ids=["named", "predicate"])
async def test_fallback_answers_a_programming_error_it_is_told_to(on: Any) -> None:
    """``Fallback(on=AttributeError)`` or a predicate answers it."""
    fallback = Fallback(value="cached", on=on)
    assert await fallback.call(raising(AttributeError("x"), [])) == "cached"


async def test_breaker_counts_programming_errors_neither_way() -> None:
    """A breaker stays closed through any number of programming errors: they are
    ignored, neither failures nor successes."""
    breaker = CircuitBreaker("db", failure_threshold=2)
    for _ in range(5):
        with pytest.raises(TypeError):
            await breaker.call(raising(TypeError("bug"), []))
    assert breaker.state is CircuitState.CLOSED
    stats = breaker.statistics()
    assert (stats.failures, stats.successes, stats.ignored) == (0, 0, 5)


async def test_windowed_breaker_ignores_programming_errors() -> None:
    """A failure-rate breaker doesn't put programming errors in its window."""
    breaker = CircuitBreaker("db", failure_rate=0.5, window=4, min_calls=2)
    for _ in range(4):
        with pytest.raises(AssertionError):
            await breaker.call(raising(AssertionError("bug"), []))
    assert breaker.state is CircuitState.CLOSED
    assert breaker.statistics().window_calls == 0


async def test_half_open_probe_ending_in_a_programming_error_gives_its_permit_back() -> None:
    """A probe that hits a bug neither closes nor re-opens the breaker; the next call
    probes again."""
    clock = FakeClock()
    breaker = CircuitBreaker("db", failure_threshold=1, reset_timeout=5, clock=clock)
    with pytest.raises(ConnectionError):
        await breaker.call(raising(ConnectionError("down"), []))
    clock.advance(5)
    with pytest.raises(TypeError):
        await breaker.call(raising(TypeError("bug"), []))
    assert breaker.statistics().state is CircuitState.HALF_OPEN

    async def fine() -> str:
        return "ok"

    assert await breaker.call(fine) == "ok"
    assert breaker.state is CircuitState.CLOSED
    stats = breaker.statistics()
    assert (stats.calls, stats.successes, stats.failures, stats.ignored) == (3, 1, 1, 1)


async def test_hedge_does_not_hedge_after_a_programming_error() -> None:
    """A hedged attempt that hits a bug ends the call; no other attempt starts at once."""
    calls: list[int] = []
    hedge = Hedge(10.0, max_hedged=2, clock=FakeClock(auto_advance=False))
    with pytest.raises(TypeError):
        await hedge.call(raising(TypeError("bug"), calls))
    assert calls == [1]
    assert hedge.statistics().hedges == 0


async def test_pool_does_not_fail_over_after_a_programming_error() -> None:
    """An endpoint pool doesn't try the next instance after a bug, even with explicit
    failover_on types that don't name it."""
    instances = [Instance("svc", f"i{n}", "127.0.0.1", 8000 + n) for n in range(3)]
    tried: list[str] = []

    async def fn(instance: Instance) -> str:
        tried.append(instance.id)
        raise AttributeError("bug")

    for failover_on in (None, (Exception,)):
        tried.clear()
        pool = EndpointPool(instances, max_attempts=3, failover_on=failover_on)
        with pytest.raises(AttributeError):
            await pool.call(fn)
        assert len(tried) == 1


@pytest.mark.parametrize(
    ("make", "param"),
    [
        (lambda on: Retry(on=on), "Retry(on=...)"),
        (lambda on: Fallback(1, on=on), "Fallback(on=...)"),
        (lambda on: Hedge(1.0, on=on), "Hedge(on=...)"),
        (lambda on: CircuitBreaker(exclude=on), "CircuitBreaker(exclude=...)"),
    ],
)
def test_a_string_is_not_an_exception_type(make: Callable[[Any], object], param: str) -> None:
    """``on="ConnectionError"`` is a TypeError that says so and suggests the class."""
    with pytest.raises(TypeError) as info:
        make("ConnectionError")
    message = str(info.value)
    assert message.startswith(param)
    assert "'ConnectionError' is a string, not an exception type" in message
    assert message.endswith("pass the class: ConnectionError")


def test_a_string_in_a_tuple_and_an_unknown_name() -> None:
    """A name among types is caught too; an unknown name gets generic advice."""
    with pytest.raises(TypeError, match="'ConnectionError' is a string"):
        Retry(on=(TimeoutError, "ConnectionError"))
    with pytest.raises(TypeError, match=r"'HttpError' is a string.*exception class itself"):
        Retry(on="HttpError")


def test_default_verdicts_are_remembered_per_class_up_to_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default judgement is the same whether remembered or not, and classes beyond
    the bound (e.g. made on the fly) are judged without being remembered."""
    assert _validate.retryable_by_default(ConnectionError("x")) is True
    assert ConnectionError in _validate._VERDICTS
    monkeypatch.setattr(_validate, "_MAX_VERDICTS", 0)
    for base in (OSError, TypeError):
        made = type("Made", (base,), {})
        assert _validate.retryable_by_default(made("x")) is (base is OSError)
        assert made not in _validate._VERDICTS
    assert _validate.retryable_by_default(KeyboardInterrupt()) is False
