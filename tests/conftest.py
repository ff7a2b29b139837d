"""
Shared fixtures: a real Redis server for the session, and a flushed client per test.

Tests that use a server fixture get the `server` marker automatically (as well as any
they set themselves), so ``pytest -m "not server"`` runs the rest without one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests._servers import LOCALHOST, ServerProcess, require_binary, running_server

SERVER_FIXTURES = frozenset({"redis_server", "redis_client"})
"""Fixtures that need a real server process; their tests are marked `server`."""


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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """
    Mark every test that uses a server fixture with `server`.
    """
    for item in items:
        if SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.server)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """
    A ``redis-server`` on 127.0.0.1 and a free port, for the whole session.

    Skips when ``redis-server`` is missing (fails instead under
    ``RESILIENT_REQUIRE_SERVERS=1``).
    """
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

    with running_server(
        "redis-server", command, data_dir=tmp_path_factory.mktemp("redis")
    ) as process:
        yield RedisServer(process.host, process.port, process)


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
