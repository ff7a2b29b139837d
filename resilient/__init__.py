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

from ._adaptive_concurrency import AdaptiveConcurrency, AdaptiveConcurrencyStatistics
from ._balance import Balancer, LeastInFlight, PowerOfTwoChoices, RandomChoice, RoundRobin
from ._breaker import BreakerStatistics, CircuitBreaker, CircuitState
from ._budget import RetryBudget, RetryBudgetStatistics
from ._bulkhead import Bulkhead, BulkheadStatistics
from ._clock import Clock, SystemClock, TimerHandle
from ._discovery import (
    InMemoryRegistry,
    Instance,
    Registry,
    RegistryStatus,
    ServiceView,
    StaticRegistry,
)
from ._errors import (
    PROGRAMMING_ERRORS,
    BulkheadFullError,
    CircuitOpenError,
    ConcurrencyLimitError,
    NoHealthyInstanceError,
    PolicyMisuseError,
    RateLimitedError,
    RejectedError,
    ResilienceError,
    ThrottledError,
    TimeoutExceeded,
)
from ._events import (
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
from ._fallback import Fallback, FallbackStatistics
from ._health import HealthMonitor
from ._health_check import (
    CheckReport,
    CheckResult,
    HealthReport,
    HealthStatus,
    discovery_check,
)
from ._hedge import Hedge, HedgeStatistics
from ._limit_algorithms import AIMD, Gradient2, LimitAlgorithm
from ._no_retries import no_retries
from ._pipeline import Pipeline, pipeline
from ._plan import CallListener, add_hook, remove_hook
from ._policy import Policy
from ._pool import EndpointPool, PoolStatistics
from ._priority import Priority, current_priority, priority
from ._rate_limit import RateLimiter, RateLimiterStatistics
from ._rate_limit_redis import RedisRateLimiter
from ._retry import Retry, RetryStatistics
from ._throttle import AdaptiveThrottle, AdaptiveThrottleStatistics
from ._timeout import Timeout, TimeoutStatistics, deadline, remaining_time
from ._vegas import Vegas

__all__ = [
    "AIMD",
    "PROGRAMMING_ERRORS",
    "AdaptiveConcurrency",
    "AdaptiveConcurrencyStatistics",
    "AdaptiveThrottle",
    "AdaptiveThrottleStatistics",
    "Balancer",
    "BreakerStatistics",
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
    "add_hook",
    "current_priority",
    "deadline",
    "discovery_check",
    "no_retries",
    "pipeline",
    "priority",
    "remaining_time",
    "remove_hook",
]

__version__ = "0.1.0"
