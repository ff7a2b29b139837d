"""
Tests for the balancers and `EndpointPool`: ejection, failover, deadlines.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from resilient import (
    CircuitBreaker,
    CircuitState,
    EndpointPool,
    InMemoryRegistry,
    Instance,
    LeastInFlight,
    NoHealthyInstanceError,
    PowerOfTwoChoices,
    RandomChoice,
    Retry,
    RoundRobin,
    ServiceView,
    Timeout,
    no_retries,
)
from resilient.testing import FakeClock

A, B, C = (Instance("svc", f"svc-{n}", "127.0.0.1", 9000 + n) for n in (1, 2, 3))


def idle(_: Instance) -> int:
    return 0


def test_round_robin_takes_turns() -> None:
    """RoundRobin picks each candidate in turn."""
    balancer = RoundRobin()
    picks = [balancer.pick([A, B, C], idle).id for _ in range(6)]
    assert picks == ["svc-1", "svc-2", "svc-3", "svc-1", "svc-2", "svc-3"]


def test_random_choice_spreads_over_all() -> None:
    """RandomChoice reaches every candidate, roughly evenly."""
    balancer = RandomChoice(random.Random(1))
    counts = Counter(balancer.pick([A, B, C], idle).id for _ in range(3000))
    assert set(counts) == {"svc-1", "svc-2", "svc-3"}
    assert min(counts.values()) > 850


def test_least_in_flight_prefers_the_idle() -> None:
    """LeastInFlight picks the instance with the fewest calls in flight."""
    load = {"svc-1": 3, "svc-2": 0, "svc-3": 1}
    balancer = LeastInFlight()
    assert {balancer.pick([A, B, C], lambda i: load[i.id]).id for _ in range(5)} == {"svc-2"}


def test_least_in_flight_breaks_ties_in_turn() -> None:
    """With equal load LeastInFlight still spreads the calls."""
    balancer = LeastInFlight()
    assert {balancer.pick([A, B, C], idle).id for _ in range(3)} == {"svc-1", "svc-2", "svc-3"}


def test_power_of_two_choices_avoids_the_loaded() -> None:
    """PowerOfTwoChoices never picks the most loaded of three (it loses every duel)."""
    load = {"svc-1": 9, "svc-2": 0, "svc-3": 1}
    balancer = PowerOfTwoChoices(random.Random(7))
    picks = Counter(balancer.pick([A, B, C], lambda i: load[i.id]).id for _ in range(600))
    assert picks["svc-1"] == 0
    assert picks["svc-2"] > picks["svc-3"] > 0
    assert balancer.pick([A], idle) is A


async def test_pool_fails_over_to_another_instance() -> None:
    """A failure on one instance moves the call to one not yet tried."""
    tried: list[str] = []

    async def call(instance: Instance) -> str:
        tried.append(instance.id)
        if instance is A:
            raise ConnectionError("down")
        return instance.id

    pool = EndpointPool([A, B, C])
    answer = await pool.call(call)
    assert tried[0] == "svc-1"
    assert answer in {"svc-2", "svc-3"}
    assert tried == ["svc-1", answer]
    assert pool.statistics().failovers == 1


async def test_pool_raises_last_error_when_every_attempt_fails() -> None:
    """After max_attempts distinct instances fail, the last error is raised."""
    errors: list[ConnectionError] = []

    async def call(instance: Instance) -> str:
        errors.append(ConnectionError(instance.id))
        raise errors[-1]

    with pytest.raises(ConnectionError) as info:
        await EndpointPool([A, B, C], max_attempts=2).call(call)
    assert info.value is errors[-1]
    assert len(errors) == 2


async def test_open_breaker_ejects_the_instance() -> None:
    """An instance whose breaker opened gets no calls until reset_timeout passes."""
    clock = FakeClock()
    pool = EndpointPool(
        [A, B],
        breaker=lambda i: CircuitBreaker(
            name=i.id, failure_threshold=2, reset_timeout=30, clock=clock
        ),
    )
    hits: Counter[str] = Counter()

    async def call(instance: Instance) -> str:
        hits[instance.id] += 1
        if instance is A:
            raise ConnectionError("A is down")
        return instance.id

    for _ in range(20):
        assert await pool.call(call) == "svc-2"
    assert hits["svc-1"] == 2  # two failures opened its breaker, then no more traffic
    assert pool.breaker_for(A).state is CircuitState.OPEN
    assert pool.statistics().ejected == ("svc-1",)
    clock.advance(30)
    assert [i.id for i in pool.eligible()] == ["svc-1", "svc-2"]  # ready to probe


async def test_all_ejected_raises_no_healthy_instance() -> None:
    """With every instance ejected, calls fail fast with NoHealthyInstanceError."""
    pool = EndpointPool([A], breaker=lambda i: CircuitBreaker(name=i.id, failure_threshold=1))
    pool.breaker_for(A).trip()
    with pytest.raises(NoHealthyInstanceError) as info:
        await pool.call(lambda i: asyncio.sleep(0, i.id))
    assert (info.value.service, info.value.known, info.value.ejected) == ("svc", 1, 1)


async def test_no_instances_raises_no_healthy_instance() -> None:
    """An empty service fails with NoHealthyInstanceError naming nothing known."""
    with pytest.raises(NoHealthyInstanceError, match="0 known"):
        await EndpointPool([]).call(lambda i: asyncio.sleep(0, i.id))


async def test_non_matching_error_does_not_fail_over() -> None:
    """An error outside failover_on is raised at once, from the first instance."""
    tried: list[str] = []

    async def call(instance: Instance) -> str:
        tried.append(instance.id)
        raise KeyError("bad request")

    with pytest.raises(KeyError):
        await EndpointPool([A, B], failover_on=ConnectionError).call(call)
    assert tried == ["svc-1"]


async def test_no_retries_means_one_instance() -> None:
    """Inside no_retries() a failing call is not moved to another instance."""
    tried: list[str] = []

    async def call(instance: Instance) -> str:
        tried.append(instance.id)
        raise ConnectionError("down")

    with no_retries(), pytest.raises(ConnectionError):
        await EndpointPool([A, B, C]).call(call)
    assert len(tried) == 1


async def test_failover_stops_at_the_deadline() -> None:
    """When the caller's deadline is spent, no further instance is tried."""
    clock = FakeClock()
    tried: list[str] = []

    async def call(instance: Instance) -> str:
        tried.append(instance.id)
        clock.advance(1.0)  # each attempt takes a second of the caller's budget
        raise ConnectionError("slow and down")

    with pytest.raises(ConnectionError):
        async with Timeout(1.0, clock=clock):
            await EndpointPool([A, B, C]).call(call)
    assert tried == ["svc-1"]


async def test_in_flight_is_counted_and_released() -> None:
    """In-flight counts rise during a call and return to zero, even on cancellation."""
    pool = EndpointPool([A], balancer=LeastInFlight())
    gate = asyncio.Event()

    async def call(instance: Instance) -> None:
        await gate.wait()

    task = asyncio.create_task(pool.call(call))
    await asyncio.sleep(0)
    assert pool.in_flight(A) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.in_flight(A) == 0
    assert pool.breaker_for(A).statistics().failures == 0  # cancellation is no failure


async def test_pool_follows_a_service_view() -> None:
    """With a ServiceView as source, registered and deregistered instances take effect."""
    registry = InMemoryRegistry()
    await registry.register(A)
    async with ServiceView(registry, "svc") as view:
        pool = EndpointPool(view)

        async def call(instance: Instance) -> str:
            return instance.id

        assert await pool.call(call) == "svc-1"
        await registry.register(B)
        await registry.deregister(A)
        await view.wait_for(lambda xs: [i.id for i in xs] == ["svc-2"])
        assert {await pool.call(call) for _ in range(3)} == {"svc-2"}


def test_bad_max_attempts_is_named() -> None:
    """max_attempts=0 raises ValueError naming the parameter."""
    with pytest.raises(ValueError, match="max_attempts"):
        EndpointPool([A], max_attempts=0)


async def test_departed_instances_are_forgotten() -> None:
    """Breakers of instances that left are dropped: churn does not grow the pool."""
    generation: list[Instance] = []
    pool = EndpointPool(lambda: generation)

    async def call(instance: Instance) -> str:
        return instance.id

    for n in range(300):
        generation[:] = [Instance("svc", f"pod-{n}-{k}", "127.0.0.1", 9000 + k) for k in range(3)]
        await pool.call(call)
    assert len(pool._breakers) <= 2 * 3 + 8 + 3  # the prune bound, plus one generation


def test_pool_rejects_a_non_balancer() -> None:
    """A balancer that is not a Balancer is a TypeError at construction."""
    with pytest.raises(TypeError, match="balancer"):
        EndpointPool([A], balancer=object())  # type: ignore[arg-type]


async def test_pool_refuses_a_breaker_factory_that_returns_no_breaker() -> None:
    """
    A `breaker=` factory that returns something else than a CircuitBreaker fails the
    first call with a TypeError naming the factory and what it returned (it used to be
    an AttributeError about `state`).
    """
    pool = EndpointPool([A], breaker=lambda instance: Retry(name=instance.id))  # type: ignore[arg-type, return-value]

    async def call(instance: Instance) -> str:
        return instance.id

    with pytest.raises(
        TypeError, match=r"EndpointPool\(breaker=\.\.\.\): .* for 'svc-1' it returned <Retry"
    ):
        await pool.call(call)
