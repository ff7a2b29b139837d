"""
A dependency goes down and comes back; a pipeline of policies keeps the caller serving.

Run it with ``python -m examples.quickstart``. A simulated inventory service answers in
a few milliseconds, then fails every call for a while (an outage), then recovers. Twenty
workers call it through

    Fallback -> Timeout (total) -> Retry (with a budget) -> CircuitBreaker -> Bulkhead
             -> Timeout (per attempt)

and a live line shows what the policies did. Everything runs in this process; no server
is needed.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass

from resilient import (
    Bulkhead,
    CircuitBreaker,
    Event,
    Fallback,
    Rejected,
    Retry,
    RetryBudget,
    RetryScheduled,
    StateChanged,
    TimedOut,
    Timeout,
    add_hook,
    pipeline,
)

NOISE_FAILURE_RATE = 0.02  # a little background noise outside the outage


class ServiceDown(ConnectionError):
    """
    The simulated dependency is in its outage.
    """


@dataclass
class FlakyInventory:
    """
    A dependency that is healthy, then down for `outage` seconds, then healthy again.
    """

    outage_start: float
    outage: float
    started: float
    rng: random.Random
    calls: int = 0

    def phase(self) -> str:
        """
        Return "outage" while the dependency is down, else "healthy".
        """
        elapsed = time.monotonic() - self.started
        if self.outage_start <= elapsed < self.outage_start + self.outage:
            return "outage"
        return "healthy"

    async def get_stock(self, item: str) -> int:
        """
        Return the stock of `item` after a few milliseconds, or fail during the outage.
        """
        self.calls += 1
        await asyncio.sleep(self.rng.uniform(0.001, 0.004))
        if self.phase() == "outage":
            raise ServiceDown(f"inventory unavailable for {item}")
        if self.rng.random() < NOISE_FAILURE_RATE:
            raise ServiceDown("connection reset")
        return len(item)


async def run(seconds: float, workers: int, seed: int, *, live: bool) -> Counter[str]:
    """
    Drive the simulation; return what happened, by outcome and by policy decision.
    """
    inventory = FlakyInventory(
        outage_start=seconds * 0.3,
        outage=seconds * 0.3,
        started=time.monotonic(),
        rng=random.Random(seed),  # noqa: S311  # a simulation, not cryptography,
    )
    breaker = CircuitBreaker(
        name="inventory", failure_rate=0.5, window=20, min_calls=10, reset_timeout=seconds * 0.1
    )
    policy = pipeline(
        Fallback(value=-1, name="stock-cache"),
        Timeout(0.5, name="total"),
        Retry(attempts=3, budget=RetryBudget(0.2, min_per_second=5), name="inventory"),
        breaker,
        Bulkhead(8, max_queue=16, name="inventory"),
        Timeout(0.1, name="attempt"),
    )
    tally: Counter[str] = Counter()
    remove = add_hook(lambda event: _count(tally, event))
    deadline = time.monotonic() + seconds

    async def worker(n: int) -> None:
        while time.monotonic() < deadline:
            stock = await policy.call(inventory.get_stock, f"item-{n}")
            tally["served" if stock >= 0 else "fallback"] += 1
            await asyncio.sleep(0.005)

    async def report() -> None:
        while time.monotonic() < deadline:
            await asyncio.sleep(seconds / 10)
            if live:
                print(_line(inventory.phase(), breaker, tally), flush=True)

    try:
        await asyncio.gather(report(), *(worker(n) for n in range(workers)))
    finally:
        remove()
    tally["dependency_calls"] = inventory.calls
    return tally


def _count(tally: Counter[str], event: Event) -> None:
    if isinstance(event, StateChanged):
        tally[f"breaker_{event.new.value}"] += 1
    elif isinstance(event, RetryScheduled):
        tally["retries"] += 1
    elif isinstance(event, Rejected):
        tally[f"rejected_{event.reason.value}"] += 1
    elif isinstance(event, TimedOut):
        tally[f"timed_out_{event.name}"] += 1


def _line(phase: str, breaker: CircuitBreaker, tally: Counter[str]) -> str:
    return (
        f"dependency {phase:8s} | breaker {breaker.state.value:9s} | served {tally['served']:5d}"
        f" | fallback {tally['fallback']:4d} | retries {tally['retries']:4d}"
        f" | rejected: open {tally['rejected_circuit_open']:4d}"
        f" budget {tally['rejected_retry_budget']:3d} full {tally['rejected_bulkhead_full']:3d}"
    )


def main() -> None:
    """
    Parse the command line and run the simulation.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="how long to run (default 6)")
    parser.add_argument("--workers", type=int, default=20, help="concurrent callers (default 20)")
    parser.add_argument("--seed", type=int, default=7, help="random seed")
    parser.add_argument("--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args()
    tally = asyncio.run(run(args.seconds, args.workers, args.seed, live=not args.quiet))
    print("\nsummary")
    for key in sorted(tally):
        print(f"  {key:28s} {tally[key]}")


if __name__ == "__main__":
    main()
