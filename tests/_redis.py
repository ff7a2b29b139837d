"""
Real ``redis-server`` processes for the tests that need one, and a flushed client.

The fixtures are imported by the conftest of each folder whose tests use them
(tests/policies, tests/project), so the rest of the suite never imports redis.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import redis.asyncio

from tests._servers import LOCALHOST, ServerProcess, require_binary, running_server

__all__ = ["RedisServer", "aclient", "redis_client", "redis_private", "redis_server"]


@dataclass(frozen=True, slots=True)
class RedisServer:
    """
    A running ``redis-server`` (no persistence, loopback only).

    Attributes:
        host: The address it listens on.
        port: Its TCP port.
        process: The server process.
    """

    host: str
    port: int
    process: ServerProcess

    @property
    def url(self) -> str:
        """
        ``redis://host:port/0``, for `redis.Redis.from_url` and for subprocesses.
        """
        return f"redis://{self.host}:{self.port}/0"

    def client(self) -> redis.Redis:
        """
        Return a new client for database 0 (the caller closes it).
        """
        return redis.Redis(host=self.host, port=self.port, db=0, socket_timeout=5.0)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """
    A ``redis-server`` on 127.0.0.1 and a free port, for the whole session.

    Skips when ``redis-server`` is missing (fails instead under
    ``RESILIENT_REQUIRE_SERVERS=1``).
    """
    with running_server(
        "redis-server", _redis_command(), data_dir=tmp_path_factory.mktemp("redis")
    ) as process:
        yield RedisServer(process.host, process.port, process)


@pytest.fixture
def redis_private(tmp_path: Path) -> Iterator[RedisServer]:
    """
    A ``redis-server`` of this test's own, which it may freeze (SIGSTOP) and thaw.
    """
    with running_server("redis-server", _redis_command(), data_dir=tmp_path) as process:
        try:
            yield RedisServer(process.host, process.port, process)
        finally:
            process.process.send_signal(signal.SIGCONT)  # a frozen server can't stop


def _redis_command() -> Callable[[int, Path], list[str]]:
    binary = require_binary("redis-server", package="redis-server")

    def command(port: int, data_dir: Path) -> list[str]:
        return [
            binary,
            "--bind", LOCALHOST,
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(data_dir),
            "--daemonize", "no",
        ]  # fmt: skip

    return command


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """
    A client of `redis_server` whose database was flushed before the test.
    """
    client = redis_server.client()
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def aclient(redis_server: RedisServer) -> AsyncIterator[redis.asyncio.Redis]:
    """
    An asyncio client of `redis_server` (closed after the test; nothing flushed).
    """
    client = redis.asyncio.Redis(host=redis_server.host, port=redis_server.port)
    try:
        yield client
    finally:
        await client.aclose()
