"""
Static types users get, checked by mypy (``tests/`` is in its files) and run by pytest.

`assert_type` fails the mypy run when the inferred type differs, so these tests fail
the build, not just a run, when a signature regresses.
"""

from __future__ import annotations

from typing import assert_type

from resilient import Fallback, Retry, pipeline


async def fetch_count() -> int:
    return 7


async def failing_count() -> int:
    raise ConnectionError("down")


async def test_fallback_value_none_widens_the_result_to_optional() -> None:
    """``Fallback(value=None).call(f)`` is ``T | None`` for an ``f`` returning ``T``."""
    fallback = Fallback(value=None)
    result = await fallback.call(fetch_count)
    assert_type(result, int | None)
    assert result == 7
    assert await fallback.call(failing_count) is None


async def test_fallback_value_of_another_type() -> None:
    """A fallback value of another type joins the result's type."""
    result = await Fallback("unknown").call(failing_count)
    assert_type(result, int | str)
    assert result == "unknown"


async def test_fallback_handlers_sync_and_async() -> None:
    """A handler's return type (awaited, for an async handler) joins the result's type."""

    def sync_handler(error: BaseException) -> float:
        return 0.5

    async def async_handler(error: BaseException) -> bytes:
        return b"cached"

    assert_type(await Fallback(handler=sync_handler).call(failing_count), int | float)
    assert_type(await Fallback(handler=async_handler).call(failing_count), int | bytes)


async def test_fallback_as_a_decorator() -> None:
    """A function decorated by ``Fallback(value=None)`` returns ``T | None``."""
    guarded = Fallback(value=None)(fetch_count)
    assert_type(await guarded(), int | None)


async def test_other_policies_keep_the_functions_type() -> None:
    """Retry and pipelines return exactly what the function returns."""
    assert_type(await Retry().call(fetch_count), int)
    assert_type(await pipeline(Retry()).call(fetch_count), int)
