"""
RedisRateLimiter: one `RateLimiter` bucket shared by every process through Redis.

The GCRA state (see `rate_limit`) is one Redis key holding the theoretical arrival
time in microseconds of Redis's own clock (``TIME``), so processes on different hosts
need not agree on the time. Each call is one ``EVALSHA`` of a Lua script that reads the
key, decides and writes it back: Redis runs scripts atomically, so no two processes can
take the same permit. The key expires once the bucket is full again, so an idle limiter
leaves nothing behind. This is the algorithm of redis-cell and of the `redis-gcra`
libraries, written as a script rather than a module so any Redis >= 5 runs it.

When Redis cannot answer (refused, reset, or slower than `redis_timeout`), the limiter
does what the user chose with `fail_open`, which has no default:

- ``fail_open=True``: the call goes ahead unlimited (the dependency is unprotected, the
  caller unharmed);
- ``fail_open=False``: the call is rejected with `RateLimitedError` (``why`` says the
  store is unreachable, ``retry_after`` is `recheck_after`).

Either way the limiter then leaves Redis alone for `recheck_after` seconds (so a dead
Redis costs each call nothing, not a timeout), then tries again. A call therefore waits
for Redis at most `redis_timeout`, plus at most `max_wait` for its permits.

redis-py is imported when a limiter is built, so ``import resilient`` never loads it.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, TypeVar

from .._engine.clock import Clock
from .._engine.events import Hook, RejectionReason
from .._engine.policy import Args, AsyncFn, Kwargs
from .._engine.validate import check_async_redis, check_seconds
from .rate_limit import Cost, RateLimiter, RateLimiterStatistics, permits_of

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisRateLimiter"]

T = TypeVar("T")

# KEYS[1]: the bucket. ARGV: interval (us per permit), tolerance (burst * interval, us),
# permits, max_wait (us). Returns {admitted 0/1, wait in us}. Numbers leave as %.17g
# strings: Lua would truncate a returned number to an integer, and tostring() keeps only
# 14 digits (0.1 ms of an epoch in microseconds), which would skew a fast rate. A key
# that holds no number (written by something else) counts as a full bucket and is
# overwritten: a script error would pass for Redis being down, for good.
_GCRA = """
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[4])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + tonumber(ARGV[3]) * interval
local wait = new_tat - tolerance - now
if wait > max_wait then
  return {0, string.format('%.17g', wait)}
end
redis.call('SET', KEYS[1], string.format('%.17g', new_tat), 'PX',
           math.ceil((new_tat - now) / 1000) + 1)
if wait < 0 then wait = 0 end
return {1, string.format('%.17g', wait)}
"""

_US = 1_000_000


class RedisRateLimiter(RateLimiter):
    """
    A `RateLimiter` whose bucket lives in Redis, so all processes share one limit.

    Args:
        client: A ``redis.asyncio.Redis`` client (the caller owns and closes it).
        key: The Redis key of the bucket; every process sharing the limit uses the same.
        rate: Permits per period, > 0, for all processes together.
        fail_open: What to do when Redis is unreachable or too slow: True lets the
            call through unlimited, False rejects it with `RateLimitedError`. Required:
            neither is a safe default for every dependency.
        per: The period, in seconds (default 1).
        burst: Bucket capacity, >= 1 (default: `rate` rounded up).
        max_wait: Longest a call may wait for its permits once Redis granted them.
        cost: Permits each call takes, or a function of the call's arguments.
        redis_timeout: Longest a call waits for Redis's answer, in seconds (default 0.1).
        recheck_after: Seconds to leave Redis alone after it failed (default 1).
        name: A label for errors, events and metrics (default ``"rate_limiter"``).
        clock: Time source for waiting and for `recheck_after` (Redis's own clock
            keeps the bucket).
        hooks: Event hooks for this policy only.

    Raises:
        ValueError: A parameter is out of range.
        TypeError: A parameter has the wrong type (`client` a synchronous ``redis.Redis``).
        ImportError: redis-py is not installed (``pip install "resilient[redis]"``).
    """

    __slots__ = (
        "_down_until",
        "_failures",
        "_script",
        "_store_errors",
        "fail_open",
        "key",
        "recheck_after",
        "redis_timeout",
    )

    def __init__(  # the base limiter's parameters plus Redis's own
        self,
        client: redis.asyncio.Redis,
        key: str,
        rate: float,
        *,
        fail_open: bool,
        per: float = 1.0,
        burst: int | None = None,
        max_wait: float = 0.0,
        cost: Cost = 1,
        redis_timeout: float = 0.1,
        recheck_after: float = 1.0,
        name: str | None = None,
        clock: Clock | None = None,
        hooks: Iterable[Hook] | None = None,
    ) -> None:
        try:
            from redis.exceptions import RedisError  # noqa: PLC0415  # the optional redis extra
        except ImportError as exc:  # pragma: no cover - the dev extra installs redis
            raise ImportError(
                'RedisRateLimiter needs redis-py: pip install "resilient[redis]"'
            ) from exc
        super().__init__(
            rate, per=per, burst=burst, max_wait=max_wait, cost=cost,
            name=name, clock=clock, hooks=hooks,
        )  # fmt: skip
        owner = type(self).__name__
        check_async_redis(owner, client)
        if not isinstance(key, str) or not key:
            raise ValueError(f"{owner}(key={key!r}): key must be a non-empty string")
        if not isinstance(fail_open, bool):
            raise TypeError(f"{owner}(fail_open=...): expected True or False, got {fail_open!r}")
        self.key = key
        self.fail_open = fail_open
        self.redis_timeout = check_seconds(owner, "redis_timeout", redis_timeout)
        self.recheck_after = check_seconds(owner, "recheck_after", recheck_after, allow_zero=True)
        self._script = client.register_script(_GCRA)
        self._failures: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)
        self._down_until: float | None = None
        self._store_errors = 0

    async def _run(self, fn: AsyncFn[T], args: Args, kwargs: Kwargs) -> T:
        permits = permits_of(self, self._cost, args, kwargs)
        cap, reason, why = self._wait_allowed() if self.max_wait else (0.0, None, "")
        answer = await self._ask(permits, cap)
        if answer is None:
            if not self.fail_open:
                why = "redis unreachable; failing closed"
                unavailable = RejectionReason.STORE_UNAVAILABLE
                raise self._refusal(self.recheck_after, permits, why, unavailable)
        else:
            admitted, wait = answer
            if not admitted:
                if reason is None or wait > self.max_wait:  # refused by the rate itself
                    raise self._refusal(wait, permits)
                raise self._refusal(wait, permits, why, reason)
            if wait > 0:
                await self._sleep(wait)
        return await fn(*args, **kwargs)

    async def _ask(self, permits: float, max_wait: float) -> tuple[bool, float] | None:
        # None: Redis is unreachable (or was, less than recheck_after ago).
        if self._down_until is not None and self._monotonic() < self._down_until:
            return None
        args = (self._interval * _US, self._tolerance * _US, permits, max_wait * _US)
        try:
            async with asyncio.timeout(self.redis_timeout):
                admitted, wait = await self._script(keys=(self.key,), args=args)
        except self._failures:
            self._store_errors += 1
            self._down_until = self._monotonic() + self.recheck_after
            return None
        self._down_until = None
        return bool(int(admitted)), float(wait) / _US

    async def _sleep(self, wait: float) -> None:
        # Granted permits are not given back when a waiter is cancelled: the script would
        # need a second round trip, and the limit errs on the safe side.
        self._waiting += 1
        try:
            await self._clock.sleep(wait)
        finally:
            self._waiting -= 1
        self._waited += 1

    def _available(self) -> float:
        return 0.0  # the bucket is in Redis; asking would cost a round trip

    def statistics(self) -> RateLimiterStatistics:
        """
        Return this process's counters (``available`` is 0: the bucket is in Redis).
        """
        return dataclasses.replace(super().statistics(), store_errors=self._store_errors)

    def __repr__(self) -> str:
        down = self._down_until is not None and self._monotonic() < self._down_until
        mode = "open" if self.fail_open else "closed"
        return (
            f"<RedisRateLimiter {self.name!r} {self.rate:g}/{self.per:g}s key={self.key!r}"
            f" redis {'unreachable' if down else 'reachable'} (fails {mode}),"
            f" {self._waiting} waiting>"
        )
