"""Measurement core: contenders, interleaved timing rounds and statistics.

A *contender* is a zero-argument coroutine function -- a no-op coroutine
wrapped by one resilience policy of one library.  Every round times one batch
of ``calls`` sequential ``await fn()`` per contender, in an order shuffled
afresh each round, so slow drift of the machine (frequency scaling, noisy
neighbours) spreads evenly over all contenders instead of biasing whichever
ran last.  The ``bare`` contender (``await noop()`` with nothing around it) is
part of every round; a contender's overhead in a round is its ns/call minus
the bare ns/call *of the same round*.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

AsyncFn = Callable[[], Awaitable[object]]
"""A zero-argument coroutine function: what every contender is."""

Kind = Literal["bare", "resilient", "peer", "floor"]
"""``bare``: the baseline; ``resilient``: this project; ``peer``: another
library; ``floor``: a hand-written stdlib equivalent (lower bound, not a
peer)."""

NOOP_RESULT = 42
"""What :func:`noop` returns; wrappers must pass it through unchanged."""

BARE_KEY = "bare"


async def noop() -> int:
    """The function every contender wraps: returns at once, never fails."""
    return NOOP_RESULT


@dataclass(frozen=True)
class Contender:
    """One wrapped no-op coroutine function to time.

    ``primary`` is False for extra variants (e.g. a second API style of the
    same library) that are reported but not used in headline ratios.
    """

    key: str
    category: str
    label: str
    library: str
    kind: Kind
    fn: AsyncFn
    api: str
    note: str = ""
    primary: bool = True


@dataclass(frozen=True)
class Unavailable:
    """A library/category pair that could not be measured, and why."""

    category: str
    library: str
    reason: str


@dataclass
class Samples:
    """Per-round ns/call of one contender (warm-up rounds excluded)."""

    contender: Contender
    ns_per_call: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Spread:
    """Median, quartiles and extremes of a list of numbers."""

    median: float
    q1: float
    q3: float
    minimum: float
    maximum: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        """Summarise ``values`` (at least one number)."""
        if not values:
            raise ValueError("no values to summarise")
        if len(values) == 1:
            q1 = q3 = values[0]
        else:
            q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(
            median=statistics.median(values),
            q1=q1,
            q3=q3,
            minimum=min(values),
            maximum=max(values),
        )


@dataclass(frozen=True)
class Summary:
    """What the report shows for one contender."""

    contender: Contender
    ns_per_call: Spread
    overhead_ns: Spread
    samples: tuple[float, ...]
    overhead_samples: tuple[float, ...]


async def settle() -> None:
    """Let the event loop run its housekeeping outside the timed region.

    Batches of calls that never suspend never give the loop a turn, so e.g.
    cancelled timer handles left by ``asyncio.timeout`` pile up in its heap;
    a couple of loop iterations here clear them before the next batch.
    """
    for _ in range(2):
        await asyncio.sleep(0)


async def time_batch(fn: AsyncFn, calls: int) -> float:
    """Return the mean ns per call of ``calls`` sequential ``await fn()``.

    The event loop is settled and the garbage collector run before the batch,
    and the collector is disabled during it, so neither loop housekeeping nor
    a collection triggered by one contender's garbage is billed to another.
    """
    await settle()
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in itertools.repeat(None, calls):
            await fn()
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed / calls


async def verify(contender: Contender) -> str | None:
    """Call the contender once; return a reason if it misbehaves, else None."""
    try:
        result = await contender.fn()
    except Exception as exc:  # any failure disqualifies
        return f"call raised {type(exc).__name__}: {exc}"
    if result != NOOP_RESULT:
        return f"returned {result!r} instead of {NOOP_RESULT!r}"
    return None


async def run_rounds(
    contenders: Sequence[Contender],
    *,
    rounds: int,
    calls: int,
    warmup: int,
    seed: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[Samples]:
    """Time every contender once per round, in a freshly shuffled order.

    The first ``warmup`` rounds are run but not recorded.  ``progress`` is
    called with (round number, total rounds) after each recorded round.
    """
    rng = random.Random(seed)
    samples = {c.key: Samples(c) for c in contenders}
    order = list(contenders)
    for round_no in range(warmup + rounds):
        rng.shuffle(order)
        for contender in order:
            ns = await time_batch(contender.fn, calls)
            if round_no >= warmup:
                samples[contender.key].ns_per_call.append(ns)
        if progress is not None and round_no >= warmup:
            progress(round_no - warmup + 1, rounds)
    return [samples[c.key] for c in contenders]


def summarise(all_samples: Sequence[Samples]) -> list[Summary]:
    """Turn raw per-round samples into per-contender summaries.

    Overhead is computed per round against that round's bare time, then
    summarised, so a slow round raises bare and contender alike.
    """
    bare = next(s for s in all_samples if s.contender.key == BARE_KEY)
    summaries = []
    for s in all_samples:
        overheads = [c - b for c, b in zip(s.ns_per_call, bare.ns_per_call, strict=True)]
        summaries.append(
            Summary(
                contender=s.contender,
                ns_per_call=Spread.of(s.ns_per_call),
                overhead_ns=Spread.of(overheads),
                samples=tuple(s.ns_per_call),
                overhead_samples=tuple(overheads),
            )
        )
    return summaries
