"""
Shared breaker state through pybreaker storages, and pybreaker interop.

In memory (`CircuitMemoryStorage`) the shared breaker must behave exactly like the native
one, in fake time. Over Redis (`CircuitRedisStorage`, a real server) separate processes
share one breaker, a plain `pybreaker.CircuitBreaker` sees the same state, and the
storage's blocking I/O never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import pybreaker
import pytest
import redis

from resilient import (
    BreakerStatistics,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    Event,
    StateChanged,
    Timeout,
    TimeoutExceeded,
)
from resilient._policies.breaker.pybreaker_store import STORAGE_WORKERS
from resilient.testing import FakeClock
from tests._paths import REPO_ROOT
from tests._redis import RedisServer

T = TypeVar("T")


CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


# --- helpers ---------------------------------------------------------------------------


class Dependency:
    """
    An async callable standing in for a remote dependency; counts its calls.
    """

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, fail: bool = False, error: type[Exception] = ConnectionError) -> str:
        self.calls += 1
        if fail:
            raise error("dependency down")
        return "ok"


async def outcome(breaker: CircuitBreaker, dependency: Dependency, *, fail: bool) -> str:
    """
    Call through `breaker`; return "ok", "failed" or "rejected <retry_in>".
    """
    try:
        await breaker.call(dependency, fail)
    except CircuitOpenError as error:
        return f"rejected {error.retry_in:g}"
    except ConnectionError:
        return "failed"
    return "ok"


async def held(gate: asyncio.Event, *, fail: bool) -> str:
    """
    A dependency call that answers once `gate` is set.
    """
    await gate.wait()
    if fail:
        raise ConnectionError("late")
    return "late ok"


def transitions(events: Sequence[Event]) -> list[tuple[str, str]]:
    """
    The (old, new) state values of every `StateChanged` in `events`.
    """
    return [
        (str(event.old.value), str(event.new.value))
        for event in events
        if isinstance(event, StateChanged)
    ]


def memory_breaker(
    clock: FakeClock, events: list[Event], *, shared: bool, **options: Any
) -> CircuitBreaker:
    """
    A consecutive-mode breaker (threshold 3, reset 10 s), native or over memory storage.
    """
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED) if shared else None
    settings: dict[str, Any] = {"failure_threshold": 3, "reset_timeout": 10.0, **options}
    return CircuitBreaker("db", storage=storage, clock=clock, hooks=[events.append], **settings)


class RecordingListener(pybreaker.CircuitBreakerListener):
    """
    A pybreaker listener that writes down what it is told.
    """

    def __init__(self) -> None:
        self.heard: list[tuple[str, ...]] = []

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self.heard.append(("state_change", old_state.name if old_state else "", new_state.name))

    def success(self, cb: pybreaker.CircuitBreaker) -> None:
        self.heard.append(("success",))

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self.heard.append(("failure", type(exc).__name__))


def sync_dependency(calls: list[str]) -> str:
    """
    A synchronous dependency for pybreaker's own `call`.
    """
    calls.append("called")
    return "sync ok"


# --- in memory: the shared breaker behaves like the native one ---------------------------

# Threshold 3, reset 10 s. Each entry: a step, then (outcome, state, failure run) after it.
SCENARIO: list[tuple[str | float, tuple[str, CircuitState, int] | None]] = [
    ("fail", ("failed", CLOSED, 1)),
    ("fail", ("failed", CLOSED, 2)),
    ("ok", ("ok", CLOSED, 0)),  # a success ends the run
    ("fail", ("failed", CLOSED, 1)),
    ("fail", ("failed", CLOSED, 2)),
    ("fail", ("failed", OPEN, 3)),  # the third in a row opens it
    ("ok", ("rejected 10", OPEN, 3)),
    (4.0, None),
    ("ok", ("rejected 6", OPEN, 3)),
    (6.0, None),
    ("fail", ("failed", OPEN, 3)),  # the probe fails: open again, for another 10 s
    ("ok", ("rejected 10", OPEN, 3)),
    (10.0, None),
    ("ok", ("ok", CLOSED, 0)),  # the probe succeeds: closed
    ("fail", ("failed", CLOSED, 1)),
]


async def play(breaker: CircuitBreaker, clock: FakeClock) -> list[tuple[str, CircuitState, int]]:
    """
    Run `SCENARIO` against `breaker`; return what happened after each call.
    """
    dependency = Dependency()
    trace: list[tuple[str, CircuitState, int]] = []
    for step, _ in SCENARIO:
        if isinstance(step, float):
            clock.advance(step)
            continue
        result = await outcome(breaker, dependency, fail=step == "fail")
        trace.append((result, breaker.state, breaker.statistics().window_failures))
    return trace


async def test_memory_storage_breaker_matches_native_breaker() -> None:
    """
    Over `CircuitMemoryStorage` the breaker opens after 3 failures, rejects for
    reset_timeout, half-opens, re-opens on a failed probe and closes on a good one, with
    the same outcomes, events and statistics as the native breaker.
    """
    expected = [after for _, after in SCENARIO if after is not None]
    results: dict[bool, tuple[list[tuple[str, str]], BreakerStatistics]] = {}
    for shared in (False, True):
        clock, events = FakeClock(), list[Event]()
        breaker = memory_breaker(clock, events, shared=shared)
        assert await play(breaker, clock) == expected
        results[shared] = (transitions(events), breaker.statistics())
    assert results[True] == results[False]
    assert results[True][0] == [
        ("closed", "open"),
        ("open", "half-open"),
        ("half-open", "open"),
        ("open", "half-open"),
        ("half-open", "closed"),
    ]


async def test_memory_storage_holds_pybreaker_state() -> None:
    """
    The storage holds the state in pybreaker's terms: the state name, the failure
    counter and `opened_at` as an aware datetime taken from the clock's wall time.
    """
    clock = FakeClock(wall_start=1_700_000_000.0)
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    breaker = CircuitBreaker(storage=storage, failure_threshold=3, reset_timeout=10, clock=clock)
    dependency = Dependency()
    for _ in range(2):
        await outcome(breaker, dependency, fail=True)
    assert (storage.state, storage.counter, storage.opened_at) == ("closed", 2, None)
    clock.advance(1.5)
    await outcome(breaker, dependency, fail=True)
    assert storage.state == pybreaker.STATE_OPEN
    assert storage.counter == 3
    assert storage.opened_at == datetime.fromtimestamp(1_700_000_001.5, UTC)
    assert "shared" in repr(breaker)
    assert "failures=3/3" in repr(breaker)


async def test_open_shared_breaker_rejects_without_calling() -> None:
    """
    While open, calls are rejected with `CircuitOpenError` naming the breaker and the
    time to the next probe, and the function is not called.
    """
    clock, events = FakeClock(), list[Event]()
    breaker = memory_breaker(clock, events, shared=True)
    failing = Dependency()
    for _ in range(3):
        await outcome(breaker, failing, fail=True)
    clock.advance(2.5)
    dependency = Dependency()
    with pytest.raises(CircuitOpenError) as caught:
        await breaker.call(dependency)
    assert dependency.calls == 0
    assert caught.value.name == "db"
    assert caught.value.retry_in == pytest.approx(7.5)
    assert breaker.retry_in() == pytest.approx(7.5)
    assert breaker.statistics().rejections == 1


async def test_shared_breaker_half_open_admits_one_probe_at_a_time() -> None:
    """
    Half-open, only `half_open_max_calls` probes run at once; the others are rejected
    with retry_in 0, and a probe that is cancelled gives its permit back.
    """
    clock, events = FakeClock(), list[Event]()
    breaker = memory_breaker(clock, events, shared=True)
    for _ in range(3):
        await outcome(breaker, Dependency(), fail=True)
    clock.advance(10)
    gate = asyncio.Event()
    probe = asyncio.create_task(breaker.call(gate.wait))
    await asyncio.sleep(0)
    assert breaker.state is HALF_OPEN
    dependency = Dependency()
    with pytest.raises(CircuitOpenError) as caught:
        await breaker.call(dependency)
    assert (caught.value.retry_in, dependency.calls) == (0.0, 0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    assert await breaker.call(dependency) == "ok"
    assert breaker.state is CLOSED


@pytest.mark.parametrize(
    "wall_start", [1_700_000_000.0, 1_700_000_000.1234567, 1_763_700_000.9999996]
)
async def test_shared_breaker_probes_exactly_at_reset_timeout(wall_start: float) -> None:
    """
    The probe is let through once reset_timeout has passed, to the microsecond, even
    when `opened_at` (a datetime) reads back a fraction of a microsecond late.
    """
    clock, events = FakeClock(wall_start=wall_start), list[Event]()
    breaker = memory_breaker(clock, events, shared=True)
    for _ in range(3):
        await outcome(breaker, Dependency(), fail=True)
    clock.advance(9.99)
    assert (await outcome(breaker, Dependency(), fail=False)).startswith("rejected")
    clock.advance(0.01)
    assert await outcome(breaker, Dependency(), fail=False) == "ok"


@pytest.mark.parametrize("shared", [False, True], ids=["native", "memory-storage"])
async def test_failure_admitted_before_opening_does_not_extend_open_period(shared: bool) -> None:
    """
    A call admitted while closed that fails after the breaker opened is counted but
    neither re-opens the breaker nor pushes its next probe back.
    """
    clock, events = FakeClock(), list[Event]()
    breaker = memory_breaker(clock, events, shared=shared)
    gate = asyncio.Event()
    slow = asyncio.create_task(breaker.call(held, gate, fail=True))
    await asyncio.sleep(0)
    for _ in range(3):
        await outcome(breaker, Dependency(), fail=True)
    clock.advance(5)
    gate.set()
    with pytest.raises(ConnectionError):
        await slow
    assert breaker.retry_in() == pytest.approx(5.0)
    clock.advance(5)
    assert await outcome(breaker, Dependency(), fail=False) == "ok"
    assert breaker.statistics().failures == 4
    assert transitions(events).count(("closed", "open")) == 1


@pytest.mark.parametrize("shared", [False, True], ids=["native", "memory-storage"])
async def test_failure_admitted_before_a_whole_cycle_does_not_count(shared: bool) -> None:
    """
    A failure from a call admitted before the breaker opened and closed again does not
    count against the new closed period.
    """
    clock, events = FakeClock(), list[Event]()
    breaker = memory_breaker(clock, events, shared=shared)
    gate = asyncio.Event()
    slow = asyncio.create_task(breaker.call(held, gate, fail=True))
    await asyncio.sleep(0)
    for _ in range(3):
        await outcome(breaker, Dependency(), fail=True)
    clock.advance(10)
    assert await outcome(breaker, Dependency(), fail=False) == "ok"
    gate.set()
    with pytest.raises(ConnectionError):
        await slow
    for _ in range(2):
        await outcome(breaker, Dependency(), fail=True)
    assert breaker.state is CLOSED
    assert breaker.statistics().window_failures == 2


def breakers_over_one_storage(
    clock: FakeClock, count: int
) -> tuple[list[CircuitBreaker], pybreaker.CircuitMemoryStorage]:
    """
    `count` breakers (threshold 3, reset 10 s) over one memory storage: as many
    processes, in miniature.
    """
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    breakers = [
        CircuitBreaker(storage=storage, failure_threshold=3, reset_timeout=10, clock=clock)
        for _ in range(count)
    ]
    return breakers, storage


async def test_breakers_over_one_storage_share_state() -> None:
    """
    Two breakers over one storage add up their failures, and when one opens it the
    other rejects without calling; the rejecting one's statistics and repr show the
    shared failure run it found in the storage, not only its own failure.
    """
    clock = FakeClock()
    (first, second), storage = breakers_over_one_storage(clock, 2)
    await outcome(second, Dependency(), fail=True)
    await outcome(first, Dependency(), fail=True)
    assert (first.state, storage.counter) == (CLOSED, 2)
    assert await outcome(first, Dependency(), fail=True) == "failed"
    assert first.state is OPEN
    clock.advance(4)
    dependency = Dependency()
    assert await outcome(second, dependency, fail=False) == "rejected 6"
    assert (second.state, dependency.calls) == (OPEN, 0)
    assert second.statistics().window_failures == 3
    assert "open failures=3/3 shared, storage: open failures=3 (0.0s ago)" in repr(second)


async def test_outcomes_in_flight_when_another_breaker_opened_are_stale() -> None:
    """
    Calls admitted while closed that finish after another breaker opened the shared
    circuit (unseen by theirs until then) neither push the reopening back (a failure)
    nor clear the failure counter (a success); their breaker learns it is open, and
    when the probe is due.
    """
    clock = FakeClock()
    (first, second, third), storage = breakers_over_one_storage(clock, 3)
    gate = asyncio.Event()
    late_failure = asyncio.create_task(second.call(held, gate, fail=True))
    late_success = asyncio.create_task(third.call(held, gate, fail=False))
    await asyncio.sleep(0)
    for _ in range(3):
        await outcome(first, Dependency(), fail=True)
    opened_at = storage.opened_at
    clock.advance(4)
    gate.set()
    with pytest.raises(ConnectionError):
        await late_failure
    assert await late_success == "late ok"
    assert (storage.state, storage.counter, storage.opened_at) == ("open", 3, opened_at)
    assert (second.state, third.state) == (OPEN, OPEN)
    assert second.retry_in() == pytest.approx(6.0)
    assert third.retry_in() == pytest.approx(6.0)


async def test_probe_finishing_after_another_breaker_closed_the_circuit_is_stale() -> None:
    """
    A probe that fails after another breaker's probe already closed the shared circuit
    does not re-open it.
    """
    clock = FakeClock()
    (first, second), storage = breakers_over_one_storage(clock, 2)
    for _ in range(3):
        await outcome(first, Dependency(), fail=True)
    clock.advance(10)
    gate = asyncio.Event()
    slow_probe = asyncio.create_task(first.call(held, gate, fail=True))
    await asyncio.sleep(0)
    assert (first.state, storage.state) == (HALF_OPEN, "half-open")
    assert await outcome(second, Dependency(), fail=False) == "ok"
    assert storage.state == "closed"
    gate.set()
    with pytest.raises(ConnectionError):
        await slow_probe
    assert (first.state, storage.state, storage.counter) == (CLOSED, "closed", 0)


async def test_shared_success_threshold_needs_that_many_probes() -> None:
    """
    With success_threshold=2 the breaker stays half-open after one good probe and
    closes after the second; the storage's success counter carries the count.
    """
    clock, events = FakeClock(), list[Event]()
    breaker = memory_breaker(clock, events, shared=True, success_threshold=2)
    for _ in range(3):
        await outcome(breaker, Dependency(), fail=True)
    clock.advance(10)
    assert await outcome(breaker, Dependency(), fail=False) == "ok"
    assert breaker.state is HALF_OPEN
    assert await outcome(breaker, Dependency(), fail=False) == "ok"
    assert breaker.state is CLOSED


async def test_trip_and_reset_write_the_storage() -> None:
    """
    `trip()` opens the shared state for everyone, `reset()` closes it and clears the
    failure counter.
    """
    clock = FakeClock()
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    breaker = CircuitBreaker(storage=storage, failure_threshold=3, reset_timeout=10, clock=clock)
    await outcome(breaker, Dependency(), fail=True)
    breaker.trip()
    assert (breaker.state, storage.state) == (OPEN, "open")
    assert breaker.retry_in() == pytest.approx(10.0)
    breaker.reset()
    assert (breaker.state, storage.state, storage.counter) == (CLOSED, "closed", 0)


async def test_excluded_and_cancelled_calls_do_not_count_in_shared_mode() -> None:
    """
    Excluded exceptions and cancellation leave the shared failure counter alone.
    """
    clock = FakeClock()
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    breaker = CircuitBreaker(storage=storage, failure_threshold=1, exclude=KeyError, clock=clock)
    with pytest.raises(KeyError):
        await breaker.call(Dependency(), True, KeyError)
    task = asyncio.create_task(breaker.call(asyncio.sleep, 3600))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (breaker.state, storage.counter) == (CLOSED, 0)
    assert breaker.statistics().ignored == 2


@pytest.mark.parametrize(
    "window_option",
    [
        {"failure_rate": 0.5},
        {"window": 10},
        {"window_duration": 5.0},
        {"min_calls": 2},
        {"slow_call_duration": 1.0},
        {"slow_call_rate": 0.5},
    ],
    ids=lambda option: next(iter(option)),
)
def test_window_parameters_with_storage_are_rejected(window_option: dict[str, Any]) -> None:
    """
    Shared storage holds consecutive-failure counters only: any window parameter
    together with `storage=` raises ValueError naming `storage`.
    """
    storage = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
    with pytest.raises(ValueError, match=r"storage=.*window parameters"):
        CircuitBreaker(storage=storage, **window_option)


@pytest.mark.parametrize(
    "not_a_storage",
    [object(), "redis://127.0.0.1:6379", {"state": "closed"}],
    ids=["object", "url", "dict"],
)
def test_non_storage_object_is_a_type_error(not_a_storage: object) -> None:
    """
    `storage=` takes a pybreaker storage; anything else is a TypeError at construction.
    """
    with pytest.raises(TypeError, match=r"storage=.*expected a pybreaker storage"):
        CircuitBreaker(storage=not_a_storage)  # type: ignore[arg-type]  # the point


def test_pybreaker_breaker_as_storage_points_to_from_pybreaker() -> None:
    """
    Passing a `pybreaker.CircuitBreaker` as `storage=` is a TypeError that suggests
    `CircuitBreaker.from_pybreaker`.
    """
    with pytest.raises(TypeError, match="from_pybreaker"):
        CircuitBreaker(storage=pybreaker.CircuitBreaker())  # type: ignore[arg-type]  # the point


# --- from_pybreaker ----------------------------------------------------------------------


def test_from_pybreaker_takes_its_settings() -> None:
    """
    `from_pybreaker` copies name, fail_max, reset_timeout and success_threshold.
    """
    source = pybreaker.CircuitBreaker(
        fail_max=2, reset_timeout=42, success_threshold=3, name="inventory"
    )
    breaker = CircuitBreaker.from_pybreaker(source)
    assert breaker.name == "inventory"
    assert breaker.failure_threshold == 2
    assert breaker.reset_timeout == 42.0
    assert breaker.success_threshold == 3
    assert "shared" in repr(breaker)


async def test_from_pybreaker_shares_state_both_ways() -> None:
    """
    Failures through the async policy open the pybreaker object (its sync `call` then
    raises `CircuitBreakerError` without calling), and after reset_timeout a probe
    through the policy closes it for pybreaker too.
    """
    source = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=60)
    clock = FakeClock(wall_start=time.time())  # pybreaker checks opened_at against now
    breaker = CircuitBreaker.from_pybreaker(source, clock=clock)
    for _ in range(2):
        assert await outcome(breaker, Dependency(), fail=True) == "failed"
    assert source.current_state == pybreaker.STATE_OPEN
    assert source.fail_counter == 2
    sync_calls: list[str] = []
    with pytest.raises(pybreaker.CircuitBreakerError):
        source.call(sync_dependency, sync_calls)
    assert sync_calls == []
    clock.advance(60)
    assert await outcome(breaker, Dependency(), fail=False) == "ok"
    assert source.current_state == pybreaker.STATE_CLOSED
    assert source.call(sync_dependency, sync_calls) == "sync ok"


async def test_pybreaker_opening_rejects_policy_calls() -> None:
    """
    When synchronous code opens the pybreaker object, the async policy rejects.
    """
    source = pybreaker.CircuitBreaker(fail_max=1, reset_timeout=60)
    breaker = CircuitBreaker.from_pybreaker(source)

    def broken() -> None:
        raise ConnectionError("down")

    with pytest.raises(pybreaker.CircuitBreakerError):
        source.call(broken)
    dependency = Dependency()
    with pytest.raises(CircuitOpenError) as caught:
        await breaker.call(dependency)
    assert dependency.calls == 0
    assert 59 < caught.value.retry_in <= 60


async def test_from_pybreaker_excluded_exceptions_do_not_count() -> None:
    """
    Exceptions the pybreaker object excludes (by type or predicate) neither count as
    failures nor reach its listeners as failures.
    """
    listener = RecordingListener()

    def is_business_error(error: BaseException) -> bool:
        return "business" in str(error)

    source = pybreaker.CircuitBreaker(
        fail_max=2, exclude=(KeyError, is_business_error), listeners=[listener]
    )
    breaker = CircuitBreaker.from_pybreaker(source)
    for _ in range(3):
        with pytest.raises(KeyError):
            await breaker.call(Dependency(), True, KeyError)

    async def business_rule() -> None:
        raise ValueError("business rule says no")

    for _ in range(3):
        with pytest.raises(ValueError, match="business"):
            await breaker.call(business_rule)
    assert (breaker.state, source.current_state, source.fail_counter) == (CLOSED, "closed", 0)
    assert listener.heard == []
    assert breaker.statistics().ignored == 6


async def test_pybreaker_listeners_hear_state_changes_successes_and_failures() -> None:
    """
    The pybreaker object's listeners receive `success`, `failure` (not for rejected
    calls) and `state_change` with pybreaker's state names.
    """
    listener = RecordingListener()
    source = pybreaker.CircuitBreaker(fail_max=2, reset_timeout=30, listeners=[listener])
    clock = FakeClock(wall_start=time.time())
    breaker = CircuitBreaker.from_pybreaker(source, clock=clock)
    await outcome(breaker, Dependency(), fail=False)
    await outcome(breaker, Dependency(), fail=True)
    await outcome(breaker, Dependency(), fail=True)
    assert await outcome(breaker, Dependency(), fail=False) == "rejected 30"
    clock.advance(30)
    await outcome(breaker, Dependency(), fail=False)
    heard = listener.heard
    assert [entry for entry in heard if entry[0] == "state_change"] == [
        ("state_change", "closed", "open"),
        ("state_change", "open", "half-open"),
        ("state_change", "half-open", "closed"),
    ]
    assert heard.count(("success",)) == 2
    assert heard.count(("failure", "ConnectionError")) == 2
    assert len(heard) == 7


# --- Redis: real server, separate processes ----------------------------------------------

# CircuitRedisStorage keeps opened_at in whole seconds, and a worker interpreter may take
# seconds to exit on a busy machine: the breaker must still be open when the test looks.
RESET_TIMEOUT = 6.0


async def drive(breaker: CircuitBreaker, ops: str) -> dict[str, Any]:
    """
    Call through `breaker` once per character of `ops` ("f" fails, "o" succeeds).

    Returns:
        What happened, as the worker prints it: outcomes, calls that reached the
        dependency, the final state, the failure run and the process id.
    """
    dependency = Dependency()
    outcomes = [await outcome(breaker, dependency, fail=op == "f") for op in ops]
    return {
        "outcomes": [entry.split()[0] for entry in outcomes],
        "called": dependency.calls,
        "state": breaker.state.value,
        "failure_run": breaker.statistics().window_failures,
        "pid": os.getpid(),
    }


def redis_breaker(
    client: redis.Redis, namespace: str, *, storage_timeout: float = 1.0
) -> CircuitBreaker:
    """
    A breaker (threshold 3) whose state lives in Redis under `namespace`.
    """
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=namespace)
    return CircuitBreaker(
        "shared",
        storage=storage,
        failure_threshold=3,
        reset_timeout=RESET_TIMEOUT,
        storage_timeout=storage_timeout,
    )


def worker_main(argv: Sequence[str]) -> None:
    """
    Entry point of a worker process: ``URL NAMESPACE OPS``; prints `drive`'s JSON.
    """
    url, namespace, ops = argv
    client = redis.Redis.from_url(url)
    try:
        report = asyncio.run(drive(redis_breaker(client, namespace), ops))
    finally:
        client.close()
    print(json.dumps(report))  # the worker's answer to the test


def run_worker(server: RedisServer, namespace: str, ops: str) -> dict[str, Any]:
    """
    Run `worker_main` in a fresh interpreter and return what it printed.
    """
    code = (
        "import sys; from tests.policies.shared.test_breaker_shared import worker_main as main;"
        " main(sys.argv[1:])"
    )
    completed = subprocess.run(  # our own interpreter and arguments
        [sys.executable, "-c", code, server.url, namespace, ops],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    report: dict[str, Any] = json.loads(completed.stdout)
    assert report["pid"] != os.getpid()
    return report


def namespace() -> str:
    """
    A Redis key namespace no other test uses.
    """
    return f"resilient-test-{uuid.uuid4().hex}"


@pytest.mark.server
async def test_redis_breaker_tripped_in_one_process_rejects_in_another(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """
    Process A trips the Redis-backed breaker; this process then sees it open and
    rejects without calling, as does a plain pybreaker breaker on the same keys. After
    reset_timeout a successful probe in a third process closes it for everyone.
    """
    keys = namespace()
    tripped = run_worker(redis_server, keys, "fff")
    assert tripped["outcomes"] == ["failed", "failed", "failed"]
    assert (tripped["called"], tripped["state"], tripped["failure_run"]) == (3, "open", 3)

    events: list[Event] = []
    breaker = redis_breaker(redis_client, keys)
    breaker.add_hook(events.append)
    dependency = Dependency()
    with pytest.raises(CircuitOpenError) as caught:
        await breaker.call(dependency)
    assert dependency.calls == 0
    assert breaker.state is OPEN
    assert 0 < caught.value.retry_in <= RESET_TIMEOUT

    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, redis_client, namespace=keys)
    plain = pybreaker.CircuitBreaker(reset_timeout=RESET_TIMEOUT, state_storage=storage)
    assert plain.current_state == pybreaker.STATE_OPEN
    sync_calls: list[str] = []
    with pytest.raises(pybreaker.CircuitBreakerError):
        plain.call(sync_dependency, sync_calls)
    assert sync_calls == []

    opened_at = storage.opened_at
    assert opened_at is not None
    await asyncio.sleep(max(0.0, opened_at.timestamp() + RESET_TIMEOUT - time.time()) + 0.05)
    probed = run_worker(redis_server, keys, "o")
    assert (probed["outcomes"], probed["called"], probed["state"]) == (["ok"], 1, "closed")

    assert plain.current_state == pybreaker.STATE_CLOSED
    assert await breaker.call(dependency) == "ok"
    assert breaker.state is CLOSED
    assert transitions(events) == [("closed", "open"), ("open", "closed")]
    assert plain.call(sync_dependency, sync_calls) == "sync ok"


@pytest.mark.server
async def test_redis_breaker_counts_failures_across_processes(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """
    Two failures in another process and one here make three in a row: the breaker opens
    here, and its failure run shows the shared count.
    """
    keys = namespace()
    elsewhere = run_worker(redis_server, keys, "ff")
    assert (elsewhere["state"], elsewhere["failure_run"]) == ("closed", 2)
    breaker = redis_breaker(redis_client, keys)
    assert await outcome(breaker, Dependency(), fail=True) == "failed"
    assert breaker.state is OPEN
    assert breaker.statistics().window_failures == 3
    assert redis_client.get(f"{keys}:pybreaker:state") == b"open"


class RecordingRedis(redis.Redis):
    """
    A Redis client that notes the thread of every command, and can make each one slow.
    """

    def __init__(self, *, delay: float = 0.0, **options: Any) -> None:
        super().__init__(**options)
        self.delay = delay
        self.threads: list[int] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.threads.append(threading.get_ident())
        if self.delay:
            time.sleep(self.delay)
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


@pytest.mark.server
async def test_redis_storage_io_runs_off_the_event_loop_thread(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """
    Every Redis command a call makes (admission, recording, opening, rejecting) runs in
    a worker thread, never on the event loop's thread.
    """
    client = RecordingRedis(host=redis_server.host, port=redis_server.port)
    try:
        breaker = redis_breaker(client, namespace())
        client.threads.clear()  # the storage's constructor ran here, on purpose
        report = await drive(breaker, "offfo")
        assert report["outcomes"] == ["ok", "failed", "failed", "failed", "rejected"]
        assert len(client.threads) >= 10
        assert threading.get_ident() not in client.threads
    finally:
        client.close()


@pytest.mark.server
async def test_event_loop_keeps_running_while_redis_is_slow(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """
    With every Redis command taking 400 ms, a ticker task on the loop never stalls for
    a whole command while calls go through the breaker.
    """
    delay = 0.4  # long enough that a busy machine's scheduling stalls stay well below it
    client = RecordingRedis(host=redis_server.host, port=redis_server.port, delay=delay)
    ticks: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            ticks.append(time.monotonic())
            await asyncio.sleep(0.005)

    try:
        # A round trip makes several commands: its bound must not cut the slow ones short.
        breaker = redis_breaker(client, namespace(), storage_timeout=20 * delay)
        client.threads.clear()
        ticking = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        started = time.monotonic()
        report = await drive(breaker, "of")
        elapsed = time.monotonic() - started
        done.set()
        await ticking
    finally:
        client.close()
    assert report["outcomes"] == ["ok", "failed"]
    assert elapsed >= delay * len(client.threads) >= 4 * delay
    longest_stall = max(later - earlier for earlier, later in itertools.pairwise(ticks))
    assert longest_stall < 0.75 * delay


# --- a frozen Redis: bounded calls, bounded threads, the local state decides -------------

STORAGE_TIMEOUT = 0.25
# A call makes at most two round trips (admission, recording); the rest is slack for a
# loaded machine. On a frozen Redis without the bound a call never ends.
CALL_BOUND = 2 * STORAGE_TIMEOUT + 2.0


async def timed(call: Awaitable[T]) -> tuple[T, float]:
    """
    Await `call`; return its outcome and how long it took.
    """
    started = time.monotonic()
    result = await call
    return result, time.monotonic() - started


@pytest.mark.server
async def test_frozen_redis_bounds_calls_and_threads_and_spares_the_default_executor(
    redis_private: RedisServer,
) -> None:
    """
    With redis-server frozen (SIGSTOP) and a client without a socket timeout (redis-py's
    default), 40 concurrent calls and then sequential ones each end within the storage
    timeout plus slack, at most `STORAGE_WORKERS` threads are parked, and the loop's
    default executor still resolves a name at once. The local state decides: three
    failures open the breaker and it rejects. After SIGCONT the storage decides again:
    the breaker follows Redis (closed), and its failures are counted there.
    """
    client = redis.Redis(host=redis_private.host, port=redis_private.port)
    admin = redis_private.client()
    try:
        await frozen_then_thawed(redis_private, client, admin)
    finally:
        client.close()
        admin.close()


class BrokenStorage(pybreaker.CircuitBreakerStorage):
    """
    A storage whose every read and write fails, as an unreachable one does.
    """

    def __init__(
        self, error: type[Exception] = OSError, *, thawed: threading.Event | None = None
    ) -> None:
        super().__init__("broken")
        self.error = error
        self.thawed = thawed  # if given, each round trip blocks until it is set: frozen

    def _fail(self, *_: object) -> Any:
        if self.thawed is not None:
            self.thawed.wait(30)  # bounded: a failed test must not leave the thread forever
        raise self.error("storage unreachable")

    state = property(_fail, _fail)
    counter = property(_fail)
    success_counter = property(_fail)
    opened_at = property(_fail, _fail)
    increment_counter = reset_counter = _fail
    increment_success_counter = reset_success_counter = _fail


async def test_unreachable_storage_leaves_the_decision_to_the_local_state() -> None:
    """
    When every storage round trip fails, calls still run and the local state decides:
    three failures open the breaker, which then rejects without calling.
    """
    breaker = CircuitBreaker(storage=BrokenStorage(), failure_threshold=3, reset_timeout=60)
    dependency = Dependency()
    outcomes = [await outcome(breaker, dependency, fail=op == "f") for op in "offff"]
    assert [entry.split()[0] for entry in outcomes] == [
        "ok",
        "failed",
        "failed",
        "failed",
        "rejected",
    ]
    assert (breaker.state, dependency.calls) == (OPEN, 4)
    assert "storage: not read yet" in repr(breaker)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"storage_timeout": 0}, r"storage_timeout=0\): storage_timeout must be finite and > 0"),
        ({"storage_timeout": -1.0}, r"storage_timeout=-1.0\)"),
        ({"storage_timeout": float("nan")}, r"storage_timeout=nan\)"),
        (
            {"storage": None, "storage_timeout": 2.0},
            r"storage_timeout=2.0\): .* only with storage=",
        ),
    ],
)
def test_storage_timeout_is_validated_at_construction(
    options: dict[str, Any], message: str
) -> None:
    """
    `storage_timeout` must be a finite number of seconds > 0, and needs `storage=`.
    """
    settings = {"storage": pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED), **options}
    with pytest.raises(ValueError, match=message):
        CircuitBreaker(failure_threshold=3, **settings)


@pytest.mark.parametrize("error", [OSError, TimeoutError])
async def test_the_local_state_probes_and_closes_while_the_storage_is_unreachable(
    error: type[Exception],
) -> None:
    """
    With the storage failing (also with its own timeout), the local state follows the
    native rules: open after 3 failures, half-open after reset_timeout, a failed probe
    re-opens, `success_threshold` successful probes close; a call admitted before the
    opening doesn't count.
    """
    clock = FakeClock(wall_start=1_000.0)
    events: list[Event] = []
    breaker = CircuitBreaker(
        storage=BrokenStorage(error), failure_threshold=3, reset_timeout=10,
        success_threshold=2, clock=clock, hooks=[events.append],
    )  # fmt: skip
    gate = asyncio.Event()
    late = asyncio.create_task(breaker.call(held, gate, fail=True))
    for _ in range(3):
        assert await outcome(breaker, Dependency(), fail=True) == "failed"
    gate.set()
    with pytest.raises(ConnectionError):
        await late  # admitted while closed: no effect on the open breaker
    assert await outcome(breaker, Dependency(), fail=False) == "rejected 10"
    clock.advance(10)
    assert await outcome(breaker, Dependency(), fail=True) == "failed"  # the probe
    assert await outcome(breaker, Dependency(), fail=False) == "rejected 10"
    clock.advance(10)
    assert await outcome(breaker, Dependency(), fail=False) == "ok"
    assert breaker.state is HALF_OPEN
    assert await outcome(breaker, Dependency(), fail=False) == "ok"
    assert transitions(events) == [
        ("closed", "open"), ("open", "half-open"), ("half-open", "open"),
        ("open", "half-open"), ("half-open", "closed"),
    ]  # fmt: skip


async def frozen_then_thawed(server: RedisServer, client: redis.Redis, admin: redis.Redis) -> None:
    """
    The body of the frozen-Redis test: `client` has no socket timeout, `admin` has one.
    """
    keys = namespace()
    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=keys)
    breaker = CircuitBreaker(
        "frozen", storage=storage, failure_threshold=3, reset_timeout=60,
        storage_timeout=STORAGE_TIMEOUT,
    )  # fmt: skip
    dependency = Dependency()
    loop = asyncio.get_running_loop()
    assert await outcome(breaker, dependency, fail=False) == "ok"
    threads_before = threading.active_count()
    server.process.process.send_signal(signal.SIGSTOP)
    try:
        async with asyncio.timeout(15):  # the old code never ends; fail, don't hang
            together = await asyncio.gather(
                *(timed(outcome(breaker, dependency, fail=False)) for _ in range(40))
            )
            alone = [await timed(outcome(breaker, dependency, fail=op == "f")) for op in "offfo"]
            resolved = await timed(loop.getaddrinfo("localhost", 80))
        assert "stalled, deciding locally" in repr(breaker)
        added = threading.active_count() - threads_before
        storage_threads = [
            t for t in threading.enumerate() if t.name.startswith("resilient-breaker-frozen")
        ]
    finally:
        server.process.process.send_signal(signal.SIGCONT)
    assert [result for result, _ in together] == ["ok"] * 40
    assert [result.split()[0] for result, _ in alone] == [
        "ok",
        "failed",
        "failed",
        "failed",
        "rejected",
    ]
    assert max(elapsed for _, elapsed in together + alone) < CALL_BOUND
    assert resolved[1] < 1.0
    assert len(storage_threads) <= STORAGE_WORKERS
    assert added <= STORAGE_WORKERS + 1  # + the default executor's, for getaddrinfo
    assert dependency.calls == 1 + 40 + 4

    shared = breaker._shared
    assert shared is not None
    for future in list(shared._parked):  # the frozen round trips end once Redis wakes
        await asyncio.wrap_future(future)
    assert await outcome(breaker, dependency, fail=True) == "failed"
    assert breaker.state is CLOSED  # Redis said closed: the local opening is forgotten
    assert await outcome(breaker, dependency, fail=True) == "failed"
    assert admin.get(f"{keys}:pybreaker:fail_counter") == b"2"
    assert "storage: closed failures=2" in repr(breaker)


class SwitchableStorage(pybreaker.CircuitBreakerStorage):
    """
    pybreaker's memory storage behind a switch: while `broken`, every round trip raises
    `error` (as with a misconfigured client). Not a `CircuitMemoryStorage`, so its round
    trips run in worker threads as Redis' do.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__("switchable")
        self.inner = pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED)
        self.error = error
        self.broken = True

    def _use(self) -> pybreaker.CircuitMemoryStorage:
        if self.broken:
            raise self.error
        return self.inner

    @property
    def state(self) -> str:
        return self._use().state

    @state.setter
    def state(self, state: str) -> None:
        self._use().state = state

    @property
    def counter(self) -> int:
        return self._use().counter

    @property
    def success_counter(self) -> int:
        return self._use().success_counter

    @property
    def opened_at(self) -> datetime | None:
        return self._use().opened_at

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        self._use().opened_at = when

    def increment_counter(self) -> None:
        self._use().increment_counter()

    def reset_counter(self) -> None:
        self._use().reset_counter()

    def increment_success_counter(self) -> None:
        self._use().increment_success_counter()

    def reset_success_counter(self) -> None:
        self._use().reset_success_counter()


async def test_a_failing_storage_is_logged_once_and_shown_in_the_repr(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """
    A storage whose round trips fail (here as pybreaker's Redis storage does over a
    client made with decode_responses=True) is logged once at WARNING with the error,
    not once per call, and the repr says the breaker decides locally and why. When the
    storage answers again that is logged at INFO and the repr drops the note.
    """
    decode_error = AttributeError("'str' object has no attribute 'decode'")
    storage = SwitchableStorage(decode_error)
    breaker = CircuitBreaker(name="inventory", storage=storage, failure_threshold=3)
    dependency = Dependency()
    with caplog.at_level(logging.INFO, logger="resilient.circuit_breaker"):
        for _ in range(3):
            await outcome(breaker, dependency, fail=False)
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "'inventory': a storage round trip failed" in warnings[0].getMessage()
        assert "has no attribute 'decode'" in warnings[0].getMessage()
        assert repr(breaker).endswith(
            "storage: not read yet, failing (AttributeError), deciding locally>"
        )
        storage.broken = False
        await outcome(breaker, dependency, fail=False)
    last = caplog.records[-1]
    assert last.levelno == logging.INFO
    assert last.getMessage() == "circuit_breaker 'inventory': its storage answers again"
    assert re.search(r"shared, storage: closed failures=0 \(\d+\.\ds ago\)>$", repr(breaker))


async def test_round_trip_outlived_by_its_caller_still_counts_as_stalled() -> None:
    """
    Callers whose own budget ends before `storage_timeout` (an outer Timeout) leave
    their round trips on the stalled storage: once one has run for `storage_timeout`
    it counts as overdue, and the next calls decide locally instead of each waiting on
    the storage until its caller gives up too.
    """
    storage = BrokenStorage(thawed=threading.Event())
    breaker = CircuitBreaker("stalled", storage=storage, storage_timeout=0.2)
    dependency = Dependency()
    outcomes: list[str] = []
    try:
        # Bounded: the old code never runs the dependency, each call times out.
        for _ in range(100):
            try:
                outcomes.append(await Timeout(0.05).call(breaker.call, dependency))
                break
            except TimeoutExceeded:
                outcomes.append("timed out")
        assert outcomes[0] == "timed out"
        assert outcomes[-1] == "ok"
        assert "stalled, deciding locally" in repr(breaker)
        assert await Timeout(0.05).call(breaker.call, dependency) == "ok"  # at once now
    finally:
        assert storage.thawed is not None
        storage.thawed.set()
