"""
One rule for request bodies, kept by both aiohttp clients: real bodies, a real server.

`ResilienceMiddleware` re-sends one aiohttp request; `DiscoveryClient` sends a request
per instance it tries. Each body kind is sent through both against a server whose first
answer is a 503: what the server received, and what the caller got, show whether the
body was sent again whole or not at all (never empty, never cut).
"""

from __future__ import annotations

import io
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from resilient import InMemoryRegistry, Instance, Retry
from resilient.integrations.aiohttp import DiscoveryClient, ResilienceMiddleware
from resilient.testing import FakeClock
from tests._aio import within

VALUE = b"important value"


@dataclass
class Recorder:
    """
    A server that records every body it reads and answers 503 to the first request.
    """

    bodies: list[bytes] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.read())
        status = 503 if len(self.bodies) == 1 else 200
        return web.Response(status=status, text=str(status))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/k"


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    recorder = Recorder()
    app = web.Application()
    app.router.add_put("/k", recorder.handle)
    recorder.runner = web.AppRunner(app)
    await within(recorder.runner.setup())
    await within(web.TCPSite(recorder.runner, "127.0.0.1", 0).start())
    recorder.port = recorder.runner.addresses[0][1]
    yield recorder
    await within(recorder.runner.cleanup())


@contextmanager
def opened(tmp_path: Path) -> Iterator[Any]:
    path = tmp_path / "value"
    path.write_bytes(VALUE)
    with path.open("rb") as file:
        yield file


async def generated() -> AsyncIterator[bytes]:
    yield VALUE[:9]
    yield VALUE[9:]


async def through_middleware(recorder: Recorder, data: object) -> tuple[int, str]:
    middleware = ResilienceMiddleware(lambda key: Retry(3, clock=FakeClock(), name=key))
    async with (
        aiohttp.ClientSession(middlewares=[middleware]) as session,
        session.put(recorder.url, data=data) as response,
    ):
        return response.status, await response.text()


async def through_discovery(recorder: Recorder, data: object) -> tuple[int, str]:
    # Two instances at one address: the second attempt fails over to "the other one".
    registry = InMemoryRegistry()
    for name in ("a", "b"):
        await registry.register(Instance("kv", name, "127.0.0.1", recorder.port))
    async with (
        aiohttp.ClientSession() as session,
        DiscoveryClient(session, registry) as client,
        client.request("PUT", "kv", "/k", data=data) as response,
    ):
        return response.status, await response.text()


CLIENTS = {"middleware": through_middleware, "discovery": through_discovery}


@pytest.mark.parametrize("client", CLIENTS)
async def test_bytes_are_sent_again_whole(recorder: Recorder, client: str) -> None:
    """Bytes are in memory: after the 503 the second attempt sends them whole."""
    outcome = await within(CLIENTS[client](recorder, VALUE))
    assert outcome == (200, "200")
    assert recorder.bodies == [VALUE, VALUE]


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_bytes_io_is_sent_again_whole(recorder: Recorder, client: str) -> None:
    """A BytesIO is in memory, and aiohttp rewinds it: sent again whole by both."""
    outcome = await within(CLIENTS[client](recorder, io.BytesIO(VALUE)))
    assert outcome == (200, "200")
    assert recorder.bodies == [VALUE, VALUE]


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_form_is_sent_again_whole(recorder: Recorder, client: str) -> None:
    """A form (pairs) is encoded in memory: sent again whole, by both clients."""
    outcome = await within(CLIENTS[client](recorder, [("key", "value"), ("and", "more")]))
    assert outcome == (200, "200")
    assert recorder.bodies == [b"key=value&and=more"] * 2


@pytest.mark.parametrize("client", CLIENTS)
async def test_form_data_is_sent_again_whole(recorder: Recorder, client: str) -> None:
    """A `FormData` is encoded once, in memory: sent again whole by both."""
    outcome = await within(CLIENTS[client](recorder, aiohttp.FormData({"key": "value"})))
    assert outcome == (200, "200")
    assert recorder.bodies == [b"key=value"] * 2


async def test_a_file_is_rewound_within_one_request(recorder: Recorder, tmp_path: Path) -> None:
    """The middleware re-sends one request: aiohttp rewinds its file, sent whole again."""
    with opened(tmp_path) as file:
        outcome = await within(through_middleware(recorder, file))
    assert outcome == (200, "200")
    assert recorder.bodies == [VALUE, VALUE]


async def test_a_file_is_not_failed_over(recorder: Recorder, tmp_path: Path) -> None:
    """aiohttp closes a file body when its request ends, so the discovery client can't
    send it to another instance: the caller gets the first instance's 503."""
    with opened(tmp_path) as file:
        outcome = await within(through_discovery(recorder, file))
    assert outcome == (503, "503")
    assert recorder.bodies == [VALUE]


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_generator_is_sent_once(recorder: Recorder, client: str) -> None:
    """A generator is read once: the request runs once, the caller gets its 503."""
    outcome = await within(CLIENTS[client](recorder, generated()))
    assert outcome == (503, "503")
    assert recorder.bodies == [VALUE]


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_pipe_is_sent_once(recorder: Recorder, client: str) -> None:
    """A file that can't seek back (a pipe) is read once: the caller gets its 503."""
    read_end, write_end = os.pipe()
    os.write(write_end, VALUE)
    os.close(write_end)
    with open(read_end, "rb") as pipe:  # noqa: ASYNC230  # a pipe: opening never blocks
        outcome = await within(CLIENTS[client](recorder, pipe))
    assert outcome == (503, "503")
    assert recorder.bodies == [VALUE]
