"""
Small helpers for tests that step the event loop by hand.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


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


async def promptly(awaitable: Awaitable[T]) -> T:
    """
    Await a call that should finish without the fake clock moving; fail, not hang, if
    it waits for the clock after all.
    """
    async with asyncio.timeout(1.0):
        return await awaitable
