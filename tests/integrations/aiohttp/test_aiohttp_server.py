"""
The server side of the aiohttp integration, over real sockets.

`resilience_middleware()` on a real `aiohttp.web` application on 127.0.0.1 and an
ephemeral port, called by a real `ClientSession`: the caller's deadline and trace context
reach the handler, a handler outliving the deadline is cancelled and answered with a 504,
and hostile headers (fuzzed with hypothesis) are ignored, never a 500. `add_metrics_route`
serves a registry in Prometheus' text format.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.typedefs import Middleware
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from resilient import Retry, Timeout, remaining_time
from resilient.integrations.aiohttp import (
    DEADLINE_HEADER,
    ResilienceMiddleware,
    add_metrics_route,
    parse_deadline,
    resilience_middleware,
)
from resilient.integrations.aiohttp._propagation import extract_trace_context
from resilient.testing import capture_events
from tests._web import Get, Serve, json_body, live_app

MAX_DEADLINE_MS = 24 * 3600 * 1000
Json = dict[str, Any]

# -- a probing application -----------------------------------------------------------------


def probe_app(
    middleware: Middleware | None = None,
    *,
    tracer: trace.Tracer | None = None,
) -> tuple[web.Application, list[str]]:
    """
    An application whose handlers report what they see; and the list of their fates.

    ``GET /probe`` answers with the remaining time, the raw deadline header, the current
    span context and baggage. ``GET /sleep?s=N`` sleeps N seconds, then reports the
    remaining time before and after; the list records ``"finished"`` or
    ``"cancelled"`` for each sleep.
    """
    fates: list[str] = []

    async def probe(request: web.Request) -> web.Response:
        span = trace.get_current_span().get_span_context()
        if tracer is not None:
            with tracer.start_as_current_span("handler"):
                pass
        return web.json_response(
            {
                "left": remaining_time(),
                "header": request.headers.get(DEADLINE_HEADER),
                "trace_id": format(span.trace_id, "032x") if span.is_valid else None,
                "span_id": format(span.span_id, "016x") if span.is_valid else None,
                "baggage": dict(baggage.get_all()),
            }
        )

    async def sleep(request: web.Request) -> web.Response:
        before = remaining_time()
        try:
            await asyncio.sleep(float(request.query["s"]))
        except asyncio.CancelledError:
            fates.append("cancelled")
            raise
        fates.append("finished")
        return web.json_response({"before": before, "after": remaining_time()})

    app = web.Application(middlewares=[middleware or resilience_middleware()])
    app.router.add_get("/probe", probe)
    app.router.add_get("/sleep", sleep)
    return app, fates


async def fetch(
    client: aiohttp.ClientSession, url: URL, headers: Mapping[str, str] | None = None
) -> tuple[int, Json, str]:
    """
    GET `url`; return the status, the JSON body ({} when not JSON) and the raw text.
    """
    async with client.get(url, headers=headers) as response:
        text = await response.text()
        return response.status, json_body(text), text


# -- the deadline --------------------------------------------------------------------------


async def test_deadline_is_visible_in_the_handler(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """With ``X-Request-Timeout-Ms: 5000`` the handler's `remaining_time()` is just under 5."""
    root = await serve(probe_app()[0])
    status, body, _ = await fetch(client, root / "probe", {DEADLINE_HEADER: "5000"})
    assert status == 200
    assert 4.0 < body["left"] <= 5.0


async def test_no_header_no_deadline(serve: Serve, client: aiohttp.ClientSession) -> None:
    """Without the header the handler runs with no deadline."""
    root = await serve(probe_app()[0])
    status, body, _ = await fetch(client, root / "probe")
    assert (status, body["left"]) == (200, None)


async def test_handler_outliving_the_deadline_gets_a_504(
    serve: Serve, client: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """
    A handler still running when the caller's deadline passes is cancelled; the caller
    gets a 504 with a JSON error and no traceback, and the server logs no error.
    """
    app, fates = probe_app()
    root = await serve(app)
    started = time.monotonic()
    async with client.get(root / "sleep" % {"s": "30"}, headers={DEADLINE_HEADER: "200"}) as resp:
        text = await resp.text()
        assert resp.status == 504
        assert resp.content_type == "application/json"
    assert time.monotonic() - started < 5.0
    assert json.loads(text)["error"] == "deadline_exceeded"
    assert "Traceback" not in text
    assert fates == ["cancelled"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_handler_within_the_deadline_answers(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """A handler that finishes in time answers normally, its remaining time counted down."""
    app, fates = probe_app()
    root = await serve(app)
    status, body, _ = await fetch(client, root / "sleep" % {"s": "0.05"}, {DEADLINE_HEADER: "5000"})
    assert status == 200
    assert 0 < body["after"] < body["before"] <= 5.0
    assert fates == ["finished"]


async def test_enforcing_the_deadline_is_no_protected_call_of_its_own(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """
    The middleware enforces the caller's deadline without a policy of its own: hooks
    (and so metrics and spans) hear nothing for a request, on time or past its deadline.
    """
    app, _ = probe_app()
    root = await serve(app)
    with capture_events() as heard:
        status, _, _ = await fetch(client, root / "probe", {DEADLINE_HEADER: "5000"})
        late, _, _ = await fetch(client, root / "sleep" % {"s": "30"}, {DEADLINE_HEADER: "100"})
    assert (status, late) == (200, 504)
    assert heard == []


async def test_an_inner_timeout_capped_by_the_deadline_is_the_callers_deadline(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """A handler's own longer Timeout, capped by the caller's deadline, fires at that
    deadline: the caller gets the 504 for its deadline, not a 500."""

    async def capped(_: web.Request) -> web.Response:
        await Timeout(30.0).call(asyncio.sleep, 30)
        return web.Response()  # pragma: no cover  # the deadline passes first

    app = web.Application(middlewares=[resilience_middleware()])
    app.router.add_get("/capped", capped)
    root = await serve(app)
    status, body, _ = await fetch(client, root / "capped", {DEADLINE_HEADER: "150"})
    assert (status, body.get("error")) == (504, "deadline_exceeded")


async def test_enforce_deadline_false_only_makes_it_visible(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """With ``enforce_deadline=False`` the handler sees the deadline but may outlive it."""
    app, fates = probe_app(resilience_middleware(enforce_deadline=False))
    root = await serve(app)
    status, body, _ = await fetch(client, root / "sleep" % {"s": "0.3"}, {DEADLINE_HEADER: "50"})
    assert status == 200
    assert 0 < body["before"] <= 0.05
    assert body["after"] == 0.0
    assert fates == ["finished"]


async def test_max_deadline_caps_what_a_caller_asks_for(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """`max_deadline` caps a caller's long deadline, for visibility and for enforcement."""
    app, fates = probe_app(resilience_middleware(max_deadline=0.3))
    root = await serve(app)
    _, body, _ = await fetch(client, root / "probe", {DEADLINE_HEADER: "60000"})
    assert 0 < body["left"] <= 0.3
    _, body, _ = await fetch(client, root / "probe", {DEADLINE_HEADER: "100"})
    assert 0 < body["left"] <= 0.1  # a shorter deadline is kept
    _, body, _ = await fetch(client, root / "probe")
    assert body["left"] is None  # no deadline asked, none imposed
    started = time.monotonic()
    status, _, _ = await fetch(client, root / "sleep" % {"s": "30"}, {DEADLINE_HEADER: "60000"})
    assert status == 504
    assert time.monotonic() - started < 5.0
    assert fates == ["cancelled"]


@pytest.mark.parametrize("bad", [-1.0, 0.0, float("nan"), float("inf")])
def test_bad_max_deadline_is_refused_at_construction(bad: float) -> None:
    """A max_deadline that is not a finite number > 0 raises ValueError, naming it."""
    with pytest.raises(ValueError, match="max_deadline"):
        resilience_middleware(max_deadline=bad)


async def test_custom_deadline_header(serve: Serve, client: aiohttp.ClientSession) -> None:
    """`deadline_header` names the header the deadline is read from."""
    root = await serve(probe_app(resilience_middleware(deadline_header="Budget-Ms"))[0])
    _, body, _ = await fetch(client, root / "probe", {"Budget-Ms": "1500"})
    assert 1.0 < body["left"] <= 1.5
    _, body, _ = await fetch(client, root / "probe", {DEADLINE_HEADER: "1500"})
    assert body["left"] is None


async def test_other_statuses_pass_through(serve: Serve, client: aiohttp.ClientSession) -> None:
    """Under a deadline, a 404 from the router stays a 404."""
    root = await serve(probe_app()[0])
    status, _, _ = await fetch(client, root / "missing", {DEADLINE_HEADER: "1000"})
    assert status == 404


async def test_deadline_travels_on_to_the_next_hop(
    serve: Serve, tracer: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    """
    A handler calling another service through `ResilienceMiddleware` passes on what is
    left of its caller's deadline, and the caller's trace.
    """
    downstream, _ = probe_app()
    down_root = await serve(downstream)
    hop = aiohttp.ClientSession(middlewares=[ResilienceMiddleware(lambda key: Retry(2))])

    async def relay(_: web.Request) -> web.Response:
        async with hop.get(down_root / "probe") as response:
            return web.json_response(await response.json())

    app = web.Application(middlewares=[resilience_middleware()])
    app.router.add_get("/relay", relay)
    root = await serve(app)
    try:
        async with aiohttp.ClientSession(middlewares=[ResilienceMiddleware()]) as caller:
            with tracer[0].start_as_current_span("caller") as span:
                async with Timeout(2.0), caller.get(root / "relay") as response:
                    seen = await response.json()
    finally:
        await hop.close()
    assert 0 < int(seen["header"]) <= 2000
    assert 0 < seen["left"] <= 2.0
    assert seen["trace_id"] == format(span.get_span_context().trace_id, "032x")


# -- trace context -------------------------------------------------------------------------


async def test_client_trace_arrives_in_the_handler(
    serve: Serve, tracer: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    """
    A client span's trace id and baggage reach the handler: its current span is the
    caller's, and a span it starts is a child of the client span.
    """
    otel_tracer, exporter = tracer
    root = await serve(probe_app(tracer=otel_tracer)[0])
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        async with aiohttp.ClientSession(middlewares=[ResilienceMiddleware()]) as client:
            with otel_tracer.start_as_current_span("client") as span:
                status, body, _ = await fetch(client, root / "probe")
    finally:
        context.detach(token)
    client_context = span.get_span_context()
    assert status == 200
    assert body["trace_id"] == format(client_context.trace_id, "032x")
    assert body["span_id"] == format(client_context.span_id, "016x")
    assert body["baggage"] == {"tenant": "acme"}
    [handler_span] = [s for s in exporter.get_finished_spans() if s.name == "handler"]
    assert handler_span.context.trace_id == client_context.trace_id
    assert handler_span.parent is not None
    assert handler_span.parent.span_id == client_context.span_id


async def test_trace_context_does_not_leak_into_the_next_request(
    serve: Serve, client: aiohttp.ClientSession, tracer: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    """A request without trace headers, on the same connection, starts a fresh trace."""
    root = await serve(probe_app()[0])
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    _, body, _ = await fetch(client, root / "probe", {"traceparent": parent})
    assert body["trace_id"] == "0af7651916cd43dd8448eb211c80319c"
    _, body, _ = await fetch(client, root / "probe")
    assert body["trace_id"] is None
    assert body["baggage"] == {}


# -- hostile headers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "-5",
        "0",
        "000",
        "1e3",
        "1.5",
        "0x10",
        "NaN",
        "inf",
        "250ms",
        "1 000",
        "\uff11\uff12\uff13",  # fullwidth digits
        "٣٠٠",  # Arabic-Indic digits
        "²",
        str(MAX_DEADLINE_MS + 1),
        "9" * 40,
        "9" * 8000,
        "é" * 100,
        "",
    ],
)
async def test_malformed_deadline_is_ignored(
    serve: Serve, client: aiohttp.ClientSession, value: str
) -> None:
    """A malformed, negative, zero, huge or non-ASCII deadline is no deadline at all."""
    root = await serve(probe_app()[0])
    status, body, _ = await fetch(client, root / "probe", {DEADLINE_HEADER: value})
    assert (status, body["left"]) == (200, None)


@pytest.mark.parametrize(("value", "seconds"), [(" 250\t", 0.25), (str(MAX_DEADLINE_MS), 86400.0)])
async def test_edge_deadlines_are_accepted(
    serve: Serve, client: aiohttp.ClientSession, value: str, seconds: float
) -> None:
    """Surrounding whitespace is allowed, and a day is the longest deadline accepted."""
    root = await serve(probe_app()[0])
    _, body, _ = await fetch(client, root / "probe", {DEADLINE_HEADER: value})
    assert seconds - 1.0 < body["left"] <= seconds


async def test_headers_too_long_for_aiohttp_are_a_400_not_a_500(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """A header beyond aiohttp's field limit (8190 bytes) is refused by aiohttp with a 400."""
    root = await serve(probe_app()[0])
    for name in (DEADLINE_HEADER, "traceparent", "baggage"):
        status, _, _ = await fetch(client, root / "probe", {name: "1" * 9000})
        assert status == 400


def expected_budget(sent: str) -> float | None:
    """
    The deadline a sent header value should give: 1 to 9 ASCII digits, at most a day.
    """
    digits = sent.strip()
    if digits.isascii() and digits.isdigit() and len(digits) <= 9:
        millis = int(digits)
        if 0 < millis <= MAX_DEADLINE_MS:
            return millis / 1000
    return None


# Header values aiohttp will send: any text but control characters (which aiohttp's
# client refuses to send) and lone surrogates (not encodable), up to a length its
# server accepts.
header_text = st.text(st.characters(exclude_categories=("Cc", "Cs")), max_size=300)
hostile_values = st.one_of(
    header_text,
    st.integers().map(str),
    st.integers(min_value=-(10**40), max_value=10**40).map(lambda n: f" {n}\t"),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(min_value=0, max_value=MAX_DEADLINE_MS * 2).map(str),
    st.text(st.characters(exclude_categories=("Cc", "Cs")), min_size=1000, max_size=2500),
    st.builds(lambda n: "9" * n, st.integers(min_value=10, max_value=7000)),
)


@pytest.fixture
def live_probe(tracer: tuple[trace.Tracer, InMemorySpanExporter]) -> Iterator[Get]:
    """
    One probing server and client for a whole hypothesis run, on a loop of its own.
    """
    with live_app(probe_app()[0], "/probe") as get:
        yield get


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=hostile_values)
def test_fuzzed_deadline_header_never_fails_the_request(
    live_probe: Callable[[Mapping[str, str]], tuple[int, Json]], value: str
) -> None:
    """Any deadline header value gets a 200; only a well-formed one sets a deadline."""
    status, body = live_probe({DEADLINE_HEADER: value})
    assert status == 200
    expected = expected_budget(value)
    if expected is None:
        assert body["left"] is None
    else:
        assert expected - 1.0 < body["left"] <= expected


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(traceparent=hostile_values, tracestate=header_text, bag=hostile_values)
def test_fuzzed_trace_headers_never_fail_the_request(
    live_probe: Callable[[Mapping[str, str]], tuple[int, Json]],
    traceparent: str,
    tracestate: str,
    bag: str,
) -> None:
    """Any traceparent, tracestate and baggage get a 200; a trace id is never made up."""
    status, body = live_probe(
        {"traceparent": traceparent, "tracestate": tracestate, "baggage": bag}
    )
    assert status == 200
    if body["trace_id"] is not None:
        assert body["trace_id"] in traceparent.lower()


@settings(max_examples=50, deadline=None)
@given(value=st.one_of(st.none(), hostile_values))
def test_parse_deadline_is_total(value: str | None) -> None:
    """`parse_deadline` never raises, and returns None or seconds in (0, a day]."""
    parsed = parse_deadline(value)
    assert parsed == (None if value is None else expected_budget(value))
    assert parsed is None or 0 < parsed <= MAX_DEADLINE_MS / 1000


# -- /metrics ------------------------------------------------------------------------------


async def test_metrics_route_serves_the_registry(
    serve: Serve, client: aiohttp.ClientSession
) -> None:
    """`add_metrics_route` serves the given registry in Prometheus' text format."""
    registry = CollectorRegistry()
    Counter("jobs", "Jobs done", ["queue"], registry=registry).labels(queue="mail").inc(3)
    Histogram("latency_seconds", "Latency", registry=registry).observe(0.2)
    app = web.Application(middlewares=[resilience_middleware()])
    add_metrics_route(app, registry)
    root = await serve(app)
    async with client.get(root / "metrics") as response:
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert response.charset == "utf-8"
        text = await response.text()
    families = {family.name: family for family in text_string_to_metric_families(text)}
    [jobs] = families["jobs"].samples
    assert (jobs.name, jobs.labels, jobs.value) == ("jobs_total", {"queue": "mail"}, 3.0)
    assert families["latency_seconds"].type == "histogram"
    assert "python_info" not in families  # only the registry given, not the global one


async def test_metrics_route_at_a_custom_path(serve: Serve, client: aiohttp.ClientSession) -> None:
    """`path` moves the route; the default path is then not served."""
    registry = CollectorRegistry()
    Counter("hits", "Hits", registry=registry).inc()
    app = web.Application()
    add_metrics_route(app, registry, path="/internal/metrics")
    root = await serve(app)
    status, _, text = await fetch(client, root / "internal" / "metrics")
    assert status == 200
    assert "hits_total 1.0" in text
    assert (await fetch(client, root / "metrics"))[0] == 404


# -- review fixes --------------------------------------------------------------------------


async def test_handler_own_timeout_is_not_reported_as_the_callers_deadline(
    serve: Serve,
) -> None:
    """A handler's own Timeout firing with the caller's budget left is not reported as
    the caller's deadline: the middleware lets it through (aiohttp answers a bare 504
    for any TimeoutError), with no "deadline_exceeded" body."""

    async def own_timeout(_: web.Request) -> web.Response:
        async with Timeout(0.01):
            await asyncio.sleep(1)
        return web.Response(text="unreachable")

    app = web.Application(middlewares=[resilience_middleware()])
    app.router.add_get("/own", own_timeout)
    url = await serve(app)
    async with (
        aiohttp.ClientSession() as client,
        client.get(url / "own", headers={DEADLINE_HEADER: "10000"}) as response,
    ):
        assert response.status == 504
        assert response.content_type == "text/plain"
        assert "deadline_exceeded" not in await response.text()


async def test_deadline_after_streaming_started_writes_no_second_status(serve: Serve) -> None:
    """When the deadline passes after a streamed response started, no 504 is written
    into its body: the client sees a cut-off response, never a second status line."""

    async def stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"part1")
        await asyncio.sleep(1)
        return response

    app = web.Application(middlewares=[resilience_middleware()])
    app.router.add_get("/stream", stream)
    url = await serve(app)
    async with (
        aiohttp.ClientSession() as client,
        client.get(url / "stream", headers={DEADLINE_HEADER: "100"}) as response,
    ):
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


def test_extracted_context_keeps_the_current_span_without_headers() -> None:
    """With no trace headers, extraction keeps the current context (an outer server
    span stays the parent) instead of replacing it with an empty one."""
    provider = TracerProvider()
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("outer") as outer:
        extracted = extract_trace_context({})
        assert extracted is not None
        span = trace.get_current_span(extracted)  # type: ignore[arg-type]
        assert span.get_span_context().span_id == outer.get_span_context().span_id
