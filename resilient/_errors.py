"""
The exceptions `resilient` raises.

Every error a policy raises on its own behalf derives from `ResilienceError`, so one
``except ResilienceError`` catches them all. Errors raised by the wrapped call are never
wrapped: `Retry` re-raises the last one unchanged and the other policies let them through.

    ResilienceError
    ├── RejectedError                 a policy refused to start the call
    │   ├── CircuitOpenError          the breaker is open (or its probes are all taken)
    │   ├── BulkheadFullError         no free slot and no room (or time) to queue
    │   └── NoHealthyInstanceError    discovery knows no instance, or all are ejected
    ├── TimeoutExceeded               also a builtin TimeoutError
    └── PolicyMisuseError             a policy used where it can't serve (a RuntimeError)

`asyncio.CancelledError` is never raised, swallowed or translated by a policy other
than the timeout that cancelled its own scope.

`PROGRAMMING_ERRORS` names the exceptions that mean the calling code is wrong rather
than the dependency: policies don't retry them, breakers don't count them and fallbacks
don't answer them, unless told to by name (docs/policies.md, "Programming errors").
"""

from __future__ import annotations

__all__ = [
    "PROGRAMMING_ERRORS",
    "BulkheadFullError",
    "CircuitOpenError",
    "NoHealthyInstanceError",
    "PolicyMisuseError",
    "RejectedError",
    "ResilienceError",
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

    def __init__(self, name: str, retry_in: float) -> None:
        self.name = name
        self.retry_in = retry_in
        super().__init__(f"circuit {name!r} is open; next probe in {retry_in:.3f}s")

    def __reduce__(self) -> tuple[type[CircuitOpenError], tuple[str, float]]:
        return (type(self), (self.name, self.retry_in))


class BulkheadFullError(RejectedError):
    """
    The bulkhead had no free slot and its queue was full, or the wait ran out.

    Attributes:
        name: The bulkhead's name.
        max_concurrent: Its concurrency limit.
        max_queue: How many callers may wait for a slot.
    """

    def __init__(self, name: str, max_concurrent: int, max_queue: int, why: str) -> None:
        self.name = name
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.why = why
        super().__init__(
            f"bulkhead {name!r} is full ({why}; max_concurrent={max_concurrent},"
            f" max_queue={max_queue})"
        )

    def __reduce__(self) -> tuple[type[BulkheadFullError], tuple[str, int, int, str]]:
        return (type(self), (self.name, self.max_concurrent, self.max_queue, self.why))


class NoHealthyInstanceError(RejectedError):
    """
    No instance of the service could take the call: none known, or all ejected.

    Attributes:
        service: The service name.
        known: Instances known.
        ejected: Of those, how many were ejected (breaker open).
    """

    def __init__(self, service: str, known: int, ejected: int) -> None:
        self.service = service
        self.known = known
        self.ejected = ejected
        super().__init__(f"no healthy instance of {service!r}: {known} known, {ejected} ejected")

    def __reduce__(self) -> tuple[type[NoHealthyInstanceError], tuple[str, int, int]]:
        return (type(self), (self.service, self.known, self.ejected))


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
