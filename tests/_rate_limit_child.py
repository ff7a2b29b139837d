"""
One of several processes sharing a `RedisRateLimiter`, for the global-rate test.

    python -m tests._rate_limit_child <redis url> <key> <rate> <burst> <start> <duration>

Waits until the wall clock reaches `start`, then calls through the limiter as fast as it
lets it (waiting up to 2 s for a permit, sleeping out `retry_after` when refused) until
`start + duration`. Prints one JSON line: the calls that ran inside the window.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import redis.asyncio

from resilient import RateLimitedError, RedisRateLimiter


async def main(  # noqa: PLR0917  # the command line, in order
    url: str, key: str, rate: float, burst: int, start: float, duration: float
) -> None:
    """
    Run calls through the shared limiter for `duration` seconds from `start`.
    """
    end = start + duration
    client = redis.asyncio.Redis.from_url(url)
    limiter = RedisRateLimiter(
        client, key, rate, burst=burst, max_wait=2.0, fail_open=False, redis_timeout=2.0
    )
    ran = 0

    async def work() -> None:
        nonlocal ran
        now = time.time()
        if start <= now < end:
            ran += 1

    try:
        await asyncio.sleep(max(0.0, start - time.time()))
        while time.time() < end:
            try:
                await limiter.call(work)
            except RateLimitedError as error:
                await asyncio.sleep(error.retry_after)
    finally:
        await client.aclose()
    stats = limiter.statistics()
    print(json.dumps({"ran": ran, "rejected": stats.rejected, "store_errors": stats.store_errors}))


if __name__ == "__main__":
    url, key, rate, burst, start, duration = sys.argv[1:]
    asyncio.run(main(url, key, float(rate), int(burst), float(start), float(duration)))
