"""
A benchmark's aiohttp server in a child process on loopback, so its CPU time is not
billed to the client that measures it.

The child runs ``python -m <module> --serve ...`` (the benchmark module itself), calls
`serve_app`, which prints ``PORT <n>`` once it listens on 127.0.0.1, and stops when the
parent closes its stdin or after `lifetime` seconds, so it never outlives the run.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from aiohttp import web

__all__ = ["HOST", "ServerProcess", "serve_app"]

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent


async def serve_app(app: web.Application, lifetime: float, **runner_options: Any) -> None:
    """Serve `app` on loopback until stdin closes or `lifetime` seconds pass.

    Prints ``PORT <n>`` on stdout once it listens; `runner_options` go to `AppRunner`.
    """
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **runner_options)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((HOST, 0))  # loopback only, a port the kernel picks
    site = web.SockSite(runner, sock, backlog=1024)
    await site.start()
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()

    def watch_stdin() -> None:
        sys.stdin.read()  # returns at EOF: the client is done (or gone)
        loop.call_soon_threadsafe(stdin_closed.set)

    threading.Thread(target=watch_stdin, daemon=True).start()
    try:
        await asyncio.wait_for(stdin_closed.wait(), lifetime)
    except TimeoutError:
        print("server: lifetime reached, stopping", file=sys.stderr)
    finally:
        await runner.cleanup()


class ServerProcess:
    """``python -m <module> --serve <args>`` in a child process; a context manager
    that always stops it. `port` is where it listens once entered."""

    def __init__(self, module: str, args: Sequence[str] = ()) -> None:
        self._argv = [sys.executable, "-m", module, "--serve", *args]
        self._process: subprocess.Popen[str] | None = None
        self.port = 0

    def __enter__(self) -> ServerProcess:
        self._process = subprocess.Popen(  # our own module, no shell
            self._argv,
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = _readline(self._process.stdout, timeout=15.0)
        if not line.startswith("PORT "):
            self.__exit__()
            raise RuntimeError(f"benchmark server did not start (said {line!r})")
        self.port = int(line.split()[1])
        return self

    def __exit__(self, *_: object) -> None:
        process = self._process
        if process is None:
            return
        if process.stdin is not None:
            process.stdin.close()  # the server's cue to stop
        try:
            process.wait(10.0)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5.0)


def _readline(stream: IO[str], timeout: float) -> str:
    """One line from `stream`, or "" when none comes within `timeout` seconds."""
    result: list[str] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0].strip() if result else ""
