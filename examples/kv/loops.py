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

A context is copied into worker threads (`asyncio.to_thread`) and survives a fork, so
the record names the thread that recorded it and the fork it was made in: elsewhere
(a worker thread, a loop run inside one, a forked child) asyncio answers, as 3.12 does.
"""

from __future__ import annotations

import asyncio
import os
from contextvars import ContextVar
from threading import get_ident

__all__ = ["running_loop", "use_loop"]

_Record = tuple[asyncio.AbstractEventLoop, int, int]  # the loop, its thread, the fork

_LOOP: ContextVar[_Record | None] = ContextVar("kv_loop", default=None)

_forks = 0  # bumped in a forked child: records made before the fork no longer match


def _forked() -> None:
    global _forks  # noqa: PLW0603  # one counter per process, bumped by the fork hook
    _forks += 1


os.register_at_fork(after_in_child=_forked)


def use_loop(loop: asyncio.AbstractEventLoop) -> None:
    """
    Record `loop`, the running loop, for everything started from the current context on.
    """
    _LOOP.set((loop, get_ident(), _forks))


def running_loop() -> asyncio.AbstractEventLoop:
    """
    The running event loop: the one `use_loop` recorded, else asyncio's answer.

    The record counts only in the thread and process that made it: a worker thread
    that inherited the context (or runs a loop of its own) asks asyncio.

    Raises:
        RuntimeError: None recorded and no loop running (as `asyncio.get_running_loop`).
    """
    record = _LOOP.get()
    if record is not None and record[1] == get_ident() and record[2] == _forks:
        return record[0]
    return asyncio.get_running_loop()
