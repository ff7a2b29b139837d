"""
One of several processes sharing a `RedisRateLimiter`, for the global-rate test.

    python -m tests.policies.shared._rate_limit_child <redis url> <key> <rate> <burst> <duration>

Connects, prints ``ready``, reads the start time (seconds since the epoch) from stdin,
waits until the wall clock reaches it, then calls through the limiter as fast as it
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


async def main(url: str, key: str, rate: float, burst: int, duration: float) -> None:
    """
    Run calls through the shared limiter for `duration` seconds from the start given.
    """
    client = redis.asyncio.Redis.from_url(url, socket_connect_timeout=5)
    await client.ping()
    print("ready", flush=True)
    start = float(await asyncio.to_thread(sys.stdin.readline))
    end = start + duration
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
    url, key, rate, burst, duration = sys.argv[1:]
    asyncio.run(main(url, key, float(rate), int(burst), float(duration)))
