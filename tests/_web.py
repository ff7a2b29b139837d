"""
Serving aiohttp applications in tests: the `serve` fixture (imported by the conftest of
each folder whose tests use it) and the shapes those tests share.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import test_utils, web
from yarl import URL

from tests._servers import LOCALHOST

__all__ = ["Get", "Serve", "json_body", "live_app", "serve"]

Serve = Callable[[web.Application], Awaitable[URL]]
Get = Callable[[Mapping[str, str]], tuple[int, dict[str, Any]]]
"""GET a fixed path with these headers: the status and the JSON body ({} if not JSON)."""


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """
    Serve applications on 127.0.0.1 and ephemeral ports; stop them afterwards.
    """
    servers: list[test_utils.TestServer] = []

    async def start(app: web.Application) -> URL:
        server = test_utils.TestServer(app, host=LOCALHOST)
        servers.append(server)
        await server.start_server()
        return server.make_url("/")

    yield start
    for server in servers:
        await server.close()


def json_body(text: str) -> dict[str, Any]:
    """
    A response body as a JSON object; {} when it is not one.
    """
    try:
        body = json.loads(text)
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


@contextmanager
def live_app(app: web.Application, path: str) -> Iterator[Get]:
    """
    Serve `app` and GET `path` from a client, both on a loop of their own.

    For hypothesis tests: each example runs one request to completion on this loop, so
    the server is started once per test, not once per example.
    """
    with asyncio.Runner() as runner:
        server = test_utils.TestServer(app, host=LOCALHOST)
        runner.run(server.start_server())
        session = runner.run(_open_session())

        async def get(headers: Mapping[str, str]) -> tuple[int, dict[str, Any]]:
            async with session.get(server.make_url(path), headers=headers) as response:
                return response.status, json_body(await response.text())

        try:
            yield lambda headers: runner.run(get(headers))
        finally:
            runner.run(session.close())
            runner.run(server.close())


async def _open_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()
