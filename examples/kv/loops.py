"""
`running_loop()`: the node's event loop, without a system call per request on 3.11.

CPython 3.11's `asyncio.get_running_loop()` calls ``getpid()`` every time (to tell a
forked child from its parent; 3.12 resets the running loop in the child instead). A node
asks for its loop several times per request (deadlines, futures, batches, the writer's
jobs): a sampling profile of a coordinator at 1,500 PUT/s found ``getpid`` among its
event-loop thread's largest costs. `serve` records the loop in a context variable before it builds
the app, so every task and callback started from there on (the request handlers, the
batches, the background tasks) reads it with one C call; anywhere else (unit tests, a
loop of another thread) asks asyncio as before.

Only for code running *on* the node's loop: a function handed to a worker thread
inherits the context too, and must not take the loop it reads for a running one.
"""

from __future__ import annotations

import asyncio
from contextvars import ContextVar

__all__ = ["running_loop", "use_loop"]

_LOOP: ContextVar[asyncio.AbstractEventLoop | None] = ContextVar("kv_loop", default=None)


def use_loop(loop: asyncio.AbstractEventLoop) -> None:
    """
    Record `loop`, the running loop, for everything started from the current context on.
    """
    _LOOP.set(loop)


def running_loop() -> asyncio.AbstractEventLoop:
    """
    The running event loop: the one `use_loop` recorded, else asyncio's answer.

    Raises:
        RuntimeError: None recorded and no loop running (as `asyncio.get_running_loop`).
    """
    loop = _LOOP.get()
    return loop if loop is not None else asyncio.get_running_loop()
