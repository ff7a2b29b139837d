"""
Vegas and AdaptiveConcurrency against hostile input: latencies that are 0, negative
(a clock going back), NaN or infinite; calls that all fail at once; one algorithm
shared by two policies; and long random trajectories.
"""

from __future__ import annotations

import asyncio
import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import AIMD, AdaptiveConcurrency, Gradient2, Vegas
from resilient.testing import FakeClock
from tests._aio import promptly, settle

BROKEN = [math.nan, math.inf, -math.inf]


def measured(no_load: float = 0.1, initial: int = 10) -> Vegas:
    """A Vegas whose first probe measured `no_load`; no other probe comes."""
    vegas = Vegas(initial=initial, probe_samples=1, probe_interval=10**6)
    vegas.update(initial, no_load, 1, dropped=False)
    assert not vegas.probing
    return vegas


@pytest.mark.parametrize("rtt", BROKEN)
def test_a_nan_or_infinite_latency_is_ignored_by_vegas(rtt: float) -> None:
    """
    A broken clock's NaN or infinite sample leaves the averages alone: steady no-load
    calls afterwards still grow the limit (they used to freeze it, the average NaN).
    """
    vegas = measured()
    assert vegas.update(10, rtt, 10, dropped=False) == 10
    assert vegas.rtt() == vegas.no_load_rtt() == 0.1
    limits = [vegas.update(10, 0.1, 10, dropped=False) for _ in range(30)]
    assert limits[-1] > 10
    assert math.isfinite(vegas.rtt())


@pytest.mark.parametrize("rtt", BROKEN)
def test_a_nan_or_infinite_latency_is_ignored_by_gradient2(rtt: float) -> None:
    """
    Gradient2 ignores a NaN or infinite sample: the limits after it are those without
    it. It used to make the long-term average NaN for good, and a NaN gradient reads as
    1, so the limit grew to max_limit however slow the calls became.
    """
    trace = [0.1] * 20 + [1.0] * 50  # ten times slower: the limit shrinks

    def limits(gradient: Gradient2) -> list[int]:
        limit, out = 10, []
        for sample in trace:  # at full use: each call started with `limit` in flight
            limit = gradient.update(limit, sample, limit, dropped=False)
            out.append(limit)
        return out

    hit = Gradient2(initial=10)
    assert hit.update(10, rtt, 10, dropped=False) == 10
    assert hit.long_rtt() == 0
    got = limits(hit)
    assert got == limits(Gradient2(initial=10))
    assert got[-1] < max(got)


@pytest.mark.parametrize("rtt", [0.0, -1.0, *BROKEN])
def test_a_drop_counts_whatever_its_latency(rtt: float) -> None:
    """
    A dropped call takes one off the limit even when the clock did not move (a call
    refused at once) or went back: it used to be ignored.
    """
    vegas = measured()
    assert vegas.update(10, rtt, 10, dropped=True) == 9
    assert vegas.rtt() == 0.1


async def test_calls_that_all_fail_at_once_lower_the_limit_to_its_minimum() -> None:
    """
    Under a clock that does not move (FakeClock; a coarse clock sees the same for a
    refused connection), every call failing at once lowers the limit to min_limit;
    it used to count them in statistics().dropped and leave the limit at 20.
    """
    policy = AdaptiveConcurrency(Vegas(min_limit=2), clock=FakeClock(auto_advance=False))

    async def refused() -> None:
        raise ConnectionRefusedError

    for _ in range(30):
        with pytest.raises(ConnectionRefusedError):
            await policy.call(refused)
    stats = policy.statistics()
    assert (stats.dropped, stats.limit, policy.limit) == (30, 2, 2)
    assert repr(policy).endswith("0/2 in flight (limit 2..200), 0/0 queued>")


@pytest.mark.parametrize("algorithm", [Vegas, Gradient2, AIMD])
def test_one_algorithm_cannot_drive_two_policies(algorithm: type[Vegas]) -> None:
    """
    An algorithm keeps one policy's state: giving the instance to a second policy fails
    at construction, naming the parameter; once the first policy is gone it may be reused.
    """
    shared = algorithm()
    first = AdaptiveConcurrency(shared, name="first")
    with pytest.raises(ValueError, match=r"^AdaptiveConcurrency\(algorithm=.*already drives"
                       r" <AdaptiveConcurrency 'first'"):  # fmt: skip
        AdaptiveConcurrency(shared, name="second")
    del first
    assert AdaptiveConcurrency(shared, name="third").algorithm is shared


latencies = st.floats(1e-6, 10.0) | st.sampled_from(
    [0.0, -0.5, math.nan, math.inf, 1e300, 1.7e308, 5e-324]
)


@settings(max_examples=50, deadline=None)
@given(
    # A pattern replayed many times: a long run without a huge example to shrink.
    pattern=st.lists(st.tuples(latencies, st.integers(1, 60), st.booleans()), min_size=1),
    repeats=st.integers(20, 200),
    bounds=st.tuples(st.integers(1, 5), st.integers(0, 40)),
    seed=st.integers(0, 2**32 - 1),
)
def test_a_long_hostile_trajectory_stays_within_bounds(
    pattern: list[tuple[float, int, bool]], repeats: int, bounds: tuple[int, int], seed: int
) -> None:
    """
    Over thousands of samples, hostile ones included, the limit stays within
    [min_limit, max_limit], the averages stay finite and the probe's samples bounded.
    """
    lo, extra = bounds
    vegas = Vegas(
        initial=lo, min_limit=lo, max_limit=lo + extra, probe_interval=3, probe_samples=4,
        random=random.Random(seed).random,
    )  # fmt: skip
    limit = vegas.initial
    for rtt, in_flight, dropped in pattern * repeats:
        limit = vegas.update(limit, rtt, in_flight, dropped)
        assert lo <= limit <= lo + extra
        assert lo <= vegas.estimate <= lo + extra
        assert math.isfinite(vegas.rtt())
        assert math.isfinite(vegas.no_load_rtt())
        assert len(vegas._probe or ()) < vegas.probe_samples


def test_latencies_far_apart_leave_the_average_positive() -> None:
    """
    A round trip of one call after a probe's median of 5e299 s: the average, computed
    as an increment, rounded to 0 and the next sample divided by it (ZeroDivisionError
    out of a call that succeeded); it now starts again from the sample.
    """
    vegas = Vegas(initial=1, max_limit=1, probe_samples=2, probe_interval=10**6)
    for rtt in (1.0, 1e300):  # the first probe: median 5e299
        vegas.update(1, rtt, 1, dropped=False)
    assert vegas.no_load_rtt() == 5e299
    assert vegas.update(1, 1.0, 1, dropped=False) == 1
    assert vegas.rtt() == vegas.no_load_rtt() == 1.0
    assert vegas.update(1, 2.0, 1, dropped=False) == 1


def test_a_probe_of_huge_latencies_measures_a_finite_one() -> None:
    """
    The median of two samples past 8.9e307 s overflowed to inf (then NaN in the
    average); the lower of the two is taken instead.
    """
    vegas = Vegas(probe_samples=2)
    for _ in range(2):
        vegas.update(20, 1.7e308, 1, dropped=False)
    assert vegas.no_load_rtt() == 1.7e308
    vegas.update(20, 1.0, 20, dropped=False)
    assert math.isfinite(vegas.rtt())


async def test_a_probe_whose_calls_are_cancelled_waits_for_calls_that_finish() -> None:
    """
    Calls cancelled during a probe (an outer Timeout, a caller gone) free their slots and
    are no samples: the probe holds the limit at probe_limit until probe_samples calls
    finish, then gives the limit back. Nothing leaks: no slot, no waiter.
    """
    clock = FakeClock(auto_advance=False)
    vegas = Vegas(initial=6, probe_interval=1, probe_samples=2, random=lambda: 0.5)
    policy = AdaptiveConcurrency(vegas, max_queue=10, clock=clock)

    async def round_of(count: int, seconds: float) -> None:
        tasks = [asyncio.create_task(policy.call(clock.sleep, seconds)) for _ in range(count)]
        await settle()
        clock.advance(seconds)
        await promptly(asyncio.gather(*tasks))

    await round_of(2, 0.01)  # the first probe: the first two calls
    while not vegas.probing:
        await round_of(policy.limit, 0.01)
    held = math.floor(vegas.estimate)
    assert policy.limit == 3
    doomed = [asyncio.create_task(policy.call(clock.sleep, 1.0)) for _ in range(8)]
    await settle()
    assert (policy.in_flight, policy.queued) == (3, 5)
    for task in doomed:
        task.cancel()
    await settle()
    assert all(task.cancelled() for task in doomed)
    assert (policy.in_flight, policy.queued, policy.limit) == (0, 0, 3)
    assert vegas.probing  # nothing finished: nothing measured
    await round_of(2, 0.02)
    assert not vegas.probing
    assert policy.limit == held
    assert vegas.no_load_rtt() == pytest.approx(0.02)


class Overloaded(Exception):
    """The dependency's "too busy"."""


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.integers(1, 25),  # calls arriving together
            st.sampled_from([0.0, 0.001, 0.01, 0.1, 1.0]),  # their latency
            st.sampled_from(["ok", "overloaded", "other", "cancel"]),  # how they end
        ),
        min_size=1,
        max_size=40,
    ),
    max_queue=st.integers(0, 5),
)
def test_a_random_run_of_the_policy_leaks_nothing(
    steps: list[tuple[int, float, str]], max_queue: int
) -> None:
    """
    Bursts of calls that succeed, fail (as overload or not) or are cancelled, through a
    Vegas-driven policy with a queue: every call ends, the limit stays within its bounds,
    the counters add up and, once all have ended, no slot or waiter is left.
    """

    async def scenario() -> None:
        clock = FakeClock(auto_advance=False)
        vegas = Vegas(initial=4, min_limit=2, max_limit=12, probe_interval=2, probe_samples=3)
        policy = AdaptiveConcurrency(vegas, max_queue=max_queue, overload_on=Overloaded,
                                     clock=clock)  # fmt: skip

        async def call(seconds: float, ending: str) -> None:
            await clock.sleep(seconds)
            if ending == "overloaded":
                raise Overloaded
            if ending == "other":
                raise LookupError

        issued = 0
        for count, seconds, ending in steps:
            tasks = [asyncio.create_task(policy.call(call, seconds, ending)) for _ in range(count)]
            issued += count
            await settle()
            if ending == "cancel":
                for task in tasks[::2]:
                    task.cancel()
            for _ in range(count + 2):  # queued calls run after those before them
                clock.advance(seconds or 0.001)
                await settle()
            assert all(task.done() for task in tasks)
            await promptly(asyncio.gather(*tasks, return_exceptions=True))
            stats = policy.statistics()
            assert 2 <= stats.limit == policy.limit <= 12
            assert (stats.in_flight, stats.queued) == (0, 0)
            assert stats.accepted + stats.rejected <= issued
        assert f"0/{policy.limit} in flight (limit 2..12), 0/{max_queue} queued" in repr(policy)

    asyncio.run(scenario())


@pytest.mark.parametrize("jitter", [math.nan, -1.0, 1.0, 7, "0.5"])
def test_a_random_source_out_of_range_fails_loudly(jitter: object) -> None:
    """
    `random` must return a float in [0, 1): NaN used to stop probes for good and a
    negative value to start one at every call; it raises, naming the parameter, when
    the first probe ends.
    """
    vegas = Vegas(probe_samples=1, random=lambda: jitter)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match=r"^Vegas\(random=\.\.\.\): returned .* \[0, 1\)"):
        vegas.update(20, 0.1, 1, dropped=False)
