"""
One of several processes sharing a circuit breaker through `RedisBreakerStore`.

    python -m tests.policies.shared._breaker_child <redis url> <key prefix> <reset_timeout>

Builds the breaker (name "shared", failure_threshold=3), makes one successful call and
prints ``ready <outcome>``. Then obeys one command per stdin line, printing one line:

- ``call``: call a dependency that answers at once; print ``ok`` or ``rejected <retry_in>``;
- ``hold``: call a dependency that prints ``entered`` and waits for the next stdin line
  before answering; print ``ok`` or ``rejected <retry_in>``;
- ``quit``: exit.
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio

from resilient import CircuitBreaker, CircuitOpenError, RedisBreakerStore


async def readline() -> str:
    """
    The next line of stdin, without blocking the loop.
    """
    line: str = await asyncio.to_thread(sys.stdin.readline)
    return line.strip()


async def answer() -> str:
    return "ok"


async def held() -> str:
    print("entered", flush=True)
    await readline()
    return "ok"


async def outcome(breaker: CircuitBreaker, command: str) -> str:
    """
    Run `command` through `breaker`; return what to print.
    """
    try:
        return await breaker.call(held if command == "hold" else answer)
    except CircuitOpenError as error:
        return f"rejected {error.retry_in:.3f}"


async def main(url: str, prefix: str, reset_timeout: float) -> None:
    """
    Serve the commands until ``quit`` (or the end of stdin).
    """
    client = redis.asyncio.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=10)
    try:
        breaker = CircuitBreaker(
            "shared",
            storage=RedisBreakerStore(client, prefix=prefix),
            failure_threshold=3,
            reset_timeout=reset_timeout,
            storage_timeout=10,  # generous: a loaded machine must not make it decide locally
        )
        print(f"ready {await outcome(breaker, 'call')}", flush=True)
        while (command := await readline()) not in {"quit", ""}:
            print(await outcome(breaker, command), flush=True)
    finally:
        await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3])))
