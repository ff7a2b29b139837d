"""
End to end with a real Prometheus: an aiohttp app serves `/metrics` fed by
`ResilienceMetrics`, Prometheus scrapes it every second, and its query API must show what
the app's circuit breaker did.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from resilient import CircuitBreaker, CircuitOpenError, Retry, pipeline
from resilient.integrations.aiohttp import add_metrics_route
from resilient.integrations.prometheus import ResilienceMetrics
from tests._prometheus import PrometheusServer
from tests.integrations.prometheus._promql import dashboard_queries, doc_queries

WAIT = 20.0
"""Seconds Prometheus gets to show the expected values (it scrapes every second)."""

BREAKER = "inventory"


async def failing_dependency() -> str:
    raise ConnectionError("inventory service unreachable")


def build_app(registry: CollectorRegistry) -> web.Application:
    """
    An app whose ``/item`` calls a dead dependency through Retry + a breaker.
    """
    metrics = ResilienceMetrics(registry)
    breaker = CircuitBreaker(name=BREAKER, failure_threshold=3, reset_timeout=600.0)
    policy = pipeline(Retry(1, name="inventory-retry"), breaker)
    policy.add_hook(metrics)
    metrics.track(policy)

    async def item(_: web.Request) -> web.Response:
        try:
            return web.Response(text=await policy.call(failing_dependency))
        except CircuitOpenError:
            return web.json_response({"error": "circuit_open"}, status=503)
        except ConnectionError:
            return web.json_response({"error": "upstream"}, status=502)

    app = web.Application()
    app.router.add_get("/item", item)
    add_metrics_route(app, registry)
    return app


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """
    Serve `app` on 127.0.0.1 and a port the kernel picks; yield ``host:port``.
    """
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"{host}:{port}"
    finally:
        await runner.cleanup()


async def wait_for(
    server: PrometheusServer, checks: dict[str, Callable[[list[dict[str, object]]], bool]]
) -> None:
    """
    Poll Prometheus until every query in `checks` passes its check, or fail after WAIT.
    """
    deadline = time.monotonic() + WAIT
    last: dict[str, object] = {}
    while True:
        pending = []
        for promql, check in checks.items():
            result = await asyncio.to_thread(server.query, promql)
            last[promql] = result
            if not check(result):
                pending.append(promql)
        if not pending:
            return
        if time.monotonic() > deadline:
            targets = await asyncio.to_thread(fetch_json, f"{server.url}/api/v1/targets")
            raise AssertionError(
                f"Prometheus did not show {pending} within {WAIT:g}s.\n"
                f"Last answers: {json.dumps(last)}\n"
                f"Scrape targets: {json.dumps(targets)}\n"
                f"Prometheus output:\n{server.process.output_tail()}"
            )
        await asyncio.sleep(0.25)


def fetch_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=5.0) as answer:  # noqa: S310  # loopback http
        return json.load(answer)


def single_value(result: list[dict[str, object]]) -> float | None:
    if len(result) != 1:
        return None
    timestamp_and_value = result[0]["value"]  # [1700000000.1, "1"]
    assert isinstance(timestamp_and_value, list)
    return float(timestamp_and_value[1])


async def open_the_breaker(target: str) -> list[int]:
    async with aiohttp.ClientSession() as session:
        statuses = []
        for _ in range(5):
            async with session.get(f"http://{target}/item") as response:
                statuses.append(response.status)
        return statuses


async def test_prometheus_sees_the_open_breaker_and_its_rejections(
    prometheus_server: Callable[[str], PrometheusServer],
) -> None:
    """
    After failing calls open the app's breaker and later calls are rejected, Prometheus
    reports circuit_state{state="open"} == 1 and circuit_open rejections > 0.
    """
    registry = CollectorRegistry()
    async with serving(build_app(registry)) as target:
        statuses = await open_the_breaker(target)
        assert statuses == [502, 502, 502, 503, 503]
        server = await asyncio.to_thread(prometheus_server, target)
        labels = f'policy="{BREAKER}"'
        await wait_for(
            server,
            {
                'up{job="resilient"}': lambda r: single_value(r) == 1,
                f'resilient_circuit_state{{{labels},state="open"}}': lambda r: single_value(r) == 1,
                f'resilient_circuit_state{{{labels},state="closed"}}': lambda r: (
                    single_value(r) == 0
                ),
                f'resilient_rejections_total{{reason="circuit_open",{labels}}}': lambda r: (
                    (single_value(r) or 0) > 0
                ),
            },
        )


async def test_every_dashboard_and_doc_query_is_valid_promql(
    prometheus_server: Callable[[str], PrometheusServer],
) -> None:
    """
    Each query of docs/grafana-dashboard.json and each example in docs/metrics.md is
    accepted by a real Prometheus; the breaker panels return data once it has scraped.
    """
    registry = CollectorRegistry()
    async with serving(build_app(registry)) as target:
        await open_the_breaker(target)
        server = await asyncio.to_thread(prometheus_server, target)
        await wait_for(server, {"resilient_circuit_state": bool})
        for title, promql in dashboard_queries():
            # query() asserts Prometheus answered "success": a syntax error fails here.
            result = await asyncio.to_thread(server.query, promql)
            if "circuit_state" in promql:
                assert result, f"panel {title!r}: {promql!r} returned no data"
        for promql in doc_queries():
            await asyncio.to_thread(server.query, promql)
