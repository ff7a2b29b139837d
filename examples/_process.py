"""
Small helpers for running server processes on loopback (the examples and the tests).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

__all__ = ["LOCALHOST", "free_port", "log_tail", "uvloop_factory"]

LOCALHOST = "127.0.0.1"


def free_port(host: str = LOCALHOST) -> int:
    """
    Return a TCP port on `host` that was free a moment ago (the kernel's choice).
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def log_tail(path: Path, lines: int = 20) -> str:
    """
    Return the last `lines` lines of the log file at `path` (a note when there are none).
    """
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"<no output: {error}>"
    tail = text.splitlines()[-lines:]
    return "\n".join(tail) if tail else "<no output>"


def uvloop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """
    Uvloop's loop factory for `asyncio.Runner`, or None (asyncio's) when not installed.
    """
    try:
        import uvloop  # noqa: PLC0415  # optional: the kv extra installs it where it builds
    except ImportError:  # optional: the kv extra installs it where it builds
        return None
    return uvloop.new_event_loop
