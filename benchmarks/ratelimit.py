"""
Happy-path cost per call of a rate limiter: resilient's `RateLimiter` against aiolimiter,
limits (its three async strategies) and hyx's token bucket, and a hand-written floor.

    python -m benchmarks.ratelimit -o /tmp/l1.json     # pyperf; then benchmarks.report
    python -m benchmarks.ratelimit --quick --md /tmp/l.md

Every limiter allows a rate no benchmark reaches (10^9 permits per second, bursts of
10^9), so each call is admitted at once: what is measured is the bookkeeping of an
admitted call.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import _perf
from benchmarks._perf import Case, noop
from benchmarks.report import Figure, Report
from resilient import RateLimiter

RATE = 10**9
STRATEGIES = ("FixedWindow", "MovingWindow", "SlidingWindowCounter")


def _aiolimiter() -> Any:
    from aiolimiter import AsyncLimiter

    limiter = AsyncLimiter(RATE, 1)

    async def limited() -> object:
        async with limiter:
            return await noop()

    return limited


def _limits(strategy: str) -> Any:
    from limits import RateLimitItemPerSecond
    from limits.aio import storage, strategies

    item = RateLimitItemPerSecond(RATE)
    hit = getattr(strategies, f"{strategy}RateLimiter")(storage.MemoryStorage()).hit

    async def limited() -> object:
        if not await hit(item):
            raise RuntimeError("refused")
        return await noop()

    return limited


def _hyx() -> Any:
    from hyx.ratelimit import tokenbucket

    return tokenbucket(max_executions=RATE, per_time_secs=1, bucket_size=RATE)(noop)


def _floor() -> Any:
    """A hand-written GCRA check inline: the least an admitted call can cost."""
    monotonic, interval = time.monotonic, 1 / RATE
    tolerance, state = RATE * interval, [monotonic()]

    async def limited() -> object:
        now = monotonic()
        tat = max(state[0], now) + interval
        if tat - tolerance > now:
            raise RuntimeError("refused")
        state[0] = tat
        return await noop()

    return limited


def _call() -> Any:
    limiter = RateLimiter(RATE, burst=RATE)

    async def through_call() -> object:
        return await limiter.call(noop)

    return through_call


def cases() -> list[Case]:
    """Every limiter."""
    return [
        Case("bare", lambda: noop, "await noop()"),
        Case("resilient @RateLimiter", lambda: RateLimiter(RATE, burst=RATE)(noop),
             "@RateLimiter(1e9, burst=1e9)"),
        Case("resilient RateLimiter.call", _call, "await RateLimiter(1e9, burst=1e9).call(noop)"),
        Case("aiolimiter AsyncLimiter", _aiolimiter,
             "async with AsyncLimiter(1e9, 1): await noop()", ("aiolimiter",)),
        *(Case(f"limits {s}", lambda s=s: _limits(s),  # type: ignore[misc]
               f"if await {s}RateLimiter(MemoryStorage()).hit(1e9/s): await noop()", ("limits",))
          for s in STRATEGIES),
        Case("hyx @tokenbucket", _hyx,
             "@tokenbucket(max_executions=1e9, per_time_secs=1, bucket_size=1e9)", ("hyx",)),
        Case("hand-written GCRA (floor)", _floor, "time.monotonic() + two comparisons, inline"),
    ]  # fmt: skip


PEERS = [(name, "bare") for name in ("aiolimiter AsyncLimiter", "hyx @tokenbucket",
                                    *(f"limits {s}" for s in STRATEGIES))]  # fmt: skip
# fmt: off
PAGE = Report(
    "ratelimit",
    "Rate limiter: happy-path overhead",
    "bare",
    [
        Figure("resilient / fastest peer", ("resilient @RateLimiter", "bare"), PEERS, 1.0),
        Figure("resilient / floor", ("resilient @RateLimiter", "bare"),
               [("hand-written GCRA (floor)", "bare")]),
    ],
    notes="hyx's bucket reads no clock while it holds tokens (it refills only when empty),"
    " so its happy path is a subtraction; resilient's reads the clock on every call, as"
    " GCRA needs. limits is built for shared storages: its in-memory async storage takes"
    " a lock and keeps per-key state in dictionaries.",
)
# fmt: on


if __name__ == "__main__":
    raise SystemExit(_perf.main("benchmarks.ratelimit", cases, PAGE))
