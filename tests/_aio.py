"""
Small helpers for tests that step the event loop by hand, and bounds for every wait.

A test never awaits something that could hang without a bound: `within` for a real-time
wait (a server answering, a connection closing), `promptly` for a call that should need
no fake-clock time at all, `until` for a condition reached through real I/O. The bounds
are generous (a loaded machine keeps them); pytest-timeout is the backstop behind them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

PROMPTLY = 5.0  # seconds: no step of a fake-clock test comes near it, even on a busy machine


async def settle(rounds: int = 5) -> None:
    """
    Let the event loop run the callbacks and task steps that are ready.
    """
    for _ in range(rounds):
        await asyncio.sleep(0)


async def result_of(task: asyncio.Task[T]) -> T:
    """
    Let the loop settle, then return (or raise) the task's outcome; fail, not hang, if
    the task is still waiting (e.g. on a fake clock nobody will advance).
    """
    await settle(20)  # enough for a call to unwind the tasks it cancelled
    assert task.done(), f"{task!r} is still running"
    return await task


async def within(awaitable: Awaitable[T], seconds: float = PROMPTLY) -> T:
    """
    Await `awaitable`; fail (TimeoutError) after `seconds` of real time instead of hanging.
    """
    async with asyncio.timeout(seconds):
        return await awaitable


async def promptly(awaitable: Awaitable[T]) -> T:
    """
    Await a call that should finish without the fake clock moving; fail, not hang, if
    it waits for the clock after all.
    """
    return await within(awaitable)


async def until(predicate: Callable[[], bool], *, seconds: float = 10.0) -> float:
    """
    Wait until `predicate()` holds (polled every few milliseconds); fail after `seconds`.

    For conditions reached through real I/O, where no event says when (a connection
    closed by the peer); anything the test itself can signal uses an `asyncio.Event`.

    Returns:
        How long the wait took, in seconds of real time (for tests that report it).
    """

    async def poll() -> None:
        # No event to wait on: the peer acts, so poll.
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.005)

    started = time.monotonic()
    try:
        await within(poll(), seconds)
    except TimeoutError:
        raise AssertionError(f"{predicate!r} still false after {seconds}s") from None
    return time.monotonic() - started
