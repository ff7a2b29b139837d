"""
The exceptions `resilient` raises.

Every error a policy raises on its own behalf derives from `ResilienceError`, so one
``except ResilienceError`` catches them all. Errors raised by the wrapped call are never
wrapped: `Retry` re-raises the last one unchanged and the other policies let them through.

    ResilienceError
    ├── RejectedError                 a policy refused to start the call
    │   ├── CircuitOpenError          the breaker is open (or its probes are all taken)
    │   ├── BulkheadFullError         no free slot and no room (or time) to queue
    │   ├── ConcurrencyLimitError     an adaptive concurrency limit is reached
    │   ├── NoHealthyInstanceError    discovery knows no instance, or all are ejected (*)
    │   ├── RateLimitedError          no permit now (or within max_wait); has retry_after
    │   └── ThrottledError            adaptive throttling refused the call locally
    ├── TimeoutExceeded               also a builtin TimeoutError
    └── PolicyMisuseError             a policy used where it can't serve (a RuntimeError)

    (*) defined by the service layer, in `_service/errors.py`, beside the pool that
        raises it; the engine knows nothing of services.

`asyncio.CancelledError` is never raised, swallowed or translated by a policy other
than the timeout that cancelled its own scope.

The rejections build their messages in ``__str__``, only when someone reads them: an
open breaker, a full bulkhead or a limiter under load rejects far more calls than anybody
logs, and formatting the message was a third of a rejection's cost. Their ``args`` hold
the constructor's arguments (as ``__reduce__`` does); every attribute is set at once, but
`CircuitOpenError`, the most frequent, keeps nothing but its ``args`` (its attributes
read them) and takes its two arguments by position only.

`PROGRAMMING_ERRORS` names the exceptions that mean the calling code is wrong rather
than the dependency: policies don't retry them, breakers don't count them and fallbacks
don't answer them, unless told to by name (docs/policies.md, "Programming errors").
"""

from __future__ import annotations

from .events import RejectionReason

__all__ = [
    "PROGRAMMING_ERRORS",
    "BulkheadFullError",
    "CircuitOpenError",
    "ConcurrencyLimitError",
    "PolicyMisuseError",
    "RateLimitedError",
    "RejectedError",
    "ResilienceError",
    "ThrottledError",
    "TimeoutExceeded",
]


class ResilienceError(Exception):
    """
    Base of every exception raised by a `resilient` policy itself.
    """


class RejectedError(ResilienceError):
    """
    A policy refused to run the call; the wrapped function was not called.
    """


class CircuitOpenError(RejectedError):
    """
    The circuit breaker is open, so the call was not attempted.

    Attributes:
        name: The breaker's name.
        retry_in: Seconds until the breaker lets a probe through (0 when half-open and
            all probe permits are taken).
    """

    # The most frequent rejection of all (every call while open): nothing is stored but
    # the ``args`` BaseException keeps anyway, which also makes it picklable as it is.
    __slots__ = ()

    def __init__(self, name: str, retry_in: float, /) -> None:
        pass  # BaseException.__new__ has stored (name, retry_in) in `args`

    @property
    def name(self) -> str:
        return self.args[0]  # type: ignore[no-any-return]  # set by the constructor

    @property
    def retry_in(self) -> float:
        return self.args[1]  # type: ignore[no-any-return]  # set by the constructor

    def __str__(self) -> str:
        return f"circuit {self.name!r} is open; next probe in {self.retry_in:.3f}s"


class BulkheadFullError(RejectedError):
    """
    The bulkhead had no free slot and its queue was full, or the wait ran out.

    Attributes:
        name: The bulkhead's name.
        max_concurrent: Its concurrency limit.
        max_queue: How many callers may wait for a slot.
        why: What happened, in words.
        reason: Why, as a `RejectionReason`: ``BULKHEAD_FULL``, or ``PRIORITY_SHED``,
            ``DEADLINE_EXCEEDED``, ``DEADLINE_TOO_SHORT`` for a waiter that left the queue.
    """

    def __init__(
        self,
        name: str,
        max_concurrent: int,
        max_queue: int,
        why: str,
        reason: RejectionReason = RejectionReason.BULKHEAD_FULL,
    ) -> None:
        super().__init__(name, max_concurrent, max_queue, why)
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.why = why
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"bulkhead {self.name!r} is full ({self.why}; max_concurrent={self.max_concurrent},"
            f" max_queue={self.max_queue})"
        )

    def __reduce__(
        self,
    ) -> tuple[type[BulkheadFullError], tuple[str, int, int, str, RejectionReason]]:
        args = (self.name, self.max_concurrent, self.max_queue, self.why, self.reason)
        return (type(self), args)


class RateLimitedError(RejectedError):
    """
    A rate limiter had no permit for the call now, nor within its `max_wait`.

    `retry_after` has the name `Retry` reads a server's ``Retry-After`` from, so a `Retry`
    told to retry this error (``on=RateLimitedError``) waits at least that long.

    Attributes:
        name: The limiter's name.
        retry_after: Seconds until the permits asked for are available (an estimate
            when other callers take permits first).
        permits: The permits the call asked for.
        why: What went wrong, when it was not simply the rate (e.g. the shared store
            is unreachable and the limiter fails closed); else empty.
        reason: Why, as a `RejectionReason`: ``RATE_LIMITED``, ``STORE_UNAVAILABLE``,
            ``PRIORITY_SHED`` (a sheddable call may not wait) or ``DEADLINE_TOO_SHORT``.
    """

    def __init__(
        self,
        name: str,
        retry_after: float,
        permits: float = 1,
        why: str = "",
        reason: RejectionReason = RejectionReason.RATE_LIMITED,
    ) -> None:
        super().__init__(name, retry_after, permits, why)
        self.name = name
        self.retry_after = retry_after
        self.permits = permits
        self.why = why
        self.reason = reason

    def __str__(self) -> str:
        what = f"rate limit {self.name!r} reached"
        if self.why:
            what = f"{what} ({self.why})"
        return f"{what}; {self.permits:g} permit(s) available in {self.retry_after:.3f}s"

    def __reduce__(
        self,
    ) -> tuple[type[RateLimitedError], tuple[str, float, float, str, RejectionReason]]:
        return (type(self), (self.name, self.retry_after, self.permits, self.why, self.reason))


class ConcurrencyLimitError(RejectedError):
    """
    An `AdaptiveConcurrency` limit was reached and its queue was full (or the wait ran out).

    Attributes:
        name: The policy's name.
        limit: The concurrency limit when the call was refused.
        why: What was full, in words.
        reason: Why, as a `RejectionReason`: ``CONCURRENCY_LIMIT``, or ``PRIORITY_SHED``,
            ``DEADLINE_EXCEEDED``, ``DEADLINE_TOO_SHORT`` for a waiter that left the queue.
    """

    def __init__(
        self,
        name: str,
        limit: int,
        why: str,
        reason: RejectionReason = RejectionReason.CONCURRENCY_LIMIT,
    ) -> None:
        super().__init__(name, limit, why)
        self.name = name
        self.limit = limit
        self.why = why
        self.reason = reason

    def __str__(self) -> str:
        return f"concurrency limit {self.name!r} reached ({self.why}; limit={self.limit})"

    def __reduce__(
        self,
    ) -> tuple[type[ConcurrencyLimitError], tuple[str, int, str, RejectionReason]]:
        return (type(self), (self.name, self.limit, self.why, self.reason))


class ThrottledError(RejectedError):
    """
    `AdaptiveThrottle` refused the call locally: the dependency has been rejecting calls.

    Attributes:
        name: The policy's name.
        probability: The rejection probability the call met.
    """

    def __init__(self, name: str, probability: float) -> None:
        super().__init__(name, probability)
        self.name = name
        self.probability = probability

    def __str__(self) -> str:
        return f"{self.name!r} throttled the call locally (p={self.probability:.3f})"

    def __reduce__(self) -> tuple[type[ThrottledError], tuple[str, float]]:
        return (type(self), (self.name, self.probability))


class TimeoutExceeded(ResilienceError, TimeoutError):
    """
    The call did not finish within its time budget.

    Attributes:
        name: The timeout policy's name.
        timeout: The budget in seconds that ran out: the policy's own, or less when an
            enclosing deadline left less time.
    """

    def __init__(self, name: str, timeout: float) -> None:
        self.name = name
        self.timeout = timeout
        # Formatted here, unlike the rejections' messages: as an OSError it must hold a
        # single argument (two would be read as errno and strerror, and aiohttp would
        # wrap it as a ClientOSError), and a timeout is not the path a rejection is.
        super().__init__(f"{name!r} timed out after {timeout:.3f}s")

    def __reduce__(self) -> tuple[type[TimeoutExceeded], tuple[str, float]]:
        return (type(self), (self.name, self.timeout))


class PolicyMisuseError(ResilienceError, RuntimeError):
    """
    A policy was used where it cannot serve, e.g. a `Bulkhead` from a second event loop.

    The message says how to fix the code. Like the other `PROGRAMMING_ERRORS`, it is not
    retried, counted by breakers or answered by fallbacks unless named.
    """


PROGRAMMING_ERRORS: tuple[type[Exception], ...] = (
    AssertionError,
    AttributeError,
    NameError,
    NotImplementedError,
    SyntaxError,
    TypeError,
    PolicyMisuseError,
)
"""
Exceptions (and their subclasses) that say the code is wrong, not the dependency.

The same call raises them again however often it is retried, so `Retry` and `Hedge`
don't try again, a `CircuitBreaker` counts them neither as failure nor as success, and
a `Fallback` lets them through, unless ``on=`` names the type (``Retry(on=TypeError)``)
or is a predicate. `LookupError` (``KeyError``, ``IndexError``), `ValueError` and
`ImportError` are not in it: clients raise them for missing or malformed data and
absent optional dependencies, which a fallback legitimately answers. `PolicyMisuseError`
is in it: a policy used where it cannot serve fails the same way every time.
"""
