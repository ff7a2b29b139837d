"""
A `ServiceView` on etcd never freezes while it says it is connected.

A frozen etcd (SIGSTOP: the kernel still accepts connections, nothing answers) and a
gateway that answers reads but not the watch both turn the view stale within
``watch_probe_interval + request_timeout``; once etcd answers again the view reconnects
and catches up with the instances that joined meanwhile. Real etcd for the first, a
local aiohttp stand-in of etcd's JSON gateway for the second. The times measured are
printed (``pytest -s``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from resilient import ServiceView
from resilient.integrations.etcd import EtcdRegistry, EtcdResponseError, EtcdUnavailableError
from tests._aio import until
from tests._etcd import EtcdServer
from tests._web import Serve
from tests.integrations.etcd.test_etcd import ids, instance

PROBE = 1.0
"""watch_probe_interval of the views under test, seconds."""
TIMEOUT = 1.0
"""request_timeout of the views under test, seconds."""
BOUND = PROBE + TIMEOUT
"""The promise: stale within this many seconds of etcd freezing or the stream falling silent."""
SLACK = 1.5
"""What a loaded two-core machine may add to BOUND (late timers, a busy core)."""


def _stopped(stat: Path) -> bool:
    """
    Whether the thread whose ``/proc/.../stat`` is `stat` is stopped (or gone).
    """
    try:
        # The state follows the parenthesised command name, which may contain spaces.
        return stat.read_text().rsplit(")", 1)[1].split()[0] in {"T", "t"}
    except (OSError, IndexError):
        return True


class Freezer:
    """
    Stops (SIGSTOP) and resumes (SIGCONT) an etcd; resumes it at teardown in any case.
    """

    def __init__(self, server: EtcdServer) -> None:
        self.server = server
        self.frozen = False

    def _signal(self, signum: int) -> None:
        assert self.server.process is not None
        self.server.process.process.send_signal(signum)

    def freeze(self) -> float:
        """
        Stop etcd and wait until every one of its threads has stopped; return the
        monotonic time it was stopped at.
        """
        self._signal(signal.SIGSTOP)
        self.frozen = True
        assert self.server.process is not None
        tasks = Path(f"/proc/{self.server.process.process.pid}/task")
        deadline = time.monotonic() + 5.0
        # The signal is delivered asynchronously: until the stop takes hold, etcd may
        # still answer the request sent right after it. Blocking the loop for these few
        # milliseconds is the point: nothing may reach etcd before it is frozen.
        while not all(_stopped(stat) for stat in tasks.glob("*/stat")):
            assert time.monotonic() < deadline, "etcd did not stop within 5 s"
            time.sleep(0.001)
        return time.monotonic()

    def thaw(self) -> float:
        """
        Resume etcd; return the monotonic time it was resumed at.
        """
        if self.frozen:
            self._signal(signal.SIGCONT)
            self.frozen = False
        return time.monotonic()


@pytest.fixture
def freezer(etcd_private: EtcdServer) -> Iterator[Freezer]:
    """
    A `Freezer` for this test's own etcd.
    """
    freezer = Freezer(etcd_private)
    try:
        yield freezer
    finally:
        freezer.thaw()


@pytest.fixture
async def registries() -> AsyncIterator[list[EtcdRegistry]]:
    """
    Registries a test appends here are closed after it.
    """
    made: list[EtcdRegistry] = []
    yield made
    for registry in made:
        await registry.close()


def make(made: list[EtcdRegistry], endpoint: str, prefix: str, **options: Any) -> EtcdRegistry:
    """
    An `EtcdRegistry` on `endpoint` and `prefix`, closed after the test.
    """
    registry = EtcdRegistry(endpoint, prefix=prefix, **options)
    made.append(registry)
    return registry


def watcher(made: list[EtcdRegistry], endpoint: str, prefix: str) -> EtcdRegistry:
    """
    The registry a view follows: probe interval and request timeout of one second.
    """
    return make(made, endpoint, prefix, request_timeout=TIMEOUT, watch_probe_interval=PROBE)


def follow(made: list[EtcdRegistry], endpoint: str, prefix: str) -> ServiceView:
    """
    A view of ``orders`` through a `watcher` registry, retrying every 0.2 s at first.
    """
    return ServiceView(watcher(made, endpoint, prefix), "orders", retry_delay=0.2)


async def join_two(made: list[EtcdRegistry], endpoint: str, prefix: str) -> None:
    """
    Register ``orders-1`` and ``orders-2`` through a registry of their own.
    """
    owner = make(made, endpoint, prefix)
    await owner.register(instance("orders", "orders-1"))
    await owner.register(instance("orders", "orders-2"))


async def stale_after(view: ServiceView, since: float) -> float:
    """
    Wait until `view` reports stale; return the seconds since `since`.
    """
    await until(lambda: not view.status().connected, seconds=BOUND + 10.0)
    return time.monotonic() - since


# --- a real etcd, frozen -----------------------------------------------------------------


async def test_frozen_etcd_turns_the_view_stale_and_it_catches_up_after(
    etcd_private: EtcdServer,
    freezer: Freezer,
    registries: list[EtcdRegistry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    A quiet watch on a live etcd stays connected through its probes. etcd frozen while
    the view follows the watch: the view reports stale within probe interval + request
    timeout, keeping the last instances; after etcd resumes the view is connected again
    and holds the instance that joined meanwhile.
    """
    endpoint, prefix = etcd_private.endpoint, f"/liveness/{uuid.uuid4().hex}/"
    owner = make(registries, endpoint, prefix)
    await owner.register(instance("orders", "orders-1"))
    registry = watcher(registries, endpoint, prefix)
    probed: list[bool] = []
    probe = registry._in_step

    async def counted(*args: Any) -> bool:
        probed.append(await probe(*args))
        return probed[-1]

    monkeypatch.setattr(registry, "_in_step", counted)
    async with ServiceView(registry, "orders", retry_delay=0.2) as view:
        await view.wait_for(lambda found: ids(found) == ["orders-1"])
        await until(lambda: len(probed) >= 2)
        assert probed[:2] == [True, True]
        assert view.status().connected
        frozen = freezer.freeze()
        elapsed = await stale_after(view, frozen)
        assert ids(view.instances) == ["orders-1"]  # stale, but served
        assert view.status().stale_since is not None
        # A second instance registers during the outage; it gets through on resume.
        joiner = make(registries, endpoint, prefix, request_timeout=30.0)
        joining = asyncio.ensure_future(joiner.register(instance("orders", "orders-2")))
        resumed = freezer.thaw()
        await joining
        await view.wait_for(lambda found: ids(found) == ["orders-1", "orders-2"], within=15.0)
        await until(lambda: view.status().connected, seconds=15.0)
        healed = time.monotonic() - resumed
    print(f"\netcd SIGSTOP with the watch open: stale after {elapsed:.2f}s (bound {BOUND:g}s);"
          f" connected and caught up {healed:.2f}s after SIGCONT")  # fmt: skip
    assert elapsed <= BOUND + SLACK
    assert view.status().stale_since is None


async def test_etcd_frozen_between_read_and_watch_never_reports_connected(
    etcd_private: EtcdServer,
    freezer: Freezer,
    registries: list[EtcdRegistry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    etcd frozen right after answering the view's first read, before the watch opens:
    the view reports stale within request timeout (it never says connected, since
    nothing would keep it current), and connects once etcd resumes.
    """
    endpoint, prefix = etcd_private.endpoint, f"/liveness/{uuid.uuid4().hex}/"
    owner = make(registries, endpoint, prefix)
    await owner.register(instance("orders", "orders-1"))
    registry = watcher(registries, endpoint, prefix)
    view = ServiceView(registry, "orders", retry_delay=0.2)
    gateway = registry._gateway
    real_range = gateway.range_prefix
    frozen: list[float] = []

    async def read_then_freeze(key: str, **options: Any) -> Any:
        answer = await real_range(key, **options)
        if not frozen:
            frozen.append(freezer.freeze())
        return answer

    monkeypatch.setattr(gateway, "range_prefix", read_then_freeze)
    seen: set[bool] = set()

    def stale() -> bool:
        status = view.status()
        seen.add(status.connected)
        return bool(frozen) and status.stale_since is not None

    async with view:
        await until(stale)
        elapsed = time.monotonic() - frozen[0]
        freezer.thaw()
        await view.wait_for(lambda found: ids(found) == ["orders-1"], within=15.0)
        await until(lambda: view.status().connected, seconds=15.0)
    print(f"\netcd SIGSTOP before the watch opened: stale after {elapsed:.2f}s"
          f" (request_timeout {TIMEOUT:g}s)")  # fmt: skip
    assert seen == {False}
    assert elapsed <= TIMEOUT + SLACK


# --- a gateway that answers reads but not the watch ------------------------------------


class StandIn:
    """
    A stand-in for etcd's v3 JSON gateway: reads, writes and leases from a dict.

    The watch, as `mode` says: ``"hang"`` never answers the request; ``"silent"``
    confirms it (headers and etcd's ``created`` message) and then sends nothing;
    ``"refuse"`` answers with etcd's error; ``"garble"`` streams a line that is not
    JSON. Handlers left waiting return when `release` is set.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.revision = 1
        self.keys: dict[bytes, tuple[bytes, int]] = {}
        self.watches = 0
        self.release = asyncio.Event()

    def app(self) -> web.Application:
        """
        The aiohttp application serving ``/v3/...``.
        """
        app = web.Application()
        app.router.add_post("/v3/kv/range", self.range)
        app.router.add_post("/v3/kv/put", self.put)
        app.router.add_post("/v3/lease/grant", self.grant)
        app.router.add_post("/v3/lease/keepalive", self.keepalive)
        app.router.add_post("/v3/lease/revoke", self.empty)
        app.router.add_post("/v3/kv/deleterange", self.empty)
        app.router.add_post("/v3/watch", self.watch)
        return app

    def _header(self) -> dict[str, str]:
        return {"revision": str(self.revision)}

    async def range(self, request: web.Request) -> web.Response:
        body = await request.json()
        start, end = base64.b64decode(body["key"]), base64.b64decode(body["range_end"])
        kvs = [
            {
                "key": base64.b64encode(key).decode(),
                "mod_revision": str(revision),
                **({} if body.get("keys_only") else {"value": base64.b64encode(value).decode()}),
            }
            for key, (value, revision) in sorted(self.keys.items())
            if start <= key < end
        ]
        return web.json_response({"header": self._header(), "kvs": kvs})

    async def put(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.revision += 1
        self.keys[base64.b64decode(body["key"])] = (base64.b64decode(body["value"]), self.revision)
        return web.json_response({"header": self._header()})

    async def grant(self, request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"header": self._header(), "ID": "7", "TTL": body["TTL"]})

    async def keepalive(self, request: web.Request) -> web.Response:
        return web.json_response({"result": {"header": self._header(), "ID": "7", "TTL": "10"}})

    async def empty(self, request: web.Request) -> web.Response:
        return web.json_response({"header": self._header()})

    async def watch(self, request: web.Request) -> web.StreamResponse:
        self.watches += 1
        if self.mode == "hang":
            await self.release.wait()
            return web.Response(status=503)
        if self.mode == "refuse":
            error = {"error": "etcdserver: no leader", "message": "no leader", "code": 14}
            return web.json_response(error, status=503)
        response = web.StreamResponse()
        await response.prepare(request)
        created = {"result": {"header": self._header(), "created": True}}
        line = b"<html>" if self.mode == "garble" else json.dumps(created).encode()
        await response.write(line + b"\n")
        await self.release.wait()
        return response


@pytest.fixture
async def stand_in(
    serve: Serve, request: pytest.FixtureRequest
) -> AsyncIterator[tuple[StandIn, str]]:
    """
    A `StandIn` (mode from the test's parameter) served on loopback, and its endpoint.
    """
    fake = StandIn(request.param)
    url = await serve(fake.app())
    yield fake, str(url).rstrip("/")
    fake.release.set()  # let its waiting handlers return before the server closes


@pytest.mark.parametrize("stand_in", ["hang"], indirect=True)
async def test_watch_never_answered_leaves_the_view_stale(
    stand_in: tuple[StandIn, str], registries: list[EtcdRegistry]
) -> None:
    """
    A gateway that answers reads and leases but never the watch: the view reports stale
    within request timeout, never connected, however often it retries while instances
    join.
    """
    fake, endpoint = stand_in
    prefix = "/services/"
    started = time.monotonic()
    async with follow(registries, endpoint, prefix) as view:
        elapsed = await stale_after(view, started)
        await join_two(registries, endpoint, prefix)
        before = fake.watches
        connected: set[bool] = set()

        def retried_twice() -> bool:
            connected.add(view.status().connected)
            return fake.watches >= before + 2

        # Each further watch request is a retry that read the new instances first.
        await until(retried_twice, seconds=15.0)
        assert connected == {False}
        assert view.status().stale_since is not None
    print(f"\nwatch never answered: stale after {elapsed:.2f}s (request_timeout {TIMEOUT:g}s)")
    assert elapsed <= TIMEOUT + SLACK


@pytest.mark.parametrize("stand_in", ["silent"], indirect=True)
async def test_silent_watch_turns_the_view_stale_then_it_catches_up(
    stand_in: tuple[StandIn, str], registries: list[EtcdRegistry]
) -> None:
    """
    A watch etcd confirmed but that then never delivers events: after two instances
    join, the view reports stale within probe interval + request timeout, then reads
    afresh and is connected again with both instances.
    """
    _, endpoint = stand_in
    prefix = "/services/"
    async with follow(registries, endpoint, prefix) as view:
        await until(lambda: view.status().connected)
        await join_two(registries, endpoint, prefix)
        joined = time.monotonic()
        elapsed = await stale_after(view, joined)
        await view.wait_for(lambda found: ids(found) == ["orders-1", "orders-2"], within=10.0)
        await until(lambda: view.status().connected, seconds=10.0)
    print(f"\nsilent watch: stale after {elapsed:.2f}s (bound {BOUND:g}s), then caught up")
    assert elapsed <= BOUND + SLACK


@pytest.mark.parametrize("stand_in", ["hang"], indirect=True)
async def test_stop_during_a_hung_watch_is_prompt_and_leaves_no_task(
    stand_in: tuple[StandIn, str], registries: list[EtcdRegistry]
) -> None:
    """
    `stop()` while the watch request hangs returns at once and leaves none of the
    view's or the registry's tasks behind.
    """
    fake, endpoint = stand_in
    view = follow(registries, endpoint, "/services/")
    await view.start(wait=None)
    await until(lambda: fake.watches >= 1)
    async with asyncio.timeout(1.0):
        await view.stop()

    def ours(task: asyncio.Task[Any]) -> bool:
        name = getattr(task.get_coro(), "__qualname__", "")
        return name.startswith(("ServiceView", "EtcdRegistry", "EtcdGateway"))

    assert not [task for task in asyncio.all_tasks() if ours(task)]


@pytest.mark.parametrize(
    ("stand_in", "error", "match"),
    [
        ("refuse", EtcdResponseError, "no leader"),
        ("garble", EtcdUnavailableError, "not JSON"),
    ],
    indirect=["stand_in"],
)
async def test_a_refused_or_garbled_watch_raises_before_any_snapshot(
    stand_in: tuple[StandIn, str],
    registries: list[EtcdRegistry],
    error: type[Exception],
    match: str,
) -> None:
    """
    A watch etcd refuses, or one whose first message is not JSON, raises from the
    registry's watch before it yields a snapshot.
    """
    _, endpoint = stand_in
    registry = watcher(registries, endpoint, "/services/")
    with pytest.raises(error, match=match):
        await anext(registry.watch("orders"))
