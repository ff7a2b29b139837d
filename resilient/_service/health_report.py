"""
What a health verdict is made of: statuses, a check's and the service's reports.

Plain values, shared by the monitor (`health`), the checks (`health_check`) and the
integrations that serve reports over HTTP.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = ["CheckReport", "CheckResult", "HealthReport", "HealthStatus"]


class HealthStatus(enum.Enum):
    """
    The verdict on a service, or on one of its checks.
    """

    HEALTHY = "healthy"
    DEGRADED = "degraded"
    UNHEALTHY = "unhealthy"


HEALTHY, DEGRADED, UNHEALTHY = HealthStatus.HEALTHY, HealthStatus.DEGRADED, HealthStatus.UNHEALTHY
SEVERITY = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}


def worst(statuses: Iterable[HealthStatus]) -> HealthStatus:
    """
    Return the most severe of `statuses`; HEALTHY when there are none.
    """
    return max(statuses, key=SEVERITY.__getitem__, default=HEALTHY)


@dataclass(frozen=True, slots=True)
class CheckResult:
    """
    What a check may return to say more than True or False.

    Attributes:
        healthy: Whether the check passed.
        detail: A short, secret-free explanation, shown in reports.
    """

    healthy: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class CheckReport:
    """
    One check, as of its last run.

    Attributes:
        status: HEALTHY when passing; when failing, UNHEALTHY if critical, else DEGRADED.
        detail: The last run's explanation (for an exception, only its type's name).
        critical: Whether a failure makes the service UNHEALTHY.
        liveness: Whether the check counts for liveness.
        last_checked: The monitor clock's monotonic time of the last run, or None.
        duration: Seconds the last run took, or None.
        consecutive_failures: Failed runs in a row, up to the last one.
        consecutive_successes: Passed runs in a row, up to the last one.
    """

    status: HealthStatus
    detail: str
    critical: bool
    liveness: bool
    last_checked: float | None
    duration: float | None
    consecutive_failures: int
    consecutive_successes: int

    @property
    def healthy(self) -> bool:
        """
        Whether the check counts as passing (after the thresholds).
        """
        return self.status is HEALTHY


@dataclass(frozen=True, slots=True)
class HealthReport:
    """
    The service's health at one moment.

    Attributes:
        status: The aggregate verdict.
        checks: Each check's report by name (liveness reports hold liveness checks only).
        breakers: Each watched breaker's state value by name (empty for liveness).
        time: The monitor clock's monotonic time the report was made.
    """

    status: HealthStatus
    checks: Mapping[str, CheckReport]
    breakers: Mapping[str, str]
    time: float


HealthCheck: TypeAlias = Callable[
    [], Awaitable[bool | CheckResult | None] | bool | CheckResult | None
]
TransitionHook: TypeAlias = Callable[[HealthStatus, HealthStatus, HealthReport], object]
ReportKind: TypeAlias = Literal["readiness", "liveness"]
