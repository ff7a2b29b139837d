"""
Tests for `DiscoveryClient` against real aiohttp servers on loopback.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from resilient import (
    CircuitBreaker,
    CircuitState,
    InMemoryRegistry,
    Instance,
    NoHealthyInstanceError,
    PowerOfTwoChoices,
    RoundRobin,
    Timeout,
    TimeoutExceeded,
)
from resilient.integrations.aiohttp import DiscoveryClient
from tests._paths import REPO_ROOT
from tests._run import run_python

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Server:
    instance: Instance
    runner: web.AppRunner
    handler: Handler
    hits: list[str] = field(default_factory=list)


async def start_server(service: str, name: str, handler: Handler) -> Server:
    app = web.Application()
    runner = web.AppRunner(app)
    holder: list[Server] = []

    async def counted(request: web.Request) -> web.StreamResponse:
        holder[0].hits.append(request.method)
        return await holder[0].handler(request)

    app.router.add_route("*", "/{tail:.*}", counted)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server = Server(Instance(service, name, "127.0.0.1", port), runner, handler)
    holder.append(server)
    return server


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"path": request.path})


async def broken(_: web.Request) -> web.Response:
    return web.json_response({"error": "boom"}, status=500)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client_session:
        yield client_session


async def test_one_failing_instance_of_three_is_ejected(
    session: aiohttp.ClientSession,
) -> None:
    """With 1 of 3 instances failing, >= 99% of 1,000 requests succeed, and the failing
    instance gets no traffic while its breaker is open."""
    registry = InMemoryRegistry()
    servers = [
        await start_server("kv", "kv-1", ok),
        await start_server("kv", "kv-2", broken),
        await start_server("kv", "kv-3", ok),
    ]
    for server in servers:
        await registry.register(server.instance)
    client = DiscoveryClient(
        session,
        registry,
        balancer=PowerOfTwoChoices,
        breaker=lambda i: CircuitBreaker(name=i.id, failure_threshold=3, reset_timeout=60),
    )
    bad = servers[1]
    pool = await client.pool("kv")
    hits_while_open = 0

    async def watch_bad(request: web.Request) -> web.Response:
        nonlocal hits_while_open
        if pool.breaker_for(bad.instance).state is CircuitState.OPEN:
            hits_while_open += 1
        return await broken(request)

    bad.handler = watch_bad
    outcomes: Counter[int] = Counter()
    limit = asyncio.Semaphore(20)

    async def one(n: int) -> None:
        async with limit, await client.get("kv", f"/keys/{n}") as response:
            outcomes[response.status] += 1

    try:
        await asyncio.gather(*(one(n) for n in range(1000)))
    finally:
        await client.close()
        for server in servers:
            await server.runner.cleanup()
    assert outcomes[200] >= 990, outcomes
    assert hits_while_open == 0
    assert pool.breaker_for(bad.instance).state is CircuitState.OPEN
    assert len(servers[0].hits) + len(servers[2].hits) >= 990
    assert pool.statistics().ejected == ("kv-2",)


async def test_all_failing_returns_the_last_response(session: aiohttp.ClientSession) -> None:
    """When every attempt fails, the caller gets the last 5xx response, body readable."""
    registry = InMemoryRegistry()
    servers = [await start_server("kv", f"kv-{n}", broken) for n in range(2)]
    for server in servers:
        await registry.register(server.instance)
    async with (
        DiscoveryClient(session, registry) as client,
        await client.get("kv", "/x") as response,
    ):
        assert response.status == 500
        assert await response.json() == {"error": "boom"}
    assert [len(s.hits) for s in servers] == [1, 1]  # each tried once, then gave up
    for server in servers:
        await server.runner.cleanup()


async def test_post_goes_to_one_instance_only(session: aiohttp.ClientSession) -> None:
    """A non-idempotent request is not failed over to another instance."""
    registry = InMemoryRegistry()
    servers = [await start_server("kv", f"kv-{n}", broken) for n in range(3)]
    for server in servers:
        await registry.register(server.instance)
    async with (
        DiscoveryClient(session, registry) as client,
        await client.post("kv", "/x", json={"v": 1}) as response,
    ):
        assert response.status == 500
    assert sum(len(s.hits) for s in servers) == 1
    for server in servers:
        await server.runner.cleanup()


async def test_deregistered_instance_gets_no_traffic(session: aiohttp.ClientSession) -> None:
    """After an instance is deregistered, requests only reach the others."""
    registry = InMemoryRegistry()
    servers = [await start_server("kv", f"kv-{n}", ok) for n in range(2)]
    for server in servers:
        await registry.register(server.instance)
    async with DiscoveryClient(session, registry) as client:
        pool = await client.pool("kv")
        await registry.deregister(servers[0].instance)
        view = client._views["kv"]
        await view.wait_for(lambda xs: [i.id for i in xs] == ["kv-1"])
        before = len(servers[0].hits)
        for _ in range(10):
            async with await client.get("kv", "/") as response:
                assert response.status == 200
        assert len(servers[0].hits) == before
        assert pool.statistics().instances == 1
    for server in servers:
        await server.runner.cleanup()


async def test_unknown_service_fails_fast(session: aiohttp.ClientSession) -> None:
    """A service with no instances raises NoHealthyInstanceError, nothing is sent."""
    async with DiscoveryClient(session, InMemoryRegistry()) as client:
        with pytest.raises(NoHealthyInstanceError, match="'ghost'"):
            await client.get("ghost", "/")


async def test_connection_refused_fails_over(session: aiohttp.ClientSession) -> None:
    """An instance that refuses connections is failed over to a live one."""
    registry = InMemoryRegistry()
    live = await start_server("kv", "kv-live", ok)
    dead = await start_server("kv", "kv-dead", ok)
    await dead.runner.cleanup()  # the port now refuses connections
    await registry.register(dead.instance)
    await registry.register(live.instance)
    async with DiscoveryClient(session, registry) as client:
        for _ in range(4):
            async with await client.get("kv", "/") as response:
                assert response.status == 200
    assert len(live.hits) == 4
    await live.runner.cleanup()


async def test_path_must_be_absolute(session: aiohttp.ClientSession) -> None:
    """A relative path is a ValueError naming it."""
    async with DiscoveryClient(session, InMemoryRegistry()) as client:
        with pytest.raises(ValueError, match="path"):
            await client.get("kv", "keys")


async def test_callers_mistakes_eject_no_instance(session: aiohttp.ClientSession) -> None:
    """A request aiohttp refuses to send (a bad header) fails as is, and counts against
    no instance: later good requests still reach them all."""
    registry = InMemoryRegistry()
    servers = [await start_server("kv", f"kv-{n}", ok) for n in range(2)]
    for server in servers:
        await registry.register(server.instance)
    async with DiscoveryClient(session, registry) as client:
        for _ in range(6):
            with pytest.raises(ValueError, match="control character"):
                await client.get("kv", "/", headers={"X-Bad": "a\nb"})
        async with await client.get("kv", "/") as response:
            assert response.status == 200
        assert (await client.pool("kv")).statistics().ejected == ()
    assert sum(len(s.hits) for s in servers) == 1
    for server in servers:
        await server.runner.cleanup()


async def test_a_raising_failure_status_fails_over_nowhere_and_ejects_nothing() -> None:
    """A `failure_status` that raises is the caller's bug: its error reaches the caller
    as is after one instance answered, no other instance is tried, none is ejected, and
    the response is released (a one-connection pool serves the next request)."""
    registry = InMemoryRegistry()
    servers = [await start_server("kv", f"kv-{n}", ok) for n in range(2)]
    for server in servers:
        await registry.register(server.instance)

    def broken_rule(status: int) -> bool:
        raise LookupError(f"no rule for {status}")

    connector = aiohttp.TCPConnector(limit=1)
    async with (
        asyncio.timeout(60),
        aiohttp.ClientSession(connector=connector) as session,
        DiscoveryClient(
            session,
            registry,
            failure_status=broken_rule,
            breaker=lambda i: CircuitBreaker(name=i.id, failure_threshold=1),
        ) as client,
    ):
        for _ in range(4):
            with pytest.raises(LookupError, match="no rule for 200"):
                await client.get("kv", "/")
        assert len(connector._acquired) == 0
        assert (await client.pool("kv")).statistics().ejected == ()
    assert sum(len(s.hits) for s in servers) == 4  # one instance per request
    for server in servers:
        await server.runner.cleanup()


async def test_one_shot_body_is_not_failed_over(session: aiohttp.ClientSession) -> None:
    """A PUT whose body is a generator goes to one instance only: it can't be resent."""
    registry = InMemoryRegistry()
    servers = [await start_server("kv", f"kv-{n}", broken) for n in range(2)]
    for server in servers:
        await registry.register(server.instance)

    async def body() -> AsyncIterator[bytes]:
        yield b"value"

    async with (
        DiscoveryClient(session, registry) as client,
        await client.request("PUT", "kv", "/k", data=body()) as response,
    ):
        assert response.status == 500
    assert sum(len(s.hits) for s in servers) == 1
    for server in servers:
        await server.runner.cleanup()


class SilentRegistry(InMemoryRegistry):
    """A registry whose watch never answers, like an unreachable backend."""

    async def watch(self, service: str) -> AsyncGenerator[list[Instance], None]:
        await asyncio.Event().wait()
        yield []


async def test_cancelled_first_call_leaves_no_view_running(
    session: aiohttp.ClientSession,
) -> None:
    """A first call cancelled while the service view starts leaves nothing behind close()."""
    client = DiscoveryClient(session, SilentRegistry())
    with pytest.raises(TimeoutExceeded):
        async with Timeout(0.05):
            await client.get("kv", "/")
    await client.close()
    await asyncio.sleep(0)
    names = [t.get_coro().__qualname__ for t in asyncio.all_tasks()]  # type: ignore[union-attr]
    assert not [n for n in names if "ServiceView" in n]


async def test_close_while_a_first_call_waits_fails_it_without_cancelling_it(
    session: aiohttp.ClientSession,
) -> None:
    """
    A first call still waiting for the service's instances when `close()` runs fails
    with a RuntimeError saying so, not a CancelledError in a task nobody cancelled.
    """
    client = DiscoveryClient(session, SilentRegistry())
    waiting = asyncio.create_task(client.get("kv", "/"))
    await asyncio.sleep(0)  # one step: the call now awaits the view's start
    assert "kv" in client._starting
    await client.close()
    with pytest.raises(RuntimeError, match="closed while 'kv'"):
        await waiting
    assert not waiting.cancelled()


# --- construction, the request context manager, repr ---------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"registry": None}, TypeError, r"DiscoveryClient\(registry=\.\.\.\): expected a Registry"),
        ({"session": None}, TypeError, r"DiscoveryClient\(session=\.\.\.\): expected a Client"),
        ({"max_attempts": 0}, ValueError, r"DiscoveryClient\(max_attempts=0\)"),
        ({"balancer": object()}, TypeError, r"DiscoveryClient\(balancer=\.\.\.\)"),
        ({"balancer": lambda: "round robin"}, TypeError, r"DiscoveryClient\(balancer=\.\.\.\)"),
        ({"breaker": "strict"}, TypeError, r"DiscoveryClient\(breaker=\.\.\.\)"),
        ({"failure_status": 500}, TypeError, r"DiscoveryClient\(failure_status=\.\.\.\)"),
        ({"retry_methods": "GET"}, TypeError, r"DiscoveryClient\(retry_methods='GET'\)"),
    ],
)
async def test_bad_arguments_fail_at_construction(
    session: aiohttp.ClientSession,
    options: dict[str, object],
    error: type[Exception],
    message: str,
) -> None:
    """Each bad argument raises at once, naming the parameter, before any request."""
    arguments: dict[str, Any] = {"session": session, "registry": InMemoryRegistry(), **options}
    with pytest.raises(error, match=message):
        DiscoveryClient(**arguments)


async def test_balancer_takes_an_instance_or_a_factory(session: aiohttp.ClientSession) -> None:
    """
    A `Balancer` instance (what `EndpointPool` takes) serves every service; a class
    (a factory) gives each service a balancer of its own.
    """
    registry = InMemoryRegistry()
    servers = [await start_server(name, f"{name}-1", ok) for name in ("a", "b")]
    for server in servers:
        await registry.register(server.instance)
    shared = RoundRobin()
    try:
        async with DiscoveryClient(session, registry, balancer=shared) as client:
            for name in ("a", "b"):
                async with client.get(name, "/") as response:
                    assert response.status == 200
            assert (await client.pool("a"))._balancer is shared
            assert (await client.pool("b"))._balancer is shared
        async with DiscoveryClient(session, registry, balancer=RoundRobin) as client:
            pools = [await client.pool(name) for name in ("a", "b")]
            assert pools[0]._balancer is not pools[1]._balancer
            assert all(isinstance(pool._balancer, RoundRobin) for pool in pools)
    finally:
        for server in servers:
            await server.runner.cleanup()


async def test_async_with_get_releases_the_response_on_exit(
    session: aiohttp.ClientSession,
) -> None:
    """
    ``async with client.get(...) as response`` works as with aiohttp: a response still
    streaming holds its connection inside the block and gives it up on exit.
    ``await client.get(...)`` still hands the response over.
    """
    gate = asyncio.Event()

    async def streaming(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first part")
        await gate.wait()  # the rest never comes while the client reads
        return response

    registry = InMemoryRegistry()
    server = await start_server("kv", "kv-1", streaming)
    await registry.register(server.instance)
    try:
        async with DiscoveryClient(session, registry) as client:
            async with client.get("kv", "/items/1") as response:
                assert await response.content.readexactly(10) == b"first part"
                assert response.connection is not None
            assert response.connection is None
            server.handler = ok
            awaited = await client.get("kv", "/items/2")
            try:
                assert await awaited.json() == {"path": "/items/2"}
            finally:
                awaited.release()
            with pytest.raises(ValueError, match="must start with '/'"):
                client.get("kv", "items")  # at once, not when awaited
    finally:
        gate.set()
        await server.runner.cleanup()


async def test_a_request_is_a_coroutine_tasks_can_run(session: aiohttp.ClientSession) -> None:
    """
    As aiohttp's ``session.get(...)``, what `client.get(...)` returns can be handed to
    `asyncio.create_task` and a `TaskGroup` (it worked when `get` was an ``async def``).
    """
    registry = InMemoryRegistry()
    server = await start_server("kv", "kv-1", ok)
    await registry.register(server.instance)
    try:
        async with DiscoveryClient(session, registry) as client:
            task = asyncio.create_task(client.get("kv", "/items/1"))
            async with asyncio.TaskGroup() as group:
                grouped = group.create_task(client.get("kv", "/items/2"))
            for response in (await task, grouped.result()):
                async with response:
                    assert response.status == 200
    finally:
        await server.runner.cleanup()


async def test_repr_shows_services_instances_and_balancer(
    session: aiohttp.ClientSession,
) -> None:
    """The repr names each service called with its known instances, and the balancer."""
    registry = InMemoryRegistry()
    servers = [await start_server("kv", f"kv-{n}", ok) for n in range(2)]
    for server in servers:
        await registry.register(server.instance)
    try:
        async with DiscoveryClient(session, registry, balancer=PowerOfTwoChoices) as client:
            assert repr(client) == (
                "<DiscoveryClient no service called yet; balancer=PowerOfTwoChoices max_attempts=3>"
            )
            await client.pool("kv")
            assert repr(client) == (
                "<DiscoveryClient kv: 2 instances; balancer=PowerOfTwoChoices max_attempts=3>"
            )
        shared = DiscoveryClient(session, registry, balancer=RoundRobin(), max_attempts=1)
        assert "balancer=RoundRobin (shared) max_attempts=1" in repr(shared)
    finally:
        for server in servers:
            await server.runner.cleanup()


def test_the_docs_example_runs_and_prints_what_the_docs_say() -> None:
    """
    docs/discovery.md's DiscoveryClient program runs as written, in a fresh interpreter,
    and prints exactly the output the page shows.
    """
    page = (REPO_ROOT / "docs" / "discovery.md").read_text()
    section = page.split("## Calling a service: `DiscoveryClient`", 1)[1]
    blocks = re.findall(r"```(python|text)\n(.*?)```", section, flags=re.DOTALL)
    program = next(code for kind, code in blocks if kind == "python" and "asyncio.run" in code)
    expected = next(code for kind, code in blocks if kind == "text")
    assert run_python("-c", program) == expected


async def test_close_cancelled_midway_still_stops_every_view(
    session: aiohttp.ClientSession,
) -> None:
    """
    A `close()` cancelled while it stops the first view (``async with client:`` left by
    a cancellation) still stops every view: none keeps following the registry.
    """
    registry = InMemoryRegistry()
    client = DiscoveryClient(session, registry)
    for service in ("a", "b", "c"):
        await registry.register(Instance(service, "1", "127.0.0.1", 1))
        await client.pool(service)
    closing = asyncio.create_task(client.close())
    await asyncio.sleep(0)  # one step: close() is now waiting for the first view to stop
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    following = [
        task
        for task in asyncio.all_tasks()
        if "ServiceView" in task.get_coro().__qualname__  # type: ignore[union-attr]
    ]
    if following:  # the old code: two views follow the registry forever
        _, still = await asyncio.wait(following, timeout=5)
        assert not still
