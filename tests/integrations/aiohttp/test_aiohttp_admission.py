"""
The aiohttp integration's overload control, over real sockets: the priority header
from client to server and on to the next hop (hostile values ignored, never a 500), and
`resilience_middleware(admission=...)` answering a policy's refusals with 429 (and
``Retry-After``), 503 or 504, sparing the exempt paths.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from yarl import URL

from resilient import (
    AIMD,
    AdaptiveConcurrency,
    AdaptiveThrottle,
    Bulkhead,
    BulkheadFullError,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Policy,
    Priority,
    RateLimitedError,
    RateLimiter,
    RejectionReason,
    ThrottledError,
    current_priority,
    pipeline,
    priority,
)
from resilient.integrations.aiohttp import (
    DEADLINE_HEADER,
    PRIORITY_HEADER,
    ResilienceMiddleware,
    resilience_middleware,
)
from resilient.integrations.aiohttp._admission import refusal_response
from tests._aio import until
from tests._web import Get, Serve, json_body, live_app

Json = dict[str, Any]


class Gate:
    """
    Handlers that hold their request until the test opens the gate; who got in, in order.
    """

    def __init__(self) -> None:
        self.open = asyncio.Event()
        self.entered: list[str] = []

    async def hold(self, request: web.Request) -> web.Response:
        self.entered.append(request.query.get("who", "?"))
        await self.open.wait()
        return web.json_response({"who": request.query.get("who")})


def guarded_app(admission: Policy, gate: Gate, **options: Any) -> web.Application:
    """An application with admission control, a held route and probe/health routes."""

    async def ok(_: web.Request) -> web.Response:
        return web.json_response({"priority": current_priority().name})

    async def own_refusal(_: web.Request) -> web.Response:
        raise BulkheadFullError("inner", 1, 0, "the handler's own client bulkhead")

    app = web.Application(middlewares=[resilience_middleware(admission=admission, **options)])
    app.router.add_get("/hold", gate.hold)
    app.router.add_get("/ok", ok)
    app.router.add_get("/own", own_refusal)
    app.router.add_get("/health", ok)
    app.router.add_get("/health/live", ok)
    app.router.add_get("/metrics", ok)
    return app


async def fetch(
    client: aiohttp.ClientSession, url: URL, headers: Mapping[str, str] | None = None
) -> tuple[int, Json, Mapping[str, str]]:
    """GET `url`; the status, the JSON body ({} when not JSON) and the headers."""
    async with client.get(url, headers=headers) as response:
        return response.status, json_body(await response.text()), response.headers


# -- the priority header -------------------------------------------------------------------


def priority_app(next_hop: URL | None = None) -> web.Application:
    """``/p`` reports the handler's priority, and the next hop's when there is one."""

    async def report(_: web.Request) -> web.Response:
        seen: Json = {"priority": current_priority().name}
        if next_hop is not None:
            middleware = ResilienceMiddleware({}, default=None)
            async with (
                aiohttp.ClientSession(middlewares=[middleware]) as session,
                session.get(next_hop / "p") as response,
            ):
                seen["next"] = (await response.json())["priority"]
        return web.json_response(seen)

    app = web.Application(middlewares=[resilience_middleware()])
    app.router.add_get("/p", report)
    return app


async def test_the_priority_travels_from_hop_to_hop(serve: Serve) -> None:
    """
    The client middleware sends the caller's priority; the server makes it current
    for the handler, whose own calls carry it on to the next hop. The default
    (critical) is not sent at all.
    """
    last = await serve(priority_app())
    first = await serve(priority_app(next_hop=last))
    sent: list[str | None] = []

    async def spy(request: aiohttp.ClientRequest, handler: Any) -> aiohttp.ClientResponse:
        response: aiohttp.ClientResponse = await handler(request)
        sent.append(request.headers.get(PRIORITY_HEADER))
        return response

    middleware = ResilienceMiddleware({}, default=None)
    async with aiohttp.ClientSession(middlewares=[middleware, spy]) as session:
        with priority(Priority.SHEDDABLE_PLUS):
            async with session.get(first / "p") as response:
                assert await response.json() == {
                    "priority": "SHEDDABLE_PLUS",
                    "next": "SHEDDABLE_PLUS",
                }
        async with session.get(first / "p") as response:
            assert await response.json() == {"priority": "CRITICAL", "next": "CRITICAL"}
    assert sent == ["sheddable_plus", None]


async def test_a_server_told_to_ignore_the_priority_header_ignores_it(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """With ``priority_header=None`` every request runs at the default priority."""
    gate = Gate()
    app = guarded_app(Bulkhead(5), gate, priority_header=None)
    root = await serve(app)
    _, body, _ = await fetch(client, root / "ok", {PRIORITY_HEADER: "sheddable"})
    assert body == {"priority": "CRITICAL"}


hostile = st.one_of(
    st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=300),
    st.sampled_from(["CRITICAL", "critical_plus ", "sheddable", "0", "3", "-1", "critical-plus"]),
    st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1000, max_size=2500),
)


@pytest.fixture
def live() -> Iterator[Get]:
    """One server and client for a whole hypothesis run, on a loop of their own."""
    with live_app(guarded_app(Bulkhead(5), Gate()), "/ok") as get:
        yield get


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=hostile)
def test_fuzzed_priority_header_never_fails_the_request(live: Get, value: str) -> None:
    """Any priority header gets a 200; only a priority's name (any case) sets it, capped
    at the default ``max_priority`` (critical)."""
    status, body = live({PRIORITY_HEADER: value})
    name = value.strip().upper()
    assert status == 200
    expected = name if name in Priority.__members__ else "CRITICAL"
    assert body["priority"] == ("CRITICAL" if expected == "CRITICAL_PLUS" else expected)


async def test_a_trusted_caller_may_claim_up_to_max_priority(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """``max_priority=Priority.CRITICAL_PLUS`` (between trusted services) honours the
    claim; a bad max_priority is a TypeError naming it."""
    app = guarded_app(Bulkhead(5), Gate(), max_priority=Priority.CRITICAL_PLUS)
    root = await serve(app)
    _, body, _ = await fetch(client, root / "ok", {PRIORITY_HEADER: "critical_plus"})
    assert body == {"priority": "CRITICAL_PLUS"}
    with pytest.raises(TypeError, match="max_priority=3"):
        resilience_middleware(max_priority=3)  # type: ignore[arg-type]


# -- admission control ---------------------------------------------------------------------


async def test_a_rate_limit_is_answered_429_with_retry_after(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """
    Past the rate a request gets 429 with ``Retry-After`` in whole seconds (at least
    1) and a body that names no policy; exempt paths (and below them) still answer.
    """
    limiter = RateLimiter(1, per=60, burst=1, name="secret-policy-name")
    root = await serve(guarded_app(limiter, Gate()))
    assert (await fetch(client, root / "ok"))[0] == 200
    status, body, headers = await fetch(client, root / "ok")
    assert status == 429
    assert body["error"] == "rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 60
    assert "secret" not in json.dumps(body)
    for path in ("health", "health/live", "metrics"):
        assert (await fetch(client, root / path))[0] == 200


async def test_a_full_bulkhead_is_answered_503_and_sheds_low_priority_first(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """
    With one slot and one place in the queue: a sheddable request waits, a critical
    one takes its place (the sheddable one gets 503), the next gets 503 too; the
    critical one is served once the slot frees.
    """
    gate = Gate()
    bulkhead = Bulkhead(1, max_queue=1)
    root = await serve(guarded_app(bulkhead, gate))
    first = asyncio.create_task(fetch(client, root / "hold" % {"who": "first"}))
    await until(lambda: gate.entered == ["first"], seconds=5)
    low = asyncio.create_task(
        fetch(client, root / "hold" % {"who": "low"}, {PRIORITY_HEADER: "sheddable"})
    )
    await until(lambda: bulkhead.queued == 1, seconds=5)
    high = asyncio.create_task(fetch(client, root / "hold" % {"who": "high"}))
    status, body, _ = await asyncio.wait_for(low, 5)
    assert (status, body["error"]) == (503, "overloaded")
    status, body, _ = await fetch(client, root / "ok")
    assert (status, body["error"]) == (503, "overloaded")
    gate.open.set()
    assert (await asyncio.wait_for(first, 5))[0] == 200
    assert (await asyncio.wait_for(high, 5))[0] == 200
    assert gate.entered == ["first", "high"]


async def test_a_queued_request_whose_deadline_passes_gets_504(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """
    A request waiting in the admission queue leaves it when the caller's deadline
    passes (here not enforced around the handler, so only the queue acts): a 504, and
    the handler never ran for it.
    """
    gate = Gate()
    policy = AdaptiveConcurrency(AIMD(initial=1, max_limit=1), max_queue=4)
    root = await serve(guarded_app(policy, gate, enforce_deadline=False))
    first = asyncio.create_task(fetch(client, root / "hold" % {"who": "first"}))
    await until(lambda: gate.entered == ["first"], seconds=5)
    status, body, _ = await fetch(client, root / "hold" % {"who": "late"}, {DEADLINE_HEADER: "200"})
    assert (status, body["error"]) == (504, "deadline_exceeded")
    assert policy.statistics().expired == 1
    gate.open.set()
    assert (await asyncio.wait_for(first, 5))[0] == 200
    assert gate.entered == ["first"]


async def test_a_refusal_raised_by_the_handler_is_not_an_admission_refusal(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """The handler's own RejectedError is a handler error (500), not a 503 of ours."""
    root = await serve(guarded_app(pipeline(RateLimiter(100), Bulkhead(5)), Gate()))
    assert (await fetch(client, root / "own"))[0] == 500


async def test_client_errors_and_redirects_are_not_overload(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """
    Requests for missing pages (the router's 404) and a handler's raised redirect or
    4xx are answers, not failures: they neither shrink an AIMD limit nor make an
    AdaptiveThrottle refuse the next requests, and they reach the client as raised.
    """
    for policy in (
        AdaptiveThrottle(random=lambda: 0.0),
        AdaptiveConcurrency(AIMD(initial=8, max_limit=8)),
    ):
        app = guarded_app(policy, Gate())

        async def moved(_: web.Request) -> web.Response:
            raise web.HTTPFound("/ok")

        async def bad(_: web.Request) -> web.Response:
            raise web.HTTPBadRequest(text="no")

        app.router.add_get("/moved", moved)
        app.router.add_get("/bad", bad)
        root = await serve(app)
        for i in range(20):
            assert (await fetch(client, root / f"missing-{i}"))[0] == 404
            assert (await fetch(client, root / "bad"))[0] == 400
            async with client.get(root / "moved", allow_redirects=False) as response:
                assert response.status == 302
        assert (await fetch(client, root / "ok"))[0] == 200
        if isinstance(policy, AdaptiveConcurrency):
            assert policy.limit == 8
            assert policy.statistics().dropped == 0
        else:
            assert policy.probability() == 0.0


async def test_a_client_cannot_shed_others_by_claiming_critical_plus(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """
    With default options, a request that claims ``critical_plus`` in the header does
    not push a queued request of the default priority out of the admission queue (a
    claim above ``max_priority``, by default ``critical``, is capped to it).
    """
    gate = Gate()
    bulkhead = Bulkhead(1, max_queue=1)
    root = await serve(guarded_app(bulkhead, gate))
    first = asyncio.create_task(fetch(client, root / "hold" % {"who": "first"}))
    await until(lambda: gate.entered == ["first"], seconds=5)
    honest = asyncio.create_task(fetch(client, root / "hold" % {"who": "honest"}))
    await until(lambda: bulkhead.queued == 1, seconds=5)
    spoofer = asyncio.create_task(
        fetch(client, root / "hold" % {"who": "spoofer"}, {PRIORITY_HEADER: "critical_plus"})
    )
    try:
        await until(lambda: honest.done() or spoofer.done(), seconds=5)
        assert not honest.done(), "the honest request was shed for the spoofed priority"
    finally:
        gate.open.set()
        await asyncio.wait_for(asyncio.gather(first, honest, spoofer), 5)


@pytest.mark.parametrize(
    ("refused", "status", "retry_after"),
    [
        (RateLimitedError("r", 0.2), 429, "1"),
        (RateLimitedError("r", 2.5, 1, "", RejectionReason.PRIORITY_SHED), 429, "3"),
        (RateLimitedError("r", 5, 1, "redis down", RejectionReason.STORE_UNAVAILABLE), 503, None),
        (BulkheadFullError("b", 1, 0, "full"), 503, None),
        (BulkheadFullError("b", 1, 1, "late", RejectionReason.DEADLINE_TOO_SHORT), 504, None),
        (ThrottledError("t", 0.5), 503, None),
        (CircuitOpenError("c", 7.2), 503, "8"),
        (CircuitOpenError("c", 0.0), 503, None),
    ],
)
def test_each_refusal_has_its_status(
    refused: Exception, status: int, retry_after: str | None
) -> None:
    """Rate limits 429, unmeetable deadlines 504, the rest 503; Retry-After when known."""
    response = refusal_response(refused)  # type: ignore[arg-type]
    assert response.status == status
    assert response.headers.get("Retry-After") == retry_after
    assert response.content_type == "application/json"


@pytest.mark.parametrize(
    ("options", "error", "named"),
    [
        ({"admission": "RateLimiter"}, TypeError, "admission="),
        ({"admission": AdaptiveThrottle, "exempt": ()}, TypeError, "admission="),
        ({"exempt": "/health"}, TypeError, "exempt="),
        ({"exempt": ["health"]}, ValueError, "exempt="),
        ({"exempt": [None]}, ValueError, "exempt="),
    ],
)
def test_bad_admission_options_are_named(
    options: dict[str, object], error: type[Exception], named: str
) -> None:
    """Bad admission settings fail when the middleware is built, naming the parameter."""
    with pytest.raises(error, match=named):
        resilience_middleware(**options)  # type: ignore[arg-type]


async def test_an_http_exception_raised_by_the_handler_is_an_answer_not_a_failure(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """
    A handler raising ``web.HTTPNotFound`` (aiohttp's way to answer 404) answers as if it
    had returned the response: the client gets the 404, and admission policies count a
    success, so a breaker stays closed, AIMD keeps its limit and a throttle sheds nothing.
    """

    async def missing(_: web.Request) -> web.Response:
        raise web.HTTPNotFound(text="no such item")

    breaker = CircuitBreaker(name="admission", failure_threshold=2)
    aimd = AdaptiveConcurrency(AIMD(initial=10))
    throttle = AdaptiveThrottle(k=1.0)
    app = web.Application(
        middlewares=[resilience_middleware(admission=pipeline(breaker, aimd, throttle))]
    )
    app.router.add_get("/missing", missing)
    root = await serve(app)
    for _ in range(5):
        async with client.get(root / "missing") as response:
            assert (response.status, await response.text()) == (404, "no such item")
    assert breaker.state is CircuitState.CLOSED
    assert aimd.statistics().dropped == 0
    assert aimd.limit == 10
    assert throttle.statistics().accepts == 5
