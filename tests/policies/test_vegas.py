"""
Vegas, the default AdaptiveConcurrency algorithm: limit trajectories against a reference
model, each rule on its own (growth, hold, shrink, drops, app-limited), the no-load
probe, reprs, checks, and the policy driven by FakeClock.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import AdaptiveConcurrency, ConcurrencyLimitError, Vegas
from resilient.testing import FakeClock
from tests._aio import promptly, settle

Sample = tuple[float, int, bool]  # rtt, in flight, dropped

samples = st.lists(
    st.tuples(
        st.floats(0.001, 2.0, allow_nan=False),
        # Often at the limit (probes start), often few (probes finish), or any.
        st.integers(200, 300) | st.integers(1, 4) | st.integers(1, 300),
        st.booleans() | st.just(False),  # often no drop: the limit moves by latency
    ),
    min_size=40,  # long enough for probes to start and finish
    max_size=300,
)


def vegas_model(  # noqa: PLR0917  # the algorithm, plainly, in one place
    initial: int,
    lo: int,
    hi: int,
    alpha: float,
    beta: float,
    interval: int,
    probe_limit: int,
    probe_samples: int,
    jitter: Callable[[], float],
    trace: list[Sample],
) -> tuple[list[int], float]:
    """
    The algorithm written out plainly: the calls queued at the dependency are
    limit * (1 - no_load / average), the average over a round trip (weight 1/limit);
    per call at half the limit or more: +beta/limit with at most one queued, +1/limit
    below alpha, -1/limit above beta; -1 per drop. The first probe is the first
    probe_samples calls, limit untouched; then probes every interval x U[0.5, 1.5)
    round trips at the limit: the limit is
    min(probe_limit, limit) (at least lo) until probe_samples calls started at it have
    finished; their median is the new no-load latency. Returns the limits and no_load.
    """
    limit, no_load, average = float(initial), 0.0, 0.0
    probe: list[float] | None = []  # the first probe: the first calls, limit untouched
    countdown = 0.0
    out = []
    for rtt, in_flight, dropped in trace:
        probe_at = max(lo, min(probe_limit, math.floor(limit)))
        if dropped:
            limit = max(lo, limit - 1)
        elif probe is not None:
            if no_load == 0 or in_flight <= probe_at:
                probe.append(rtt)
            if len(probe) == probe_samples:
                no_load = statistics.median(probe)
                average = max(average, no_load)
                probe, countdown = None, interval * (0.5 + jitter())
        else:
            average += (rtt - average) / limit
            no_load = min(no_load, average)
            if 2 * in_flight >= limit:
                queued = limit * (1 - no_load / average)
                step = 0.0
                if queued < alpha:
                    step = beta if queued <= 1 else 1
                elif queued > beta:
                    step = -1
                before = limit
                limit = min(hi, max(lo, limit + step / limit))
                countdown -= 1 / before
                if countdown <= 0:
                    probe = []
        if probe is None or no_load == 0:
            out.append(max(lo, min(hi, math.floor(limit))))
        else:
            out.append(max(lo, min(probe_limit, math.floor(limit))))
    return out, no_load


def run(algorithm: Vegas, trace: list[Sample]) -> list[int]:
    """The limit after each sample of `trace`."""
    limit, got = algorithm.initial, []
    for rtt, in_flight, dropped in trace:
        limit = algorithm.update(limit, rtt, in_flight, dropped)
        got.append(limit)
    return got


@settings(max_examples=200, deadline=None)
@given(
    trace=samples,
    bounds=st.tuples(st.integers(1, 5), st.integers(0, 10), st.integers(0, 20)),
    thresholds=st.tuples(st.floats(0.1, 5.0), st.floats(0.1, 5.0)),
    probe=st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 6)),
    seed=st.integers(0, 2**32 - 1),
)
def test_vegas_follows_the_reference_model(
    trace: list[Sample],
    bounds: tuple[int, int, int],
    thresholds: tuple[float, float],
    probe: tuple[int, int, int],
    seed: int,
) -> None:
    """
    Vegas's limit after each sample, and its no-load latency, equal the model's; the
    limit stays within its bounds, and within probe_limit while a probe runs.
    """
    lo, above, extra = bounds
    initial, hi = lo + above, lo + above + extra
    alpha, beta = thresholds[0], thresholds[0] + thresholds[1]
    interval, probe_limit, probe_samples = probe
    algorithm = Vegas(
        initial=initial, min_limit=lo, max_limit=hi, alpha=alpha, beta=beta,
        probe_interval=interval, probe_limit=probe_limit, probe_samples=probe_samples,
        random=random.Random(seed).random,
    )  # fmt: skip
    got = run(algorithm, trace)
    expected, no_load = vegas_model(
        initial, lo, hi, alpha, beta, interval, probe_limit, probe_samples,
        random.Random(seed).random, trace,
    )  # fmt: skip
    assert got == expected
    assert algorithm.no_load_rtt() == no_load
    assert all(lo <= value <= hi for value in got)
    if algorithm.probing:
        assert got[-1] == max(lo, min(probe_limit, got[-1]))


def steady(n: int, rtt: float, in_flight: int) -> list[Sample]:
    """`n` calls of latency `rtt`, each started with `in_flight` calls in flight."""
    return [(rtt, in_flight, False)] * n


def measured(no_load: float, **knobs: int) -> Vegas:
    """A Vegas whose first probe measured `no_load` (its first calls, one at a time);
    by default its next probe does not come within these tests' samples."""
    vegas = Vegas(**{"probe_interval": 10**6, **knobs}, random=lambda: 0.5)
    assert vegas.probing  # the first probe: the first calls
    run(vegas, steady(vegas.probe_samples, no_load, 1))
    assert not vegas.probing
    assert vegas.no_load_rtt() == vegas.rtt() == no_load
    assert vegas.estimate == vegas.initial  # the first probe moved nothing
    return vegas


def test_the_first_calls_are_the_first_probe_and_refuse_nothing() -> None:
    """
    Until probe_samples calls have finished the limit stays at initial, whatever the
    calls in flight; their median latency is the first no-load latency.
    """
    vegas = Vegas(initial=20, probe_samples=5)
    trace = [(0.1, 20, False), (0.3, 1, False), (0.2, 15, False), (0.9, 20, False),
             (0.15, 3, False)]  # fmt: skip
    assert run(vegas, trace) == [20] * 5
    assert vegas.no_load_rtt() == 0.2
    assert not vegas.probing


def test_without_a_queue_the_limit_grows_by_beta_a_round_trip() -> None:
    """
    At full use and steady latency nothing is queued: each of the first round trip's
    10 calls adds beta/limit, so the limit grows by about beta (4) per round trip.
    """
    vegas = measured(0.1, initial=10)
    limits = run(vegas, steady(10, 0.1, 10))
    assert limits == sorted(limits)
    assert limits[-1] == 13  # 10 + 4/10 + 4/10.4 + ... (the round trip grows as it goes)
    assert vegas.estimate == pytest.approx(13.4, abs=0.1)
    assert vegas.no_load_rtt() == vegas.rtt() == 0.1


def test_a_queue_between_alpha_and_beta_holds_the_limit() -> None:
    """
    Latency a third above the no-load one at a limit of 10 means 10 x (1 - 1/1.3) =
    2.3 calls waiting: between alpha (2) and beta (4), so the limit holds.
    """
    vegas = measured(0.1, initial=10)
    vegas._latency = 0.13  # a round trip's average, set outright
    assert run(vegas, steady(20, 0.13, 10)) == [10] * 20


def test_a_queue_beyond_beta_shrinks_the_limit_until_beta_are_waiting() -> None:
    """
    Latency doubled at a limit of 20 is 10 calls waiting (> beta): the average follows
    within a round trip, the limit falls by one a round trip, and settles where
    limit x (1 - 1/2) = beta, just under 8, for as long as the latency stays.
    """
    vegas = measured(0.1, initial=20)
    limits = run(vegas, steady(100, 0.2, 20))
    assert limits == sorted(limits, reverse=True)
    assert limits[50] > 10  # 50 calls: fewer than four round trips
    assert run(vegas, steady(300, 0.2, 20))[-100:] == [7] * 100
    assert vegas.estimate == pytest.approx(8, abs=0.15)


def test_a_small_queue_grows_the_limit_by_one_a_round_trip() -> None:
    """
    One to alpha calls waiting: growth slows from beta to one per round trip.
    """
    vegas = measured(0.1, initial=10)
    vegas._latency = 0.115  # set outright: 10 x (1 - 1/1.15) = 1.3 calls waiting
    run(vegas, steady(10, 0.115, 10))
    assert vegas.estimate == pytest.approx(11.0, abs=0.05)


def test_a_drop_lowers_the_limit_by_one_at_once() -> None:
    """
    Each overload failure takes one off the limit, down to min_limit, and its latency
    (a deadline's) is no sample of the dependency's.
    """
    vegas = measured(0.1, initial=3, min_limit=2)
    assert run(vegas, [(0.5, 3, True)] * 3) == [2, 2, 2]
    assert vegas.rtt() == vegas.no_load_rtt() == 0.1


def test_an_app_limited_client_holds_its_limit_and_never_probes() -> None:
    """
    With fewer than half the limit in flight the latency says nothing about more calls:
    the limit holds (though the averages learn) and no round trip counts toward a probe.
    """
    vegas = measured(0.1, initial=20, probe_interval=1)
    assert run(vegas, [(0.1, 9, False), (0.3, 9, False), (0.5, 1, False)] * 30) == [20] * 90
    assert not vegas.probing
    assert vegas.rtt() > vegas.no_load_rtt() == 0.1


def test_a_probe_measures_the_no_load_latency_then_restores_the_limit() -> None:
    """
    After probe_interval round trips at the limit the limit drops to probe_limit; calls
    started before the drop are ignored, the median of the next probe_samples calls is
    the new no-load latency, and the limit comes back where it was.
    """
    vegas = measured(0.1, initial=10, probe_interval=1, probe_samples=3)
    limits = []
    while not vegas.probing:
        limits += run(vegas, [(0.1, 10, False)])
    assert 10 < len(limits) < 13  # one round trip, of 10 calls and then some as it grew
    assert limits[-2:] == [13, 3]  # probe_limit
    held = math.floor(vegas.estimate)
    assert held >= 13
    assert run(vegas, [(0.3, 10, False), (0.3, 4, False)]) == [3, 3]  # started before it
    assert run(vegas, [(0.2, 3, False), (0.1, 2, False), (0.15, 1, False)]) == [3, 3, held]
    assert not vegas.probing
    assert vegas.no_load_rtt() == 0.15
    assert vegas.rtt() >= 0.15  # not below the new baseline: it would pull it back down


def test_a_dependency_slower_for_good_is_measured_by_the_next_probe() -> None:
    """
    Latency doubled for good: against the old no-load latency half the calls look
    queued, so the limit falls to where half of it is beta (8), not to its minimum
    (at most the calls in flight can wait); the next probe measures the new no-load
    latency, and the limit grows again.
    """
    vegas = measured(0.1, initial=20, probe_interval=40, probe_samples=3)
    limits = []
    while not vegas.probing:
        limits += run(vegas, [(0.2, 20, False)])
    assert (min(limits[:-1]), limits[-1]) == (7, 3)  # then the probe, at probe_limit
    run(vegas, steady(3, 0.2, 3))
    assert vegas.no_load_rtt() == 0.2
    assert run(vegas, steady(40, 0.2, 20))[-1] > 12


def test_a_probe_stays_within_the_limit_and_above_min_limit() -> None:
    """
    A probe holds the limit at probe_limit, or at the limit it found if that is lower,
    and never below min_limit.
    """
    low = measured(0.1, initial=2, probe_interval=1, probe_limit=50)
    limits = []
    while not low.probing:
        limits += run(low, steady(1, 0.1, 100))
    assert limits[-1] == math.floor(low.estimate) < 50
    floor = measured(0.1, initial=6, min_limit=5, probe_interval=1)
    limits = []
    while not floor.probing:
        limits += run(floor, steady(1, 0.1, 100))
    assert limits[-1] == 5


def test_a_zero_latency_sample_leaves_everything_alone() -> None:
    """
    A clock that did not move gives no information: the limit is what it was.
    """
    vegas = Vegas()
    assert vegas.update(17, 0.0, 20, dropped=False) == 17
    assert (vegas.rtt(), vegas.no_load_rtt(), vegas.estimate) == (0, 0, 20)


def test_repr_shows_the_settings() -> None:
    """
    The repr shows every knob (not the random source).
    """
    assert repr(Vegas()) == (
        "Vegas(initial=20, min_limit=1, max_limit=200, alpha=2, beta=4,"
        " probe_interval=300, probe_limit=3, probe_samples=10)"
    )


@pytest.mark.parametrize(
    ("knobs", "error", "named"),
    [
        ({"alpha": 0}, ValueError, r"^Vegas\(alpha=0\): alpha must be finite and > 0"),
        ({"alpha": math.nan}, ValueError, r"^Vegas\(alpha=nan\)"),
        ({"beta": math.inf}, ValueError, r"^Vegas\(beta=inf\)"),
        ({"alpha": "2"}, TypeError, r"^Vegas\(alpha=\.\.\.\): expected a number"),
        ({"alpha": 4, "beta": 4}, ValueError, r"^Vegas\(beta=4\): beta must be > alpha \(4\)"),
        ({"probe_interval": 0}, ValueError, r"^Vegas\(probe_interval=0\)"),
        ({"probe_interval": 10**400}, ValueError, r"^Vegas\(probe_interval="),
        ({"probe_limit": 0}, ValueError, r"^Vegas\(probe_limit=0\)"),
        ({"probe_samples": 0}, ValueError, r"^Vegas\(probe_samples=0\)"),
        ({"probe_samples": 2.0}, TypeError, r"^Vegas\(probe_samples=\.\.\.\)"),
        ({"random": 0.5}, TypeError, r"^Vegas\(random=\.\.\.\): expected a function"),
        ({"min_limit": 0}, ValueError, r"^Vegas\(min_limit=0\)"),
        ({"initial": 300}, ValueError, r"^Vegas\(initial=300\)"),
    ],
)
def test_bad_parameters_are_named(knobs: dict[str, object], error: type, named: str) -> None:
    """
    A bad parameter raises at construction, naming it and its value.
    """
    with pytest.raises(error, match=named):
        Vegas(**knobs)  # type: ignore[arg-type]


async def test_the_default_policy_learns_a_limit_with_vegas() -> None:
    """
    AdaptiveConcurrency() runs Vegas: at full use and steady latency the limit grows;
    latency tripled shrinks it, seen in statistics() as a metrics gauge reads it.
    """
    clock = FakeClock(auto_advance=False)
    policy = AdaptiveConcurrency(clock=clock)
    assert isinstance(policy.algorithm, Vegas)
    history = []

    async def call(seconds: float) -> None:
        await clock.sleep(seconds)

    for latency in [0.01] * 5 + [0.03] * 20:
        tasks = [asyncio.create_task(policy.call(call, latency)) for _ in range(policy.limit)]
        await settle()
        clock.advance(latency)
        await promptly(asyncio.gather(*tasks))
        history.append(policy.statistics().limit)
    assert history[4] > 20
    assert history[-1] < history[4]


async def test_a_probe_holds_the_policy_at_probe_limit_then_gives_the_limit_back() -> None:
    """
    Under FakeClock: once a probe starts, the policy admits probe_limit calls and refuses
    the next; when probe_samples calls started at that concurrency have finished, the
    limit the probe found is back, and the no-load latency is theirs.
    """
    clock = FakeClock(auto_advance=False)
    vegas = measured(0.01, initial=6, probe_interval=1, probe_samples=2)
    policy = AdaptiveConcurrency(vegas, clock=clock)

    async def call(seconds: float) -> None:
        await clock.sleep(seconds)

    async def round_of(count: int, seconds: float) -> None:
        tasks = [asyncio.create_task(policy.call(call, seconds)) for _ in range(count)]
        await settle()
        clock.advance(seconds)
        await promptly(asyncio.gather(*tasks))

    while not vegas.probing:
        await round_of(policy.limit, 0.01)
    held = math.floor(vegas.estimate)
    assert held >= 6
    assert policy.limit == 3
    running = [asyncio.create_task(policy.call(call, 0.02)) for _ in range(3)]
    await settle()
    with pytest.raises(ConcurrencyLimitError):
        await policy.call(call, 0)
    clock.advance(0.02)
    await promptly(asyncio.gather(*running))
    assert not vegas.probing
    assert policy.limit >= held  # (the third call, after the probe, is a sample too)
    assert vegas.no_load_rtt() == pytest.approx(0.02)
