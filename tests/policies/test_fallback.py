"""
Tests for `Fallback`: answering failures with a value or a handler.
"""

from __future__ import annotations

import asyncio
from typing import Any, TypeVar

import pytest

from resilient import Fallback, FallbackStatistics, FallbackUsed, TimeoutExceeded
from resilient.testing import FakeClock, capture_events
from tests._aio import result_of

T = TypeVar("T")


async def ok() -> str:
    return "fresh"


def failing(error: BaseException) -> Any:
    async def fn() -> str:
        raise error

    return fn


async def test_success_returns_own_result() -> None:
    """A successful call returns its own result; the fallback is not used."""
    fallback = Fallback("cached")
    assert await fallback.call(ok) == "fresh"
    assert fallback.statistics() == FallbackStatistics(calls=1, fallbacks=0)


async def test_value_replaces_failure() -> None:
    """A failed call returns the fallback value."""
    fallback = Fallback("cached")
    assert await fallback.call(failing(ConnectionError("down"))) == "cached"
    assert fallback.statistics() == FallbackStatistics(calls=1, fallbacks=1)


async def test_none_is_a_valid_value() -> None:
    """`value=None` is a real fallback value, not 'no value given'."""
    fallback = Fallback(value=None)
    assert await fallback.call(failing(ValueError("x"))) is None
    assert fallback.statistics().fallbacks == 1


async def test_sync_handler_gets_the_error() -> None:
    """A sync handler is called with the exception and its return value is the answer."""
    seen: list[BaseException] = []
    error = ValueError("bad")

    def handler(exc: BaseException) -> str:
        seen.append(exc)
        return f"handled {exc}"

    assert await Fallback(handler=handler).call(failing(error)) == "handled bad"
    assert seen == [error]
    assert seen[0] is error


async def test_async_handler_is_awaited() -> None:
    """An async handler is awaited and its result is the answer."""
    clock = FakeClock()

    async def handler(exc: BaseException) -> str:
        await clock.sleep(1)
        return f"async {type(exc).__name__}"

    assert await Fallback(handler=handler).call(failing(KeyError("k"))) == "async KeyError"
    assert clock.sleeps == [1]


async def test_handler_not_called_on_success() -> None:
    """The handler only runs for failures."""
    calls: list[BaseException] = []
    assert await Fallback(handler=calls.append).call(ok) == "fresh"
    assert calls == []


async def test_handler_error_propagates() -> None:
    """An error raised by the handler propagates, with the original as its context."""
    original = ValueError("original")

    def handler(exc: BaseException) -> str:
        raise RuntimeError("handler broke")

    with pytest.raises(RuntimeError, match="handler broke") as info:
        await Fallback(handler=handler).call(failing(original))
    assert info.value.__context__ is original


async def test_on_types_filters() -> None:
    """With `on=` types, other errors propagate unchanged."""
    fallback = Fallback("cached", on=(ConnectionError, TimeoutError))
    assert await fallback.call(failing(ConnectionError())) == "cached"
    assert await fallback.call(failing(TimeoutExceeded("db", 1.0))) == "cached"
    other = KeyError("not handled")
    with pytest.raises(KeyError) as info:
        await fallback.call(failing(other))
    assert info.value is other
    assert fallback.statistics() == FallbackStatistics(calls=3, fallbacks=2)


async def test_on_predicate() -> None:
    """With `on=` a predicate, only errors it accepts are answered."""
    fallback = Fallback("cached", on=lambda e: getattr(e, "status", 0) >= 500)

    class HTTPError(Exception):
        def __init__(self, status: int) -> None:
            super().__init__(status)
            self.status = status

    assert await fallback.call(failing(HTTPError(503))) == "cached"
    with pytest.raises(HTTPError):
        await fallback.call(failing(HTTPError(404)))


@pytest.mark.parametrize("on", [Exception, BaseException, lambda e: True])
async def test_cancelled_error_not_caught(on: Any) -> None:
    """A CancelledError raised by the call propagates, whatever `on=` says."""
    fallback = Fallback("cached", on=on)
    with pytest.raises(asyncio.CancelledError):
        await fallback.call(failing(asyncio.CancelledError()))
    assert fallback.statistics().fallbacks == 0


async def test_external_cancel_propagates() -> None:
    """Cancelling the caller is not answered by the fallback."""
    clock = FakeClock(auto_advance=False)
    fallback = Fallback("cached", on=BaseException)
    task = asyncio.create_task(fallback.call(clock.sleep, 10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await result_of(task)
    assert fallback.statistics().fallbacks == 0


async def test_keyboard_interrupt_not_caught() -> None:
    """BaseExceptions other than Exception (e.g. KeyboardInterrupt) are never answered."""
    with pytest.raises(KeyboardInterrupt):
        await Fallback("cached").call(failing(KeyboardInterrupt()))


async def test_fallback_used_event() -> None:
    """A fallback answer emits FallbackUsed carrying the replaced error."""
    clock = FakeClock(start=5.0)
    error = ConnectionError("down")
    seen: list[object] = []
    fallback = Fallback("cached", name="prices", clock=clock, hooks=[seen.append])
    with capture_events(FallbackUsed) as events:
        await fallback.call(failing(error))
        await fallback.call(ok)
    assert events == [FallbackUsed(kind="fallback", name="prices", time=5.0, error=error)]
    assert [e for e in seen if isinstance(e, FallbackUsed)] == events


async def test_decorator() -> None:
    """As a decorator, Fallback keeps the function's name and answers its failures."""

    @Fallback(value=-1)
    async def parse(text: str) -> int:
        """Parse an int."""
        return int(text)

    assert parse.__name__ == "parse"
    assert parse.__doc__ == "Parse an int."
    assert await parse("12") == 12
    assert await parse("twelve") == -1


def test_repr() -> None:
    """The repr shows the answer and the counters."""
    assert repr(Fallback(0, name="n")) == "<Fallback 'n' value=0 calls=0 fallbacks=0>"
    assert "handler=" in repr(Fallback(handler=print))


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "param"),
    [
        ((), {}, ValueError, "value"),
        ((), {}, ValueError, "handler"),
        ((1,), {"handler": print}, ValueError, "value"),
        ((None,), {"handler": print}, ValueError, "handler"),
        ((), {"handler": "not callable"}, TypeError, "handler"),
        ((1,), {"on": 42}, TypeError, "on"),
        ((1,), {"on": [ValueError, 3]}, TypeError, "on"),
        ((1,), {"name": ""}, ValueError, "name"),
        ((1,), {"clock": object()}, TypeError, "clock"),
        ((1,), {"hooks": ["x"]}, TypeError, "hooks"),
    ],
)
def test_misconfiguration_names_parameter(
    args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], param: str
) -> None:
    """A bad parameter fails at construction with an error naming it."""
    with pytest.raises(error, match=rf"\b{param}\b"):
        Fallback(*args, **kwargs)
