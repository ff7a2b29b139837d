"""
One rule for request bodies, kept by both aiohttp clients: real bodies, a real server.

`ResilienceMiddleware` re-sends one aiohttp request; `DiscoveryClient` sends a request
per instance it tries. Each body kind is sent through both against a server whose first
answer is a 503: what the server received, and what the caller got, show whether the
body was sent again whole or not at all (never empty, never cut).
"""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
from aiohttp import web

from resilient import (
    CircuitBreaker,
    CircuitState,
    Hedge,
    InMemoryRegistry,
    Instance,
    Policy,
    Retry,
    pipeline,
)
from resilient.integrations.aiohttp import DiscoveryClient, ResilienceMiddleware
from resilient.integrations.aiohttp._attempts import Attempts
from resilient.integrations.aiohttp._client import _RequestAttempts
from resilient.testing import FakeClock
from tests._aio import settle, until, within
from tests.integrations.aiohttp.test_aiohttp_client import acquired

T = TypeVar("T")

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


def multipart_form() -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("key", "value")
    form.add_field("blob", VALUE, filename="blob.bin")
    form.add_field("stream", io.BytesIO(VALUE), filename="stream.bin")
    return form


def multipart_mixed() -> aiohttp.MultipartWriter:
    writer = aiohttp.MultipartWriter()
    writer.append("text")
    writer.append(io.BytesIO(VALUE))
    return writer


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("body", [multipart_form, multipart_mixed])
async def test_a_multipart_body_in_memory_is_sent_again_whole(
    recorder: Recorder, client: str, body: Any
) -> None:
    """
    A multipart body whose parts are in memory (a form with bytes, a BytesIO) is sent
    again whole by both: aiohttp marks a multipart writer consumed when a request ends,
    so the discovery client sends each instance a copy sharing the parts.
    """
    outcome = await within(CLIENTS[client](recorder, body()))
    assert outcome == (200, "200")
    assert len(recorder.bodies) == 2
    assert recorder.bodies[0] == recorder.bodies[1]
    assert recorder.bodies[0].count(VALUE) == 2 if body is multipart_form else 1


async def test_a_multipart_form_with_a_file_is_not_failed_over(
    recorder: Recorder, tmp_path: Path
) -> None:
    """A form with a file part: aiohttp closes the file when the request ends, so the
    discovery client can't send it to another instance (as a file body)."""
    with opened(tmp_path) as file:
        form = aiohttp.FormData()
        form.add_field("file", file, filename="value")
        outcome = await within(through_discovery(recorder, form))
    assert outcome == (503, "503")
    assert len(recorder.bodies) == 1


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


class Counting(Policy):
    """
    A user-written policy counting the attempts that reach it (inside the hedge).
    """

    kind = "counting"

    def __init__(self) -> None:
        super().__init__(name="counting", clock=None, hooks=None)
        self.entered = 0

    async def _run(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        self.entered += 1
        return await fn(*args, **kwargs)


async def test_a_hedge_never_sends_a_file_like_body_another_attempt_is_sending() -> None:
    """
    A file or BytesIO has one read position: two hedged attempts sending it at once
    would each send parts of it, short of their Content-Length, and hang. The hedge
    attempt is refused instead (not sent, not counted as a failure by the breaker it
    passed, not waiting with what it holds); the first attempt sends the body whole and
    answers the caller, and every connection goes back to the pool.
    """
    data = bytes(range(256)) * (16 * 2**12)  # 16 MiB: more than loopback buffers hold
    gate = asyncio.Event()
    bodies: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        bodies.append(b"")  # the first request's upload stalls until the gate opens
        await gate.wait()
        bodies[-1] = await request.read()
        return web.Response(text="ok")

    app = web.Application(client_max_size=2 * len(data))
    app.router.add_put("/k", handle)
    runner = web.AppRunner(app)
    await within(runner.setup())
    try:
        await within(web.TCPSite(runner, "127.0.0.1", 0).start())
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/k"
        clock = FakeClock()
        counting = Counting()
        hedge = Hedge(1.0, clock=clock)
        breaker = CircuitBreaker("backend", failure_threshold=1)
        connector = aiohttp.TCPConnector()
        middleware = ResilienceMiddleware(lambda key: pipeline(hedge, breaker, counting))
        async with aiohttp.ClientSession(middlewares=[middleware], connector=connector) as s:

            async def put() -> tuple[int, str]:
                async with s.put(url, data=io.BytesIO(data)) as response:
                    return response.status, await response.text()

            call = asyncio.create_task(put())
            await until(lambda: bool(bodies))  # the first attempt is uploading, stalled
            clock.advance(1.0)  # the hedge attempt starts
            await until(lambda: counting.entered == 2)
            await settle(50)  # time for it to connect and send, were it let through
            gate.set()
            assert await within(call) == (200, "ok")
            assert bodies == [data]
            assert hedge.statistics().hedges == 1
            assert breaker.statistics().failures == 0
            assert breaker.state is CircuitState.CLOSED
            assert acquired(connector) == 0
    finally:
        await within(runner.cleanup())


_MISSING = "<not set>"


def _fields(attempts: object) -> dict[str, object]:
    # Every slot of the middleware's attempts (theirs and `Attempts`'), read or marked unset.
    # Lists copied: the attempts go on to fill them.
    names = [*Attempts.__slots__, *_RequestAttempts.__slots__]
    fields = {name: getattr(attempts, name, _MISSING) for name in names if name != "_body"}
    return {name: v[:] if isinstance(v, list) else v for name, v in fields.items()}


class Snapshot(Policy):
    """
    A user-written policy that sees the middleware's attempts before the first is sent.
    """

    kind = "snapshot"

    def __init__(self) -> None:
        super().__init__(name="snapshot", clock=None, hooks=None)
        self.seen: list[tuple[dict[str, object], dict[str, object]]] = []

    async def _run(
        self, fn: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> T:
        (attempts,) = args
        # What `Attempts.__init__` makes of the same request and classifier.
        built = _RequestAttempts(attempts.request.body, attempts._failure_status)
        built.request, built.handler = attempts.request, attempts.handler
        built.middleware = attempts.middleware
        self.seen.append((_fields(attempts), _fields(built)))
        return await fn(*args, **kwargs)


BODY_KINDS: dict[str, Callable[[Path], Any]] = {
    "no body": lambda _: None,
    "empty bytes": lambda _: b"",
    "bytes": lambda _: VALUE,
    "text": lambda _: "text",
    "a form": lambda _: {"key": "value"},
    "FormData": lambda _: aiohttp.FormData({"key": "value"}),
    "multipart": lambda _: multipart_form(),
    "a BytesIO": lambda _: io.BytesIO(VALUE),
    "a generator": lambda _: generated(),
    "a payload": lambda _: aiohttp.payload.BytesPayload(VALUE),
}


@pytest.mark.parametrize("kind", BODY_KINDS)
async def test_the_middleware_builds_its_attempts_as_attempts_init_would(
    recorder: Recorder, kind: str, tmp_path: Path
) -> None:
    """
    The middleware sets the attempts' fields one by one instead of calling
    `Attempts.__init__` (a frame less per request): every field the constructor sets
    (bar ``_body``, read from the request instead) must be set, to the same value, for
    every kind of body, or a path reading the unset one fails with an AttributeError.
    """
    snapshot = Snapshot()

    def failing(status: int) -> bool:
        return status >= 500

    middleware = ResilienceMiddleware(lambda key: snapshot, failure_status=failing)
    async with (
        aiohttp.ClientSession(middlewares=[middleware]) as session,
        session.put(recorder.url, data=BODY_KINDS[kind](tmp_path)) as response,
    ):
        assert response.status == 503  # one attempt: nothing here retries
    ((fields, expected),) = snapshot.seen
    assert _MISSING not in fields.values()
    assert fields == expected
    assert fields["_failure_status"] is failing


async def test_the_middleware_builds_a_files_attempts_as_attempts_init_would(
    recorder: Recorder, tmp_path: Path
) -> None:
    """A file body too: file-like (no overlapping attempts), every field set."""
    snapshot = Snapshot()
    middleware = ResilienceMiddleware(lambda key: snapshot)
    with opened(tmp_path) as file:
        async with (
            aiohttp.ClientSession(middlewares=[middleware]) as session,
            session.put(recorder.url, data=file) as response,
        ):
            assert response.status == 503
    ((fields, expected),) = snapshot.seen
    assert fields == expected
    assert fields["_file_like"] is True
    assert fields["_one_shot"] is False
