"""
Serve a `HealthMonitor` over HTTP: the full report and the two probe endpoints.

    GET {path}        the readiness report, checks and breakers in full
    GET {path}/live   liveness: {"status": ...}
    GET {path}/ready  readiness: {"status": ...}

Each answers 200 while the verdict is HEALTHY or DEGRADED (a degraded service still
serves, and taking it out of rotation would only move its load elsewhere) and 503 when
UNHEALTHY. Bodies are JSON with ``Cache-Control: no-store``: a cached verdict is a wrong
one. Details hold only what checks chose to say or an exception's type name; a failure
to build the report answers 503 without a traceback.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from aiohttp import web

from resilient import HealthMonitor, HealthReport, HealthStatus

__all__ = ["add_health_routes", "health_routes", "report_json"]

_log = logging.getLogger("resilient.health")

_HEADERS = {"Cache-Control": "no-store"}
_UNAVAILABLE = 503


def report_json(report: HealthReport) -> dict[str, Any]:
    """
    Return `report` as the JSON-ready dict the full health endpoint serves.

    ``{"status": ..., "checks": {name: {"status", "detail", "critical",
    "last_checked_seconds_ago"}}, "breakers": {name: state}}``; the age is None for a
    check that has not run yet.
    """
    checks = {
        name: {
            "status": check.status.value,
            "detail": check.detail,
            "critical": check.critical,
            "last_checked_seconds_ago": (
                None
                if check.last_checked is None
                else round(max(0.0, report.time - check.last_checked), 3)
            ),
        }
        for name, check in report.checks.items()
    }
    return {"status": report.status.value, "checks": checks, "breakers": dict(report.breakers)}


def health_routes(monitor: HealthMonitor, *, path: str = "/health") -> list[web.RouteDef]:
    """
    Build the health routes, for ``app.add_routes(...)`` or a sub-application.

    Args:
        monitor: The monitor to report on.
        path: Where the full report is served; probes are at ``{path}/live`` and
            ``{path}/ready``.

    Returns:
        Route definitions for GET (and HEAD) on the three paths.

    Raises:
        TypeError: `monitor` is not a `HealthMonitor`.
        ValueError: `path` does not start with ``/``.
    """
    if not isinstance(monitor, HealthMonitor):
        raise TypeError(f"health_routes(monitor=...): expected a HealthMonitor, got {monitor!r}")
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"health_routes(path={path!r}): path must start with '/'")
    base = path.rstrip("/")
    return [
        web.get(base or "/", _handler(monitor, "readiness", full=True)),
        web.get(f"{base}/live", _handler(monitor, "liveness", full=False)),
        web.get(f"{base}/ready", _handler(monitor, "readiness", full=False)),
    ]


def add_health_routes(
    app: web.Application, monitor: HealthMonitor, *, path: str = "/health"
) -> list[web.AbstractRoute]:
    """
    Add `health_routes(monitor, path=path)` to `app`.

    Returns:
        The routes added.
    """
    return app.add_routes(health_routes(monitor, path=path))


def _handler(
    monitor: HealthMonitor, kind: Literal["readiness", "liveness"], *, full: bool
) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(_: web.Request) -> web.Response:
        try:
            report = monitor.report(kind)
            body = report_json(report) if full else {"status": report.status.value}
        except Exception:  # noqa: BLE001  # a broken report is an unhealthy answer, not a 500
            _log.exception("health: building the %s report failed", kind)
            body = {"status": HealthStatus.UNHEALTHY.value, "error": "health report failed"}
            return web.json_response(body, status=_UNAVAILABLE, headers=_HEADERS)
        status = _UNAVAILABLE if report.status is HealthStatus.UNHEALTHY else 200
        return web.json_response(body, status=status, headers=_HEADERS)

    return handle
