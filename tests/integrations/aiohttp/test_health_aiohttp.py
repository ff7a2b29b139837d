"""
Tests for the aiohttp health routes, against a real server on the loopback interface:
status codes, the JSON shape, probe endpoints, headers, and no leaked secrets.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from resilient import CheckResult, CircuitBreaker, HealthMonitor, HealthReport
from resilient.integrations.aiohttp._health_routes import (
    add_health_routes,
    health_routes,
    report_json,
)
from resilient.testing import FakeClock


def answer(value: object) -> Callable[[], Any]:
    """
    A check that returns `value`, or raises it when it is an exception.
    """

    async def check() -> object:
        if isinstance(value, BaseException):
            raise value
        return value

    return check


@asynccontextmanager
async def serving(monitor: HealthMonitor, **kwargs: Any) -> AsyncIterator[TestClient[Any, Any]]:
    """
    Serve `monitor`'s routes on 127.0.0.1 and a free port; yield a client for it.
    """
    app = web.Application()
    add_health_routes(app, monitor, **kwargs)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def get(client: TestClient[Any, Any], path: str) -> tuple[int, Any]:
    async with client.get(path) as response:
        assert response.headers["Cache-Control"] == "no-store"
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def test_full_report_shape() -> None:
    """GET /health serves status, each check's status/detail/critical/age, and breakers."""
    clock = FakeClock(start=50.0)
    monitor = HealthMonitor(clock=clock)
    monitor.add_check("db", answer(CheckResult(True, "primary")))
    monitor.add_check("cache", answer(True), critical=False)
    monitor.watch_breaker(CircuitBreaker("inventory", clock=clock))
    await monitor.check_now()
    clock.advance(2.5)
    async with serving(monitor) as client:
        status, body = await get(client, "/health")
        assert client.server.host == "127.0.0.1"
    assert status == 200
    assert body == {
        "status": "healthy",
        "checks": {
            "db": {
                "status": "healthy",
                "detail": "primary",
                "critical": True,
                "last_checked_seconds_ago": 2.5,
            },
            "cache": {
                "status": "healthy",
                "detail": "",
                "critical": False,
                "last_checked_seconds_ago": 2.5,
            },
        },
        "breakers": {"inventory": "closed"},
    }


async def test_degraded_is_200_with_details() -> None:
    """DEGRADED still serves 200 on /health and /ready; the failing check says why."""
    clock = FakeClock()
    monitor = HealthMonitor(clock=clock)
    monitor.add_check("db", answer(True))
    monitor.add_check("cache", answer(False), critical=False)
    breaker = CircuitBreaker("inventory", clock=clock)
    monitor.watch_breaker(breaker)
    await monitor.check_now()
    breaker.trip()
    async with serving(monitor) as client:
        status, body = await get(client, "/health")
        ready = await get(client, "/health/ready")
    assert status == 200
    assert body["status"] == "degraded"
    assert body["checks"]["cache"] == {
        "status": "degraded",
        "detail": "check returned False",
        "critical": False,
        "last_checked_seconds_ago": 0.0,
    }
    assert body["breakers"] == {"inventory": "open"}
    assert ready == (200, {"status": "degraded"})


async def test_unhealthy_is_503_without_secrets() -> None:
    """UNHEALTHY answers 503; an exception shows as its type name, never its message."""
    monitor = HealthMonitor()
    monitor.add_check("db", answer(ConnectionError("postgres://app:s3cret@db/orders")))
    await monitor.check_now()
    async with serving(monitor) as client:
        status, body = await get(client, "/health")
        async with client.get("/health") as response:
            text = await response.text()
        ready = await get(client, "/health/ready")
    assert status == 503
    assert body["status"] == "unhealthy"
    assert body["checks"]["db"]["detail"] == "ConnectionError"
    assert "s3cret" not in text
    assert "Traceback" not in text
    assert ready == (503, {"status": "unhealthy"})


async def test_unchecked_check_has_no_age() -> None:
    """A check that never ran reports null for its age and fails readiness."""
    monitor = HealthMonitor()
    monitor.add_check("db", answer(True))
    async with serving(monitor) as client:
        status, body = await get(client, "/health")
    assert status == 503
    assert body["checks"]["db"]["last_checked_seconds_ago"] is None
    assert body["checks"]["db"]["detail"] == "not checked yet"


async def test_liveness_and_readiness_probes() -> None:
    """/live follows liveness checks only; /ready follows every check."""
    monitor = HealthMonitor()
    alive = {"ok": True}

    async def loop_responsive() -> bool:
        return alive["ok"]

    monitor.add_check("loop", loop_responsive, liveness=True)
    monitor.add_check("db", answer(False))
    await monitor.check_now()
    async with serving(monitor) as client:
        assert await get(client, "/health/live") == (200, {"status": "healthy"})
        assert await get(client, "/health/ready") == (503, {"status": "unhealthy"})
        alive["ok"] = False
        await monitor.check_now()
        assert await get(client, "/health/live") == (503, {"status": "unhealthy"})


async def test_liveness_without_liveness_checks_answers_200() -> None:
    """With no liveness checks, /live answers 200 even while the service is UNHEALTHY."""
    monitor = HealthMonitor()
    monitor.add_check("db", answer(False))
    await monitor.check_now()
    async with serving(monitor) as client:
        assert await get(client, "/health/live") == (200, {"status": "healthy"})
        assert (await get(client, "/health"))[0] == 503


async def test_status_follows_the_monitor_live() -> None:
    """A critical breaker opening turns the next answer into 503; closing it back to 200."""
    monitor = HealthMonitor()
    breaker = CircuitBreaker("payments")
    monitor.watch_breaker(breaker, critical=True)
    async with serving(monitor) as client:
        assert (await get(client, "/health/ready"))[0] == 200
        breaker.trip()
        assert (await get(client, "/health/ready"))[0] == 503
        breaker.reset()
        assert (await get(client, "/health/ready"))[0] == 200


async def test_custom_path() -> None:
    """`path` moves all three routes; a trailing slash is ignored."""
    monitor = HealthMonitor()
    async with serving(monitor, path="/ops/health/") as client:
        assert (await get(client, "/ops/health"))[0] == 200
        assert (await get(client, "/ops/health/live"))[0] == 200
        assert (await get(client, "/ops/health/ready"))[0] == 200
        async with client.get("/health") as response:
            assert response.status == 404


async def test_head_requests_are_answered() -> None:
    """Probes that send HEAD get the status code without a body."""
    monitor = HealthMonitor()
    monitor.add_check("db", answer(False))
    await monitor.check_now()
    async with serving(monitor) as client, client.head("/health/ready") as response:
        assert response.status == 503
        assert await response.read() == b""


class BrokenMonitor(HealthMonitor):
    """A monitor whose report fails, as a bug would make it."""

    def report(self, kind: Any = "readiness") -> HealthReport:
        raise RuntimeError("internal detail that must not leak")


async def test_a_failing_report_is_503_json_not_a_traceback() -> None:
    """If building the report raises, the answer is a JSON 503, with no traceback."""
    async with serving(BrokenMonitor()) as client:
        async with client.get("/health") as response:
            text = await response.text()
            status = response.status
        live = await get(client, "/health/live")
    assert status == 503
    assert "internal detail" not in text
    assert "Traceback" not in text
    assert live == (503, {"status": "unhealthy", "error": "health report failed"})


def test_health_routes_returns_route_defs() -> None:
    """health_routes gives GET route definitions for the three paths."""
    routes = health_routes(HealthMonitor(), path="/h")
    assert all(isinstance(route, web.RouteDef) for route in routes)
    assert [(route.method, route.path) for route in routes] == [
        ("GET", "/h"),
        ("GET", "/h/live"),
        ("GET", "/h/ready"),
    ]


def test_bad_arguments_are_refused() -> None:
    """A path not starting with '/' raises ValueError; a non-monitor TypeError."""
    with pytest.raises(ValueError, match="path"):
        health_routes(HealthMonitor(), path="health")
    with pytest.raises(TypeError, match="HealthMonitor"):
        health_routes(object())  # type: ignore[arg-type]


async def test_report_json_of_a_liveness_report() -> None:
    """report_json renders any report; a liveness report has no breakers."""
    monitor = HealthMonitor()
    monitor.add_check("loop", answer(True), liveness=True)
    monitor.add_check("db", answer(True))
    monitor.watch_breaker(CircuitBreaker("inventory"))
    await monitor.check_now()
    body = report_json(monitor.report("liveness"))
    assert list(body["checks"]) == ["loop"]
    assert body["breakers"] == {}
    assert body["status"] == "healthy"
