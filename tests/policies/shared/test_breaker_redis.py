"""
RedisBreakerStore with a real redis-server: every mode decided atomically in Redis, in one
process and across several, and a dead or frozen Redis costing no call more than the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import signal
import subprocess
import sys
import time
import uuid
from asyncio.subprocess import PIPE
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio
import redis.asyncio.retry
import redis.backoff

from resilient import (
    BreakerStore,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    RedisBreakerStore,
    RedisRateLimiter,
    Timeout,
)
from resilient.testing import FakeClock
from tests._aio import until, within
from tests._paths import REPO_ROOT
from tests._redis import RedisServer, _redis_command
from tests._servers import wait_for_port

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class Boom(Exception):
    """A failure of the dependency."""


async def ok() -> str:
    return "ok"


async def boom() -> str:
    raise Boom


async def outcome(breaker: CircuitBreaker, fail: bool = False) -> str:
    """
    Call through `breaker`; return "ok", "failed" or "rejected <retry_in>".
    """
    try:
        return await breaker.call(boom if fail else ok)
    except CircuitOpenError as error:
        return f"rejected {error.retry_in:g}"
    except Boom:
        return "failed"


def prefix() -> str:
    """
    A key prefix no other test uses.
    """
    return f"resilient-test:{uuid.uuid4().hex}:"


def test_redis_store_is_a_breaker_store() -> None:
    """
    `RedisBreakerStore` implements the public `BreakerStore` protocol.
    """
    client = redis.asyncio.Redis()
    assert isinstance(RedisBreakerStore(client), BreakerStore)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"probe_lease": 0}, ValueError, r"probe_lease=0\)"),
        ({"probe_lease": float("inf")}, ValueError, r"probe_lease=inf\)"),
        ({"prefix": 42}, TypeError, r"prefix=42\): prefix must be a string"),
    ],
)
def test_store_options_are_validated(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    """
    A lease that is not a finite number of seconds > 0, or a prefix that is not a string,
    fails at construction naming the parameter.
    """
    with pytest.raises(error, match=message):
        RedisBreakerStore(redis.asyncio.Redis(), **options)


@pytest.mark.parametrize(
    ("client", "message"),
    [
        (redis.Redis(), r"is a synchronous Redis client; use redis\.asyncio\.Redis"),
        (None, r"expected a redis\.asyncio client .*got None"),
    ],
    ids=["sync-client", "no-client"],
)
def test_redis_users_refuse_a_client_that_is_not_asyncio(client: object, message: str) -> None:
    """
    A synchronous ``redis.Redis`` (or no client at all) fails at construction with a
    TypeError saying to use ``redis.asyncio``, for the breaker store and the rate limiter
    alike: it used to be accepted, and then blocked the loop and shared nothing.
    """
    with pytest.raises(TypeError, match=rf"^RedisBreakerStore\(client=\.\.\.\): .*{message}"):
        RedisBreakerStore(client)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=rf"^RedisRateLimiter\(client=\.\.\.\): .*{message}"):
        RedisRateLimiter(client, "k", 10, fail_open=True)  # type: ignore[arg-type]


async def test_breakers_in_one_process_share_the_state_in_redis(
    aclient: redis.asyncio.Redis,
) -> None:
    """
    Two breakers with one name over one Redis: failures add up, the opening shows in
    the other at its next call (rejected without running), and a probe closes it for both.
    """
    keys = prefix()
    clock = FakeClock()
    first, second = (
        CircuitBreaker(
            "db",
            storage=RedisBreakerStore(aclient, prefix=keys, now=clock.monotonic),
            failure_threshold=3,
            reset_timeout=10,
            clock=clock,
        )
        for _ in range(2)
    )
    assert await outcome(first, fail=True) == "failed"
    assert await outcome(second, fail=True) == "failed"
    assert second.statistics().window_failures == 2
    assert await outcome(first, fail=True) == "failed"
    assert first.state is OPEN
    clock.advance(4)
    assert await outcome(second) == "rejected 6"
    assert second.state is OPEN
    assert second.statistics().window_failures == 3
    assert "shared, storage: open failures=3" in repr(second)
    clock.advance(6)
    assert await outcome(second) == "ok"
    assert second.state is CLOSED
    assert await outcome(first) == "ok"
    assert first.state is CLOSED


async def test_half_open_permits_are_shared_and_a_lease_frees_a_dead_probers_permit(
    aclient: redis.asyncio.Redis,
) -> None:
    """
    While one breaker's probe runs, another breaker of the same name is refused (one
    permit for all). A permit whose prober never reports (it died) lapses after
    `probe_lease`, and the next call probes.
    """
    keys = prefix()
    clock = FakeClock()

    def breaker() -> CircuitBreaker:
        store = RedisBreakerStore(aclient, prefix=keys, probe_lease=30, now=clock.monotonic)
        return CircuitBreaker(
            "db", storage=store, failure_threshold=1, reset_timeout=10, clock=clock
        )

    first, second = breaker(), breaker()
    assert await outcome(first, fail=True) == "failed"
    clock.advance(10)
    gate = asyncio.Event()

    async def held() -> str:
        await gate.wait()
        return "probed"

    probe = asyncio.create_task(first.call(held))
    await until(lambda: first.state is HALF_OPEN)
    assert await outcome(second) == "rejected 0"
    probe.cancel()  # as if the prober died: its permit would never come back ...
    await until(probe.done)
    with pytest.raises(asyncio.CancelledError):
        await probe
    # ... but a cancelled probe gives it back (in the background): the next call probes.
    await until(lambda: not first._shared._background)  # type: ignore[union-attr]
    assert await outcome(second) == "ok"
    assert second.state is CLOSED

    # A prober that dies holding the permit: only the lease frees it.
    assert await outcome(first, fail=True) == "failed"
    clock.advance(10)
    store = RedisBreakerStore(aclient, prefix=keys, probe_lease=30, now=clock.monotonic)
    spec = first._shared.spec  # type: ignore[union-attr]
    admission = await store.admit(spec)  # taken, never given back
    assert admission.admitted
    assert admission.permit is not None
    assert await outcome(second) == "rejected 0"
    clock.advance(30)
    assert await outcome(second) == "ok"
    assert second.state is CLOSED


@pytest.mark.parametrize(
    "mode",
    [
        {"failure_rate": 0.5, "window": 4, "min_calls": 4},
        {"failure_rate": 0.5, "window_duration": 10.0, "min_calls": 4},
        {"slow_call_duration": 1.0, "slow_call_rate": 0.5, "window": 4, "min_calls": 4},
    ],
    ids=["count-window", "time-window", "slow-calls"],
)
async def test_window_modes_are_shared(aclient: redis.asyncio.Redis, mode: dict[str, Any]) -> None:
    """
    Count windows, time windows and slow calls are counted in Redis: two breakers' calls
    fill one window, and it opens both.
    """
    keys = prefix()
    clock = FakeClock()
    first, second = (
        CircuitBreaker(
            "db",
            storage=RedisBreakerStore(aclient, prefix=keys, now=clock.monotonic),
            reset_timeout=10,
            clock=clock,
            **mode,
        )
        for _ in range(2)
    )
    slow = "slow_call_duration" in mode

    async def bad() -> str:
        if not slow:
            raise Boom
        clock.advance(1.0)
        return "slow"

    async def call(breaker: CircuitBreaker, good: bool) -> None:
        with contextlib.suppress(Boom):
            await breaker.call(ok if good else bad)

    await call(first, True)
    await call(second, False)
    await call(first, True)
    assert first.state is CLOSED
    await call(second, False)  # 2 of 4 bad: the window is full, the rate reached
    assert second.state is OPEN
    assert (await outcome(first)).startswith("rejected")
    stats = first.statistics()
    assert (stats.window_calls, stats.window_failures if not slow else 2) == (4, 2)


async def test_time_window_forgets_old_calls_in_redis(aclient: redis.asyncio.Redis) -> None:
    """
    Calls older than window_duration leave the shared time window.
    """
    clock = FakeClock()
    breaker = CircuitBreaker(
        "db",
        storage=RedisBreakerStore(aclient, prefix=prefix(), now=clock.monotonic),
        failure_rate=0.5, window_duration=10.0, min_calls=2, clock=clock,
    )  # fmt: skip
    assert await outcome(breaker, fail=True) == "failed"
    clock.advance(11)
    assert await outcome(breaker) == "ok"
    assert (breaker.state, breaker.statistics().window_calls) == (CLOSED, 1)
    assert await outcome(breaker, fail=True) == "failed"
    assert breaker.state is OPEN


async def test_trip_and_reset_reach_redis(aclient: redis.asyncio.Redis) -> None:
    """
    `trip()` and `reset()` act locally at once and write Redis in the background.
    """
    keys = prefix()
    clock = FakeClock()
    breaker, other = (
        CircuitBreaker(
            "db",
            storage=RedisBreakerStore(aclient, prefix=keys, now=clock.monotonic),
            reset_timeout=10,
            clock=clock,
        )
        for _ in range(2)
    )
    breaker.trip()
    assert breaker.state is OPEN
    await until(lambda: not breaker._shared._background)  # type: ignore[union-attr]
    assert await outcome(other) == "rejected 10"
    breaker.reset()
    await until(lambda: not breaker._shared._background)  # type: ignore[union-attr]
    assert await outcome(other) == "ok"
    assert other.state is CLOSED


async def test_client_with_decoded_responses_works(redis_server: RedisServer) -> None:
    """
    A client made with decode_responses=True (str answers) is understood too.
    """
    client = redis.asyncio.Redis(
        host=redis_server.host, port=redis_server.port, decode_responses=True
    )
    try:
        breaker = CircuitBreaker(
            "db", storage=RedisBreakerStore(client, prefix=prefix()), failure_threshold=1
        )
        assert await outcome(breaker, fail=True) == "failed"
        assert breaker.state is OPEN
        assert (await outcome(breaker)).startswith("rejected")
        assert "failing" not in repr(breaker)
    finally:
        await client.aclose()


# --- Redis unreachable, killed or frozen: the local state decides within the bound ---------

BOUND = 0.25  # storage_timeout in these tests
# A call makes at most two round trips; the rest is slack for a loaded machine.
CALL_BOUND = 2 * BOUND + 2.0


async def test_unreachable_redis_leaves_the_decision_to_the_local_state(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """
    With nothing listening, calls run and the local state decides (three failures open
    it); the failure is logged once and shown in the repr.
    """
    client = redis.asyncio.Redis(host="127.0.0.1", port=1, socket_connect_timeout=1)
    try:
        breaker = CircuitBreaker(
            "db", storage=RedisBreakerStore(client), failure_threshold=3, reset_timeout=60,
            storage_timeout=BOUND,
        )  # fmt: skip
        results = [await outcome(breaker, fail=op == "f") for op in "offff"]
        assert [r.split()[0] for r in results] == ["ok", "failed", "failed", "failed", "rejected"]
        # redis-py retries a refused connection with backoff: it fails, or is overdue.
        assert re.search(
            r"storage: not read yet, (failing \(\w+\)|stalled), deciding locally", repr(breaker)
        )
        warnings = [r for r in caplog.records if "storage round trip failed" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        await client.aclose()


async def test_a_client_without_retries_names_the_refused_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """
    With no retries (docs/policies.md's advice) a refused connection fails the round
    trip at once: no call waits for the bound, and the log and the repr name the
    ConnectionError instead of an overdue round trip.
    """
    no_retries = redis.asyncio.retry.Retry(redis.backoff.NoBackoff(), retries=0)
    client = redis.asyncio.Redis(
        host="127.0.0.1", port=1, retry=no_retries, socket_connect_timeout=1
    )
    try:
        breaker = CircuitBreaker(
            "db", storage=RedisBreakerStore(client), failure_threshold=3, storage_timeout=5
        )  # redis-py's default retries outlast 5 s: the round trip would be overdue
        results = [await within(outcome(breaker, fail=op == "f"), 30) for op in "offff"]
        assert [r.split()[0] for r in results] == ["ok", "failed", "failed", "failed", "rejected"]
        assert repr(breaker).endswith("failing (ConnectionError), deciding locally>")
        warnings = [r for r in caplog.records if "storage round trip failed" in r.getMessage()]
        assert len(warnings) == 1
        assert "ConnectionError" in warnings[0].getMessage()
    finally:
        await client.aclose()


async def timed_calls(breaker: CircuitBreaker, seconds: float) -> list[tuple[str, float]]:
    """
    Call through `breaker` from 8 tasks for `seconds`; return each call's outcome and
    duration.
    """
    results: list[tuple[str, float]] = []
    end = time.monotonic() + seconds

    async def caller() -> None:
        while time.monotonic() < end:
            started = time.monotonic()
            result = await outcome(breaker)
            results.append((result, time.monotonic() - started))
            await asyncio.sleep(0.005)

    await within(asyncio.gather(*(caller() for _ in range(8))), seconds + 30)
    return results


@pytest.mark.parametrize("fault", ["kill", "freeze"])
async def test_redis_killed_or_frozen_mid_run_costs_no_call_more_than_the_bound(
    redis_private: RedisServer, fault: str
) -> None:
    """
    Calls run through the breaker from 8 tasks while redis-server is SIGKILLed (or
    SIGSTOPped) under them: every call still succeeds (the local state, closed, decides)
    and none takes longer than two storage timeouts plus slack. Frozen, the store is
    skipped while a round trip is overdue; thawed, it decides again.
    """
    # No socket timeout: only the breaker's bound stands between a call and a frozen Redis.
    client = redis.asyncio.Redis(host=redis_private.host, port=redis_private.port)
    process = redis_private.process.process
    try:
        breaker = CircuitBreaker(
            "db", storage=RedisBreakerStore(client), failure_threshold=3,
            storage_timeout=BOUND,
        )  # fmt: skip
        before = await timed_calls(breaker, 0.5)
        process.send_signal(signal.SIGKILL if fault == "kill" else signal.SIGSTOP)
        during = await timed_calls(breaker, 2.0)
        assert "deciding locally" in repr(breaker)
        if fault == "freeze":
            assert "stalled" in repr(breaker)
            process.send_signal(signal.SIGCONT)
            await within(asyncio.gather(*breaker._shared._parked), 30)  # type: ignore[union-attr]
            assert await outcome(breaker, fail=True) == "failed"
            assert "storage: closed failures=1" in repr(breaker)
    finally:
        process.send_signal(signal.SIGCONT)
        await client.aclose()
    assert before
    assert {result for result, _ in before + during} == {"ok"}
    assert len(during) > 8
    assert max(elapsed for _, elapsed in during) < CALL_BOUND


async def test_caller_with_a_shorter_deadline_than_the_bound_is_not_held_up(
    redis_private: RedisServer,
) -> None:
    """
    Callers whose own budget ends before `storage_timeout` leave their round trips on
    the frozen Redis; once one has run storage_timeout the next calls skip Redis.
    """
    client = redis.asyncio.Redis(host=redis_private.host, port=redis_private.port)
    process = redis_private.process.process
    breaker = CircuitBreaker("db", storage=RedisBreakerStore(client), storage_timeout=0.2)
    try:
        assert await outcome(breaker) == "ok"
        process.send_signal(signal.SIGSTOP)
        outcomes: list[str] = []
        for _ in range(100):  # bounded
            try:
                outcomes.append(await Timeout(0.05).call(breaker.call, ok))
                break
            except TimeoutError:
                outcomes.append("timed out")
        assert outcomes[0] == "timed out"
        assert outcomes[-1] == "ok"
        assert "stalled, deciding locally" in repr(breaker)
    finally:
        process.send_signal(signal.SIGCONT)
        await client.aclose()


# --- several processes ------------------------------------------------------------------


class Child:
    """
    A `tests.policies.shared._breaker_child` process, driven line by line.
    """

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{command}\n".encode())
        await within(self.process.stdin.drain(), 30)

    async def line(self) -> str:
        assert self.process.stdout is not None
        return (await within(self.process.stdout.readline(), 60)).decode().strip()


@contextlib.asynccontextmanager
async def children(
    server: RedisServer, keys: str, reset_timeout: float, count: int
) -> AsyncIterator[list[Child]]:
    """
    Start `count` child processes sharing the breaker "shared" under `keys`; each has
    made one successful call when this yields. They quit (or are killed) on exit.
    """
    started: list[Child] = []
    try:
        for _ in range(count):
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "tests.policies.shared._breaker_child",
                server.url, keys, str(reset_timeout),
                cwd=REPO_ROOT, stdin=PIPE, stdout=PIPE,
            )  # fmt: skip
            started.append(Child(process))
        for child in started:
            assert await child.line() == "ready ok"
        yield started
    finally:
        for child in started:
            if child.process.returncode is None:
                with contextlib.suppress(OSError):
                    await child.send("quit")
        for child in started:
            try:
                await within(child.process.wait(), 30)
            except TimeoutError:
                child.process.kill()
                await child.process.wait()


def shared_breaker(client: redis.asyncio.Redis, keys: str, reset_timeout: float) -> CircuitBreaker:
    """
    This process's breaker "shared" (as the children build it).
    """
    return CircuitBreaker(
        "shared",
        storage=RedisBreakerStore(client, prefix=keys),
        failure_threshold=3,
        reset_timeout=reset_timeout,
        storage_timeout=10,
    )


async def test_opening_in_one_process_rejects_in_the_others_at_their_next_call(
    redis_server: RedisServer, aclient: redis.asyncio.Redis
) -> None:
    """
    Three other processes call successfully; this one fails three times and opens the
    shared breaker. The very next call in each other process is rejected without
    running: each admission is one round trip to Redis, so no process runs on a stale
    "closed".
    """
    keys = prefix()
    async with children(redis_server, keys, 60.0, 3) as others:
        here = shared_breaker(aclient, keys, 60.0)
        for _ in range(3):
            assert await outcome(here, fail=True) == "failed"
        assert here.state is OPEN
        for child in others:
            await child.send("call")
        answers = [await child.line() for child in others]
    assert [answer.split()[0] for answer in answers] == ["rejected"] * 3
    assert all(0 < float(answer.split()[1]) <= 60 for answer in answers)


async def test_half_open_permit_is_cluster_wide(
    redis_server: RedisServer, aclient: redis.asyncio.Redis
) -> None:
    """
    With half_open_max_calls=1, four processes calling at once after reset_timeout send
    exactly one probe: one enters the dependency, three (and this process) are rejected
    while it runs. Its success closes the breaker for everyone.
    """
    keys = prefix()
    reset = 0.5
    async with children(redis_server, keys, reset, 4) as others:
        here = shared_breaker(aclient, keys, reset)
        for _ in range(3):
            assert await outcome(here, fail=True) == "failed"
        await until(lambda: here.retry_in() == 0, seconds=30)
        for child in others:
            await child.send("hold")
        answers = [await child.line() for child in others]
        assert sorted(answers) == ["entered"] + ["rejected 0.000"] * 3
        assert await outcome(here) == "rejected 0"
        prober = others[answers.index("entered")]
        await prober.send("go on")
        assert await prober.line() == "ok"
        assert await outcome(here) == "ok"
        assert here.state is CLOSED
        await others[0].send("call")
        assert await others[0].line() == "ok"


async def test_a_probe_permit_granted_to_a_caller_that_gave_up_comes_back(
    aclient: redis.asyncio.Redis,
) -> None:
    """
    A caller cancelled while Redis grants it the half-open permit never runs its probe:
    the permit goes back as soon as the grant arrives, not after its lease (30 s here),
    and another process probes at once.
    """
    keys = prefix()
    clock = FakeClock()
    gate = asyncio.Event()

    class GatedStore(RedisBreakerStore):
        async def admit(self, spec: Any) -> Any:
            await gate.wait()  # Redis' answer on its way
            return await super().admit(spec)

    def breaker(store: RedisBreakerStore) -> CircuitBreaker:
        return CircuitBreaker(
            "db", storage=store, failure_threshold=1, reset_timeout=10, clock=clock
        )

    first = breaker(GatedStore(aclient, prefix=keys, probe_lease=30, now=clock.monotonic))
    second = breaker(RedisBreakerStore(aclient, prefix=keys, probe_lease=30, now=clock.monotonic))
    assert await outcome(second, fail=True) == "failed"
    clock.advance(10)
    caller = asyncio.create_task(first.call(ok))
    await until(lambda: len(asyncio.all_tasks()) > 2)  # the round trip's task is running
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await within(caller)
    gate.set()  # the permit is granted to nobody
    link = first._shared
    assert link is not None
    await until(lambda: not link._parked and not link._background)
    assert await outcome(second) == "ok"
    assert second.state is CLOSED


async def test_keys_holding_garbage_are_started_afresh(aclient: redis.asyncio.Redis) -> None:
    """
    Keys holding another program's data or a layout this version can't read (a wrong
    type, a count that is no number) are reset to a closed breaker: the breaker still
    opens, in the store (a second breaker is refused), instead of every round trip
    failing and each process deciding alone.
    """
    for key, field in [("{db}:counts", "fails"), ("{db}", None), ("{db}:permits", None)]:
        keys = prefix()
        if field is None:  # a string where a hash or a sorted set belongs
            await aclient.set(keys + key, "a string")
        else:  # a count that is no number
            await aclient.hset(keys + key, field, "many")
        first, second = (
            CircuitBreaker(
                "db",
                storage=RedisBreakerStore(aclient, prefix=keys),
                failure_threshold=2,
                reset_timeout=30,
            )
            for _ in range(2)
        )
        assert [await outcome(first, fail=True) for _ in range(2)] == ["failed", "failed"]
        assert first.state is OPEN
        assert (await outcome(second)).startswith("rejected"), key
        assert "failing" not in repr(first)


async def test_redis_clock_going_back_holds_nothing_longer_than_its_time(
    aclient: redis.asyncio.Redis,
) -> None:
    """
    When Redis' clock jumps back an hour, an open breaker stays open for reset_timeout
    from then (not an hour more), and a probe permit held then is dropped (not held for
    an hour more).
    """
    keys = prefix()
    wall = [100_000.0]  # Redis' clock, which may go back
    clock = FakeClock()

    def breaker() -> CircuitBreaker:
        store = RedisBreakerStore(aclient, prefix=keys, probe_lease=30, now=lambda: wall[0])
        return CircuitBreaker(
            "db", storage=store, failure_threshold=1, reset_timeout=10, clock=clock
        )

    first, second = breaker(), breaker()
    assert await outcome(first, fail=True) == "failed"
    wall[0] -= 3600
    assert await outcome(second) == "rejected 10"
    wall[0] += 10
    # A permit taken (its prober died), then the clock goes back an hour.
    spec = first._shared.spec  # type: ignore[union-attr]
    store = RedisBreakerStore(aclient, prefix=keys, probe_lease=30, now=lambda: wall[0])
    assert (await store.admit(spec)).permit is not None
    wall[0] -= 3600  # its lease now ends further ahead than any lease could: dropped
    assert await outcome(second) == "ok"
    assert second.state is CLOSED


@pytest.mark.parametrize("name", ["db", "}", "}x", "a}b", "{x}", "%7D", "{}"])
def test_a_breakers_keys_share_one_cluster_hash_slot(name: str) -> None:
    """
    Redis Cluster runs a script only over keys of one hash slot: whatever the name (a
    '}' in it would end the hash tag early or leave it empty), the four keys share one,
    and two names never share keys.
    """
    from redis.crc import key_slot  # noqa: PLC0415  # redis-py's own slot function

    store = RedisBreakerStore(redis.asyncio.Redis())
    keys = store._keys(name)
    assert len({key_slot(key.encode()) for key in keys}) == 1, keys
    others = {n: store._keys(n)[0] for n in ["db", "}", "}x", "a}b", "{x}", "%7D", "{}"]}
    assert len(set(others.values())) == len(others)


def test_a_prefix_splitting_the_slots_is_refused() -> None:
    """
    A prefix with an empty hash tag would put the keys in different slots: refused.
    """
    with pytest.raises(ValueError, match=r"prefix='app\{\}:'\): an empty hash tag"):
        RedisBreakerStore(redis.asyncio.Redis(), prefix="app{}:")


async def test_unnamed_breakers_decorating_functions_share_only_their_functions_state(
    aclient: redis.asyncio.Redis,
) -> None:
    """
    A breaker without a name is named after the function it decorates: its shared state
    is that function's, not that of every unnamed breaker over the same Redis (a failing
    `payments` must not open `search`). A breaker decorating the same function in another
    process (here: another breaker) shares it.
    """
    keys = prefix()

    def unnamed() -> CircuitBreaker:
        return CircuitBreaker(storage=RedisBreakerStore(aclient, prefix=keys), failure_threshold=1)

    async def payments() -> str:
        raise Boom

    async def search() -> str:
        return "ok"

    with pytest.raises(Boom):
        await within(unnamed()(payments)())
    assert await within(unnamed()(search)()) == "ok"
    with pytest.raises(CircuitOpenError):
        await within(unnamed()(payments)())


async def test_an_outcome_from_before_redis_lost_its_data_counts_for_nothing_after(
    aclient: redis.asyncio.Redis,
) -> None:
    """
    Redis restarted without its data mid-run: the state starts again, and replays the
    same transitions. A probe admitted before the wipe that reports after it must not
    pass for the new probe (close the breaker under it, or free its permit).
    """
    keys = prefix()
    clock = FakeClock()
    store = RedisBreakerStore(aclient, prefix=keys, probe_lease=30, now=clock.monotonic)
    breaker = CircuitBreaker(
        "db", storage=store, failure_threshold=1, reset_timeout=10, clock=clock
    )
    spec = breaker._shared.spec  # type: ignore[union-attr]

    async def open_then_probe() -> Any:
        assert (await store.record(spec, await store.admit(spec), True, False)).state is OPEN
        clock.advance(10)
        probe = await store.admit(spec)
        assert probe.permit is not None
        return probe

    old = await open_then_probe()
    for key in await aclient.keys(f"{keys}*"):  # the wipe
        await aclient.delete(key)
    clock.advance(1)  # the restart takes a moment
    new = await open_then_probe()
    seen = await store.record(spec, old, False, False)  # the old probe's success
    assert seen.state is HALF_OPEN  # not closed under the new probe
    assert not (await store.admit(spec)).admitted  # its permit still held
    assert (await store.record(spec, new, False, False)).state is CLOSED


async def test_redis_restarted_without_its_data_takes_back_over(
    redis_private: RedisServer, tmp_path: Path
) -> None:
    """
    Redis SIGKILLed while the shared breaker is open, then restarted on its port without
    its data: meanwhile each process's local state decides (open: rejected); once Redis
    answers, its state (closed, afresh) wins again, and no round trip is left behind.
    """
    client = redis.asyncio.Redis(host=redis_private.host, port=redis_private.port)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        first, second = (
            CircuitBreaker(
                "db", storage=RedisBreakerStore(client), failure_threshold=1,
                reset_timeout=30, storage_timeout=BOUND,
            )
            for _ in range(2)
        )  # fmt: skip
        assert await within(outcome(first, fail=True)) == "failed"
        assert (await within(outcome(second))).startswith("rejected")
        redis_private.process.process.kill()
        await within(asyncio.to_thread(redis_private.process.process.wait))
        assert (await within(outcome(second))).startswith("rejected")  # decided locally
        assert "deciding locally" in repr(second)
        command = _redis_command()(redis_private.port, tmp_path)
        restarted = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # noqa: ASYNC220  # started at once
        server = dataclasses.replace(redis_private.process, process=restarted)
        await within(asyncio.to_thread(wait_for_port, server, 10.0), 20)
        await within(client.ping())  # the pool's connections to the dead server are gone
        link = second._shared
        assert link is not None
        # Round trips overdue when Redis died (redis-py retrying) hold the store off
        # until they end: then it decides again.
        await until(lambda: not link._parked, seconds=20)
        assert await within(outcome(second)) == "ok"  # closed: Redis' state, afresh
        assert second.state is CLOSED
        assert "deciding locally" not in repr(second)
        await until(lambda: not link._background)
    finally:
        if restarted is not None:
            restarted.kill()
            restarted.wait(10)
        await client.aclose()


@pytest.mark.parametrize("switch", ["trip", "reset"])
async def test_a_switch_wins_over_the_store_until_it_has_landed(
    aclient: redis.asyncio.Redis, switch: str
) -> None:
    """
    `trip()` / `reset()` act on this process at once and reach Redis in the background:
    a call right after must follow the switch, not Redis' older state (which would
    undo the switch here until it lands). Once it has landed, Redis decides again.
    """
    keys = prefix()
    landed = asyncio.Event()

    class SlowSwitchStore(RedisBreakerStore):
        async def force(self, spec: Any, state: CircuitState) -> Any:
            await landed.wait()  # the write still on its way
            return await super().force(spec, state)

    def breaker(store: RedisBreakerStore) -> CircuitBreaker:
        return CircuitBreaker("db", storage=store, failure_threshold=1, reset_timeout=30)

    operated = breaker(SlowSwitchStore(aclient, prefix=keys))
    other = breaker(RedisBreakerStore(aclient, prefix=keys))
    if switch == "reset":
        assert await within(outcome(other, fail=True)) == "failed"  # open in Redis
        operated.reset()
        expected = "ok"
    else:
        operated.trip()
        expected = "rejected"
    assert (await within(outcome(operated))).startswith(expected)
    assert operated.state is (CLOSED if switch == "reset" else OPEN)
    landed.set()
    link = operated._shared
    assert link is not None
    await until(lambda: not link._background)
    assert (await within(outcome(other))).startswith(expected)  # Redis has it now


def test_the_store_shows_its_prefix() -> None:
    """A store's repr names its key prefix (what tells two stores apart in logs)."""
    client = redis.asyncio.Redis(host="127.0.0.1", port=9)  # never connected
    assert repr(RedisBreakerStore(client, prefix="shop")) == "<RedisBreakerStore prefix='shop'>"
