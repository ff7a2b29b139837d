"""
Real server processes for integration tests: Redis, etcd and Prometheus.

    binary = require_binary("redis-server", package="redis-server")
    server = start_server(
        "redis-server",
        lambda port, data_dir: [binary, "--port", str(port), "--dir", str(data_dir)],
        data_dir=tmp_path,
    )
    try:
        ...  # talk to 127.0.0.1:server.port
    finally:
        server.stop()

A missing binary skips the test with the package to install, except when
``RESILIENT_REQUIRE_SERVERS=1`` (CI sets it): then it fails, so a server test can never
be skipped silently where the server is supposed to exist.

Ports come from the kernel (bind to port 0, read the port, close), so two test runs on
one machine don't collide; the small window in which another process could take the
port is covered by retrying the start on a fresh port when the server dies early.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from examples._process import LOCALHOST, free_port, log_tail

__all__ = [
    "LOCALHOST",
    "REQUIRE_SERVERS_ENV",
    "ServerExitedError",
    "ServerProcess",
    "ServerStartError",
    "free_port",
    "require_binary",
    "running_server",
    "servers_required",
    "start_server",
    "wait_for_http",
    "wait_for_port",
    "wait_until",
]

REQUIRE_SERVERS_ENV = "RESILIENT_REQUIRE_SERVERS"
"""The environment variable that turns "server missing" from a skip into a failure."""

CommandFactory = Callable[[int, Path], Sequence[str]]
"""Builds a server's argv from the port it must listen on and its data directory."""


class ServerStartError(RuntimeError):
    """
    A server process exited, or never listened, within its startup bound.
    """


class ServerExitedError(ServerStartError):
    """
    A server process exited before it listened (bad config, or its port was taken).
    """


def servers_required() -> bool:
    """
    Whether this run must not skip server tests (``RESILIENT_REQUIRE_SERVERS=1``).
    """
    return os.environ.get(REQUIRE_SERVERS_ENV, "").strip().lower() in {"1", "true", "yes"}


def require_binary(name: str, *, package: str | None = None) -> str:
    """
    Return the path of executable `name`, or skip the test when it is not installed.

    Args:
        name: The executable to look up on ``PATH`` (then in ``/usr/sbin``, ``/sbin``).
        package: The Debian package providing it, for the message (default: `name`).

    Returns:
        The absolute path of the executable.

    Raises:
        pytest.skip.Exception: It is missing (the test is skipped).
        pytest.fail.Exception: It is missing and ``RESILIENT_REQUIRE_SERVERS=1``.
    """
    search_path = os.pathsep.join((os.environ.get("PATH", os.defpath), "/usr/sbin", "/sbin"))
    found = shutil.which(name, path=search_path)
    if found is not None:
        return found
    message = f"{name} not installed: apt-get install {package or name}"
    if servers_required():
        pytest.fail(f"{message} ({REQUIRE_SERVERS_ENV}=1: server tests may not skip)")
    pytest.skip(message)


@dataclass(frozen=True, slots=True)
class ServerProcess:
    """
    A server started by `start_server`; `stop()` it when done.

    Attributes:
        name: A label for messages (usually the binary's name).
        host: The address it listens on.
        port: The TCP port it listens on.
        data_dir: Its data directory (also holds `log_path`).
        log_path: Where its stdout and stderr go, interleaved.
        process: The running process.
    """

    name: str
    host: str
    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def address(self) -> str:
        """
        ``host:port``.
        """
        return f"{self.host}:{self.port}"

    def output_tail(self, lines: int = 20) -> str:
        """
        Return the last `lines` lines the process wrote to stdout or stderr.
        """
        return log_tail(self.log_path, lines)

    def stop(self, timeout: float = 5.0) -> int:
        """
        Stop the process: SIGTERM, then SIGKILL if it is still running after `timeout`.

        Returns:
            Its exit status (negative for a signal, as `subprocess` reports it).
        """
        process = self.process
        if process.poll() is None:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    process.kill()
                process.wait(timeout)
        return process.returncode


def wait_until(
    predicate: Callable[[], bool],
    *,
    seconds: float,
    interval: float = 0.05,
    state: Callable[[], object] | None = None,
) -> float:
    """
    Poll `predicate()` every `interval` seconds until it holds; fail after `seconds`.

    The blocking sibling of `tests._aio.until`, for state kept by another process (a
    node's view of its cluster, a metric in Prometheus, a process still running).

    Args:
        predicate: The condition; it may act as well as look (send the request whose
            effect it checks).
        seconds: How long it may take.
        interval: The pause between two polls.
        state: What to show when it fails (called once, then); default: the predicate.

    Returns:
        How long the wait took, in seconds.

    Raises:
        AssertionError: `predicate()` still false after `seconds`.
    """
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started >= seconds:
            shown = state() if state is not None else predicate
            raise AssertionError(f"still waiting after {seconds:g}s: {shown!r}")
        time.sleep(interval)
    return time.monotonic() - started


def wait_for_port(server: ServerProcess, timeout: float) -> None:
    """
    Return once `server` accepts TCP connections on its port.

    Raises:
        ServerExitedError: The process exited first; the message carries the tail of
            its output.
        ServerStartError: It did not listen within `timeout` seconds (it is left
            running: stop it); the message carries the tail of its output.
    """
    deadline = time.monotonic() + timeout
    while True:
        status = server.process.poll()
        if status is not None:
            raise ServerExitedError(
                f"{server.name} exited with status {status} before listening on"
                f" {server.address}; its last output:\n{server.output_tail()}"
            )
        try:
            with socket.create_connection((server.host, server.port), timeout=0.25):
                return
        except OSError:
            pass
        if time.monotonic() >= deadline:
            raise ServerStartError(
                f"{server.name} did not listen on {server.address} within {timeout:g}s;"
                f" its last output:\n{server.output_tail()}"
            )
        time.sleep(0.02)


def wait_for_http(
    server: ServerProcess,
    url: str,
    timeout: float,
    *,
    ready: Callable[[bytes], bool] = lambda _body: True,
    state: str = "ready",
) -> None:
    """
    Return once a GET of `url` answers 2xx with a body `ready` accepts.

    For servers that listen before they serve (etcd before electing a leader, Prometheus
    before its TSDB is open): refused, failed and unready answers are retried.

    Raises:
        ServerStartError: Not `state` within `timeout` seconds; the message carries the
            tail of the server's output.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            # Our own http:// URL on loopback, never a file: or custom scheme.
            with urllib.request.urlopen(url, timeout=1.0) as answer:  # noqa: S310
                if ready(answer.read()):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise ServerStartError(
        f"{server.name} not {state} within {timeout:g}s:\n{server.output_tail()}"
    )


def start_server(
    name: str,
    command: CommandFactory,
    *,
    data_dir: Path,
    host: str = LOCALHOST,
    startup_timeout: float = 10.0,
    attempts: int = 3,
    env: Mapping[str, str] | None = None,
    port: int | None = None,
) -> ServerProcess:
    """
    Start a server on a free port of `host` and wait until it accepts connections.

    Args:
        name: A label for messages and the log file.
        command: Builds the argv from the chosen port and `data_dir`.
        data_dir: An existing (temporary) directory the server may write to.
        host: The address it must listen on.
        startup_timeout: Seconds each attempt may take to start listening.
        attempts: Fresh ports to try when the server exits before listening (another
            process may grab a free port between our check and the server's bind).
        env: Extra environment variables for the process.
        port: Listen on this port rather than a free one (to restart a server where
            its clients expect it); then there is one attempt only.

    Returns:
        The running server.

    Raises:
        ServerStartError: It never listened (it is stopped first), or every attempt
            exited early; the last attempt's output is in the message.
    """
    if attempts < 1:
        raise ValueError(f"start_server(attempts={attempts!r}): attempts must be >= 1")
    environment = {**os.environ, **(env or {})}
    if port is not None:
        attempts = 1
    for attempt in range(1, attempts + 1):
        listen = free_port(host) if port is None else port
        log_path = data_dir / f"{name}-{listen}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(  # argv built by the test, no shell
                list(command(listen, data_dir)),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=data_dir,
                env=environment,
                # Same process group as pytest: when a runner kills the group (Ctrl-C, a
                # CI timeout), the server goes too instead of outliving the run.
            )
        server = ServerProcess(name, host, listen, data_dir, log_path, process)
        try:
            wait_for_port(server, startup_timeout)
        except ServerExitedError:
            server.stop()
            if attempt == attempts:
                raise
        except BaseException:
            server.stop()
            raise
        else:
            return server
    raise AssertionError("unreachable")  # pragma: no cover


@contextmanager
def running_server(
    name: str,
    command: CommandFactory,
    *,
    data_dir: Path,
    host: str = LOCALHOST,
    startup_timeout: float = 10.0,
) -> Iterator[ServerProcess]:
    """
    `start_server` as a context manager: the server is stopped on exit, always.
    """
    server = start_server(
        name, command, data_dir=data_dir, host=host, startup_timeout=startup_timeout
    )
    try:
        yield server
    finally:
        server.stop()
