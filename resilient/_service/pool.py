"""
An endpoint pool: call one instance of a service, eject the failing ones, fail over.

Each instance gets its own circuit breaker. An instance whose breaker is open is ejected:
the balancer never sees it until its `reset_timeout` has passed, when it becomes a
candidate again and its next call is the half-open probe (outlier ejection, as Envoy
does it). A call that fails on one instance is tried on another not yet tried, up to
`max_attempts`, within the caller's deadline; inside `no_retries()` it runs once.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from .._engine.callables import not_callable
from .._engine.context import remaining_time, retries_allowed
from .._engine.errors import CircuitOpenError
from .._engine.validate import check_int, error_matcher, retryable_by_default
from .._policies.breaker.machine import CircuitBreaker, CircuitState
from .balance import Balancer, RoundRobin
from .discovery import Instance, ServiceView
from .errors import NoHealthyInstanceError

__all__ = ["EndpointPool", "PoolStatistics"]

T = TypeVar("T")
InstanceSource = ServiceView | Callable[[], Sequence[Instance]] | Sequence[Instance]
# Read once: on CPython 3.11 every `CircuitState.OPEN` runs `EnumType`'s `__getattr__`
# hook, and each call asks it of every instance (`eligible`).
_OPEN = CircuitState.OPEN


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """
    A snapshot of an `EndpointPool`.

    Attributes:
        instances: Instances known now.
        ejected: Ids of instances whose breaker is open.
        in_flight: Calls in flight per instance id.
        calls: Calls made through the pool.
        failovers: Attempts moved to another instance after a failure.
    """

    instances: int
    ejected: tuple[str, ...]
    in_flight: dict[str, int]
    calls: int
    failovers: int


def _key(instance: Instance) -> tuple[str, str, int]:
    return (instance.id, instance.host, instance.port)


def _default_breaker(instance: Instance) -> CircuitBreaker:
    return CircuitBreaker(
        name=f"{instance.service}/{instance.id}", failure_threshold=5, reset_timeout=10.0
    )


class EndpointPool:
    """
    Call one of a service's instances, balancing, ejecting and failing over.

    Args:
        instances: Where the instances come from: a `ServiceView` (kept current by a
            registry), a function returning them, or a fixed sequence.
        balancer: Picks among eligible instances (default `RoundRobin`).
        breaker: Builds the breaker of an instance (default: 5 consecutive failures open
            it for 10 s).
        max_attempts: Instances tried per call, >= 1.
        failover_on: Errors that move the call to another instance: exception types or
            a predicate (default: any `Exception` but a `RejectedError` or a programming
            error, `resilient.PROGRAMMING_ERRORS`). An open breaker always moves it on.
        service: The service's name, for errors (default: read from the instances).

    Raises:
        ValueError: `max_attempts` < 1.
        TypeError: `balancer` is not a `Balancer`, or `breaker` is not callable.
    """

    def __init__(
        self,
        instances: InstanceSource,
        *,
        balancer: Balancer | None = None,
        breaker: Callable[[Instance], CircuitBreaker] | None = None,
        max_attempts: int = 3,
        failover_on: Any = None,
        service: str | None = None,
    ) -> None:
        if balancer is not None and not isinstance(balancer, Balancer):
            raise TypeError(f"EndpointPool(balancer=...): expected a Balancer, got {balancer!r}")
        if breaker is not None and not callable(breaker):
            raise TypeError(f"EndpointPool(breaker=...): expected a factory, got {breaker!r}")
        self._source = instances
        self._service = service
        self._balancer = balancer or RoundRobin()
        self._make_breaker = breaker or _default_breaker
        self.max_attempts = check_int("EndpointPool", "max_attempts", max_attempts, minimum=1)
        self._failover_on = (
            retryable_by_default
            if failover_on is None
            else error_matcher(
                "EndpointPool", "failover_on", failover_on, spare_programming_errors=True
            )
        )
        # Keyed by id and address: an id reused at a new address starts afresh.
        self._breakers: dict[tuple[str, str, int], CircuitBreaker] = {}
        self._in_flight: dict[tuple[str, str, int], int] = {}
        self._calls = 0
        self._failovers = 0

    def instances(self) -> list[Instance]:
        """
        The instances known now.
        """
        source = self._source
        if isinstance(source, ServiceView):
            return list(source.instances)
        if callable(source):
            return list(source())
        return list(source)

    def breaker_for(self, instance: Instance) -> CircuitBreaker:
        """
        The breaker guarding `instance`, built on first use.

        Raises:
            TypeError: The `breaker` factory returned something else than a
                `CircuitBreaker`.
        """
        key = _key(instance)
        breaker = self._breakers.get(key)
        if breaker is None:
            breaker = self._make_breaker(instance)
            # Checked here, the first time: a factory that returns something else (a
            # Retry, a pipeline) would otherwise fail later as "has no attribute 'state'".
            if not isinstance(breaker, CircuitBreaker):
                raise TypeError(
                    "EndpointPool(breaker=...): the factory must return a CircuitBreaker for"
                    f" the Instance it is given; for {instance.id!r} it returned {breaker!r}"
                )
            self._breakers[key] = breaker
        return breaker

    def in_flight(self, instance: Instance) -> int:
        """
        Calls to `instance` in flight now.
        """
        return self._in_flight.get(_key(instance), 0)

    def is_ejected(self, instance: Instance) -> bool:
        """
        True while `instance`'s breaker is open and not yet ready to probe.
        """
        breaker = self.breaker_for(instance)
        return breaker.state is _OPEN and breaker.retry_in() > 0

    def eligible(self) -> list[Instance]:
        """
        The instances the balancer may pick from now.
        """
        known = self.instances()
        if len(self._breakers) > 2 * len(known) + 8:
            self._forget_departed(known)
        return [i for i in known if not self.is_ejected(i)]

    def _forget_departed(self, known: list[Instance]) -> None:
        # Instances come and go (rolling deploys): drop the breakers and counters of the
        # ones gone, unless a call to them is still in flight.
        present = {_key(i) for i in known}
        for key in [k for k in self._breakers if k not in present]:
            if not self._in_flight.get(key):
                del self._breakers[key]
                self._in_flight.pop(key, None)

    async def call(self, fn: Callable[[Instance], Awaitable[T]]) -> T:
        """
        Run `fn(instance)` on a chosen instance, failing over to others on failure.

        Raises:
            NoHealthyInstanceError: No instance is known, or every one is ejected.
            Exception: The last attempt's error when every attempt failed.
            TypeError: `fn` is not callable.
        """
        if not callable(fn):
            usage = "pool.call({0}), not pool.call({0}(instance))"
            raise not_callable("EndpointPool.call(fn=...)", fn, usage)
        self._calls += 1
        tried: set[str] = set()
        last: BaseException | None = None
        for _ in range(self.max_attempts if retries_allowed() else 1):
            left = remaining_time()
            candidates = [i for i in self.eligible() if i.id not in tried]
            if not candidates or (left is not None and left <= 0):
                break
            instance = self._balancer.pick(candidates, self.in_flight)
            tried.add(instance.id)
            if last is not None:
                self._failovers += 1
            try:
                return await self._attempt(instance, fn)
            except CircuitOpenError as error:
                last = error  # its probe permit was taken meanwhile: try another
            except Exception as error:
                if not self._failover_on(error):
                    raise
                last = error
        if last is None:
            raise self._no_instance()
        raise last

    async def _attempt(self, instance: Instance, fn: Callable[[Instance], Awaitable[T]]) -> T:
        key = _key(instance)
        self._in_flight[key] = self._in_flight.get(key, 0) + 1
        try:
            return await self.breaker_for(instance).call(fn, instance)
        finally:
            self._in_flight[key] -= 1

    def _no_instance(self) -> NoHealthyInstanceError:
        known = self.instances()
        service = self._service or (known[0].service if known else "?")
        ejected = sum(1 for i in known if self.is_ejected(i))
        return NoHealthyInstanceError(service, len(known), ejected)

    def statistics(self) -> PoolStatistics:
        """
        Return a snapshot of the pool.
        """
        known = self.instances()
        return PoolStatistics(
            instances=len(known),
            ejected=tuple(i.id for i in known if self.is_ejected(i)),
            in_flight={i.id: self.in_flight(i) for i in known},
            calls=self._calls,
            failovers=self._failovers,
        )

    def __repr__(self) -> str:
        stats = self.statistics()
        return (
            f"<EndpointPool {stats.instances} instances, {len(stats.ejected)} ejected,"
            f" calls={stats.calls} failovers={stats.failovers}>"
        )
