"""
RedisRateLimiter against a real redis-server: one bucket for every process, the global
rate held by several real processes, and the chosen failure mode (with a bound on the
wait) when Redis is killed or frozen.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid

import pytest
import redis.asyncio

from resilient import (
    Priority,
    RateLimitedError,
    RedisRateLimiter,
    Rejected,
    RejectionReason,
    deadline,
    priority,
)
from resilient.testing import FakeClock, capture_events
from tests._paths import REPO_ROOT
from tests._redis import RedisServer

# What a loaded 2-core machine may add to a call's wait beyond the bound it was given
# (scheduling, a connect attempt's own setup); the bound itself is much smaller than
# the waits a missing bound would cause (redis-py waits forever on a frozen server).
SLACK = 0.5


async def ok() -> int:
    return 42


def fresh_key() -> str:
    return f"test:rate:{uuid.uuid4().hex}"


async def test_limiters_with_one_key_share_one_bucket(aclient: redis.asyncio.Redis) -> None:
    """
    Two limiters on the same key (as in two processes) let `burst` calls through
    between them, then refuse with the time to the next permit; the key expires once
    the bucket would be full again.
    """
    key = fresh_key()
    one = RedisRateLimiter(aclient, key, 1, burst=3, fail_open=False, name="a")
    two = RedisRateLimiter(aclient, key, 1, burst=3, fail_open=False, name="b")
    for limiter in (one, two, one):
        assert await limiter.call(ok) == 42
    with pytest.raises(RateLimitedError) as caught:
        await two.call(ok)
    assert 0.5 < caught.value.retry_after <= 1.0
    assert 2000 < await aclient.pttl(key) <= 3001
    assert two.statistics().rejected == 1


async def test_a_key_holding_no_number_is_a_full_bucket(aclient: redis.asyncio.Redis) -> None:
    """
    A bucket key that holds something else than a number (written by another program)
    is taken as a full bucket and overwritten, not a script error that the limiter
    took for Redis being down, refusing (or letting through) every call for good.
    """
    key = fresh_key()
    await aclient.set(key, "not a number")
    limiter = RedisRateLimiter(aclient, key, 1, burst=2, fail_open=False)
    assert await limiter.call(ok) == 42
    assert await limiter.call(ok) == 42
    with pytest.raises(RateLimitedError) as caught:
        await limiter.call(ok)
    assert caught.value.reason is RejectionReason.RATE_LIMITED
    assert limiter.statistics().store_errors == 0


async def test_a_granted_wait_is_slept_on_the_policy_clock(aclient: redis.asyncio.Redis) -> None:
    """
    With max_wait, Redis reserves the permit and the caller sleeps until it is due;
    a weighted call takes its cost from the shared bucket.
    """
    clock = FakeClock()
    limiter = RedisRateLimiter(
        aclient, fresh_key(), 10, burst=4, max_wait=0.5, cost=len, fail_open=False, clock=clock
    )
    await limiter.call(ok_batch, [1, 2, 3, 4])
    await limiter.call(ok_batch, [1, 2])
    assert len(clock.sleeps) == 1
    assert 0.15 < clock.sleeps[0] <= 0.2
    with pytest.raises(RateLimitedError):
        await limiter.call(ok_batch, [1] * 4)  # would wait ~0.6 s > max_wait
    assert limiter.statistics().waited == 1


async def ok_batch(items: list[int]) -> int:
    return len(items)


async def test_only_critical_calls_wait_and_none_past_its_deadline(
    aclient: redis.asyncio.Redis,
) -> None:
    """
    As the local limiter: a sheddable call is refused rather than reserve a permit to
    come (PRIORITY_SHED), and so is a call whose deadline comes before its permit
    (DEADLINE_TOO_SHORT); a critical call with time left waits for it.
    """
    clock = FakeClock()
    limiter = RedisRateLimiter(
        aclient, fresh_key(), 1, burst=1, max_wait=2, fail_open=False, clock=clock
    )
    await limiter.call(ok)  # the next permit is Redis's second away (its own clock)
    with priority(Priority.SHEDDABLE), pytest.raises(RateLimitedError) as shed:
        await limiter.call(ok)
    with deadline(0.2, clock=clock), pytest.raises(RateLimitedError) as late:
        await limiter.call(ok)
    assert (shed.value.reason, late.value.reason) == (
        RejectionReason.PRIORITY_SHED,
        RejectionReason.DEADLINE_TOO_SHORT,
    )
    assert await limiter.call(ok) == 42
    assert len(clock.sleeps) == 1
    assert 0.2 < clock.sleeps[0] <= 1.0  # the rest of the second (a loaded machine: slack)


def test_processes_hold_the_global_rate_within_five_percent(redis_server: RedisServer) -> None:
    """
    Four real processes calling as fast as one shared limiter of 200/s allows, for
    10 s, run 200 * 10 + burst calls between them, within 5%.
    """
    rate, burst, duration, processes = 200, 10, 10.0, 4
    command = [
        sys.executable,
        "-m",
        "tests.policies.shared._rate_limit_child",
        redis_server.url,
        fresh_key(),
    ]
    command += [str(rate), str(burst), str(duration)]
    children = [
        subprocess.Popen(
            command, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        for _ in range(processes)
    ]
    try:
        for child in children:  # every one imported and connected: no head start
            assert child.stdout is not None
            assert child.stdout.readline() == "ready\n"
        start = time.time() + 0.5
        for child in children:
            assert child.stdin is not None
            child.stdin.write(f"{start}\n")
            child.stdin.flush()
        outputs = [child.communicate(timeout=60)[0] for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert all(child.returncode == 0 for child in children)
    reports = [json.loads(output) for output in outputs]
    ran = sum(report["ran"] for report in reports)
    expected = rate * duration + burst
    assert abs(ran - expected) <= 0.05 * expected, (ran, expected, reports)
    assert all(report["store_errors"] == 0 for report in reports)


async def timed(limiter: RedisRateLimiter) -> tuple[float, BaseException | None]:
    began = time.monotonic()
    try:
        await limiter.call(ok)
    except RateLimitedError as error:
        return time.monotonic() - began, error
    return time.monotonic() - began, None


async def test_killed_redis_follows_the_chosen_failure_mode(redis_private: RedisServer) -> None:
    """
    After redis-server is killed mid-run, a fail-open limiter lets every call through
    and a fail-closed one refuses every call (saying why, as a STORE_UNAVAILABLE
    rejection); no call waits longer than redis_timeout.
    """
    client = redis.asyncio.Redis(host=redis_private.host, port=redis_private.port)
    key = fresh_key()
    bound = 0.2
    opened = RedisRateLimiter(client, key, 1000, fail_open=True, redis_timeout=bound)
    closed = RedisRateLimiter(client, key, 1000, fail_open=False, redis_timeout=bound)
    try:
        for _ in range(20):
            assert (await timed(opened))[1] is None
            assert (await timed(closed))[1] is None
        redis_private.process.process.kill()
        redis_private.process.process.wait()
        with capture_events(Rejected) as events:
            after = [(await timed(opened), await timed(closed)) for _ in range(20)]
    finally:
        await client.aclose()
    assert all(error is None for (_, error), _ in after)
    refusals = [error for _, (_, error) in after]
    assert all(isinstance(error, RateLimitedError) for error in refusals)
    assert "redis unreachable" in str(refusals[0])
    assert {e.reason for e in events} == {RejectionReason.STORE_UNAVAILABLE}  # type: ignore[attr-defined]
    waits = [wait for pair in after for wait, _ in pair]
    assert max(waits) < bound + SLACK
    assert opened.statistics().store_errors >= 1
    assert "unreachable" in repr(opened)


async def test_frozen_redis_costs_each_call_at_most_the_bound(redis_private: RedisServer) -> None:
    """
    With redis-server frozen (SIGSTOP: connections hang, nothing answers), every call
    that asks Redis gives up after redis_timeout and follows the failure mode; once
    thawed, Redis decides again.
    """
    client = redis.asyncio.Redis(host=redis_private.host, port=redis_private.port)
    bound = 0.2
    limiter = RedisRateLimiter(
        client, fresh_key(), 1000, fail_open=True, redis_timeout=bound, recheck_after=0
    )
    process = redis_private.process.process
    try:
        assert (await timed(limiter))[1] is None
        process.send_signal(signal.SIGSTOP)
        waits = []
        for _ in range(4):
            wait, error = await timed(limiter)
            assert error is None
            waits.append(wait)
        process.send_signal(signal.SIGCONT)
        assert (await timed(limiter))[1] is None
    finally:
        process.send_signal(signal.SIGCONT)
        await client.aclose()
    assert max(waits) < bound + SLACK
    assert min(waits) >= bound * 0.9  # it did ask Redis, and waited for it
    assert limiter.statistics().store_errors == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"key": ""}, ValueError, "key"),
        ({"fail_open": None}, TypeError, "fail_open"),
        ({"redis_timeout": 0}, ValueError, "redis_timeout"),
        ({"recheck_after": -1}, ValueError, "recheck_after"),
        ({"rate": 0}, ValueError, "rate"),
    ],
)
async def test_bad_parameters_are_named(
    aclient: redis.asyncio.Redis, kwargs: dict[str, object], error: type, named: str
) -> None:
    """
    A bad parameter raises at construction, naming it; fail_open has no default.
    """
    given: dict[str, object] = {"key": "k", "rate": 10, "fail_open": True, **kwargs}
    with pytest.raises(error, match=rf"RedisRateLimiter\({named}="):
        RedisRateLimiter(aclient, **given)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="fail_open"):
        RedisRateLimiter(aclient, "k", 10)  # type: ignore[call-arg]
