"""
Resilience policies for asyncio.

Retry, circuit breaker, bulkhead, timeout, fallback and hedging, composable with
`pipeline` and observable through hooks.

    from resilient import CircuitBreaker, Retry, Timeout, pipeline

    policy = pipeline(Timeout(2.0), Retry(attempts=3), CircuitBreaker(name="inventory"))

    @policy
    async def get_item(item_id: str) -> dict: ...

Integrations live in `resilient.integrations` and are never imported from here.
"""

from __future__ import annotations

from ._engine.clock import Clock, SystemClock, TimerHandle
from ._engine.context import deadline, no_retries, remaining_time
from ._engine.errors import (
    PROGRAMMING_ERRORS,
    BulkheadFullError,
    CircuitOpenError,
    ConcurrencyLimitError,
    PolicyMisuseError,
    RateLimitedError,
    RejectedError,
    ResilienceError,
    ThrottledError,
    TimeoutExceeded,
)
from ._engine.events import (
    CallCancelled,
    CallFailed,
    CallStarted,
    CallSucceeded,
    Event,
    FallbackUsed,
    HedgeSent,
    Hook,
    Rejected,
    RejectionReason,
    RetryScheduled,
    StateChanged,
    TimedOut,
)
from ._engine.hooks import CallListener, add_hook, remove_hook
from ._engine.pipeline import Pipeline, pipeline
from ._engine.policy import Policy
from ._engine.public import publish
from ._policies.adaptive_concurrency import AdaptiveConcurrency, AdaptiveConcurrencyStatistics
from ._policies.breaker.accounting import WindowTotals
from ._policies.breaker.machine import BreakerStatistics, CircuitBreaker, CircuitState
from ._policies.breaker.redis_store import RedisBreakerStore
from ._policies.breaker.store import (
    BreakerAdmission,
    BreakerObservation,
    BreakerSpec,
    BreakerStore,
)
from ._policies.budget import RetryBudget, RetryBudgetStatistics
from ._policies.bulkhead import Bulkhead, BulkheadStatistics
from ._policies.fallback import Fallback, FallbackStatistics
from ._policies.hedge import Hedge, HedgeStatistics
from ._policies.limit_algorithms import AIMD, Gradient2, LimitAlgorithm
from ._policies.priority import (
    Priority,
    current_priority,
    priority,
    remaining_time_and_priority,
)
from ._policies.rate_limit import RateLimiter, RateLimiterStatistics
from ._policies.rate_limit_redis import RedisRateLimiter
from ._policies.retry import Retry, RetryStatistics
from ._policies.throttle import AdaptiveThrottle, AdaptiveThrottleStatistics
from ._policies.timeout import Timeout, TimeoutStatistics
from ._policies.vegas import Vegas
from ._service.balance import Balancer, LeastInFlight, PowerOfTwoChoices, RandomChoice, RoundRobin
from ._service.discovery import (
    InMemoryRegistry,
    Instance,
    Registry,
    RegistryStatus,
    ServiceView,
    StaticRegistry,
)
from ._service.errors import NoHealthyInstanceError
from ._service.health import HealthMonitor
from ._service.health_check import discovery_check
from ._service.health_report import CheckReport, CheckResult, HealthReport, HealthStatus
from ._service.pool import EndpointPool, PoolStatistics

__all__ = [
    "AIMD",
    "PROGRAMMING_ERRORS",
    "AdaptiveConcurrency",
    "AdaptiveConcurrencyStatistics",
    "AdaptiveThrottle",
    "AdaptiveThrottleStatistics",
    "Balancer",
    "BreakerAdmission",
    "BreakerObservation",
    "BreakerSpec",
    "BreakerStatistics",
    "BreakerStore",
    "Bulkhead",
    "BulkheadFullError",
    "BulkheadStatistics",
    "CallCancelled",
    "CallFailed",
    "CallListener",
    "CallStarted",
    "CallSucceeded",
    "CheckReport",
    "CheckResult",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    "Clock",
    "ConcurrencyLimitError",
    "EndpointPool",
    "Event",
    "Fallback",
    "FallbackStatistics",
    "FallbackUsed",
    "Gradient2",
    "HealthMonitor",
    "HealthReport",
    "HealthStatus",
    "Hedge",
    "HedgeSent",
    "HedgeStatistics",
    "Hook",
    "InMemoryRegistry",
    "Instance",
    "LeastInFlight",
    "LimitAlgorithm",
    "NoHealthyInstanceError",
    "Pipeline",
    "Policy",
    "PolicyMisuseError",
    "PoolStatistics",
    "PowerOfTwoChoices",
    "Priority",
    "RandomChoice",
    "RateLimitedError",
    "RateLimiter",
    "RateLimiterStatistics",
    "RedisBreakerStore",
    "RedisRateLimiter",
    "Registry",
    "RegistryStatus",
    "Rejected",
    "RejectedError",
    "RejectionReason",
    "ResilienceError",
    "Retry",
    "RetryBudget",
    "RetryBudgetStatistics",
    "RetryScheduled",
    "RetryStatistics",
    "RoundRobin",
    "ServiceView",
    "StateChanged",
    "StaticRegistry",
    "SystemClock",
    "ThrottledError",
    "TimedOut",
    "Timeout",
    "TimeoutExceeded",
    "TimeoutStatistics",
    "TimerHandle",
    "Vegas",
    "WindowTotals",
    "add_hook",
    "current_priority",
    "deadline",
    "discovery_check",
    "no_retries",
    "pipeline",
    "priority",
    "remaining_time",
    "remaining_time_and_priority",
    "remove_hook",
]

__version__ = "0.1.0"

publish(globals())  # each public name's __module__ is "resilient", not its private home
