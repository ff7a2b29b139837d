"""
AdaptiveConcurrency: AIMD and Gradient2 limit trajectories against reference models,
the policy's slots, queue and rejections, the limit in statistics, cancellation, checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from resilient import (
    AIMD,
    AdaptiveConcurrency,
    AdaptiveConcurrencyStatistics,
    ConcurrencyLimitError,
    Gradient2,
    LimitAlgorithm,
    Rejected,
    RejectionReason,
    Vegas,
)
from resilient.integrations.prometheus import ResilienceMetrics
from resilient.testing import FakeClock, capture_events
from tests._aio import promptly, settle

Sample = tuple[float, int, bool]  # rtt, in flight, dropped

samples = st.lists(
    st.tuples(
        st.floats(0.001, 2.0, allow_nan=False),
        st.integers(1, 300),
        st.booleans(),
    ),
    min_size=1,
    max_size=200,
)


def aimd_model(  # noqa: PLR0917  # the algorithm's knobs, plainly
    limit: int, lo: int, hi: int, backoff: float, timeout: float | None, trace: list[Sample]
) -> list[int]:
    """
    Netflix's AIMDLimit, written out plainly: x backoff (truncated) on a drop or a
    timeout, +1 when at least half the limit is in use.
    """
    out = []
    for rtt, in_flight, dropped in trace:
        if dropped or (timeout is not None and rtt > timeout):
            limit = max(lo, int(limit * backoff))
        elif in_flight * 2 >= limit:
            limit = min(hi, limit + 1)
        out.append(limit)
    return out


def gradient2_model(  # noqa: PLR0917  # the algorithm's knobs, plainly
    limit: float,
    lo: int,
    hi: int,
    smoothing: float,
    tolerance: float,
    window: int,
    queue: int,
    trace: list[Sample],
) -> list[int]:
    """
    Netflix's Gradient2Limit, written out plainly: long-term RTT a mean over 10
    samples then an EMA of factor 2/(window+1), decayed 5% when over twice the sample;
    no change while app-limited; else move `smoothing` of the way to
    limit * clamp(tolerance * long / rtt, 0.5, 1) + queue.
    """
    long_rtt, out = 0.0, []
    for count, (rtt, in_flight, _) in enumerate(trace, start=1):
        if count <= 10:
            long_rtt = (long_rtt * (count - 1) + rtt) / count
        else:
            long_rtt = long_rtt * (1 - 2 / (window + 1)) + rtt * 2 / (window + 1)
        current = long_rtt
        if current / rtt > 2:
            long_rtt = current * 0.95
        if in_flight >= limit / 2:
            gradient = max(0.5, min(1.0, tolerance * current / rtt))
            target = limit * gradient + queue
            limit = max(lo, min(hi, limit * (1 - smoothing) + target * smoothing))
        out.append(int(limit))
    return out


@settings(max_examples=200, deadline=None)
@given(
    trace=samples,
    bounds=st.tuples(st.integers(1, 50), st.integers(0, 200)),
    backoff=st.floats(0.1, 0.99),
    timeout=st.none() | st.floats(0.01, 1.0),
)
def test_aimd_follows_the_reference_model(
    trace: list[Sample], bounds: tuple[int, int], backoff: float, timeout: float | None
) -> None:
    """
    AIMD's limit after each sample equals the reference model's, within its bounds.
    """
    lo, extra = bounds
    hi = lo + extra
    algorithm = AIMD(initial=lo, min_limit=lo, max_limit=hi, backoff=backoff, timeout=timeout)
    limit, got = algorithm.initial, []
    for rtt, in_flight, dropped in trace:
        limit = algorithm.update(limit, rtt, in_flight, dropped)
        got.append(limit)
    assert got == aimd_model(lo, lo, hi, backoff, timeout, trace)
    assert all(lo <= value <= hi for value in got)


@settings(max_examples=200, deadline=None)
@given(
    trace=samples,
    initial=st.integers(1, 100),
    smoothing=st.floats(0.05, 1.0),
    tolerance=st.floats(1.0, 3.0),
    window=st.integers(1, 100),
    queue=st.integers(0, 10),
)
def test_gradient2_follows_the_reference_model(  # noqa: PLR0917  # hypothesis draws
    trace: list[Sample],
    initial: int,
    smoothing: float,
    tolerance: float,
    window: int,
    queue: int,
) -> None:
    """
    Gradient2's limit after each sample equals the reference model's, within bounds.
    """
    algorithm = Gradient2(
        initial=initial, min_limit=1, max_limit=150, smoothing=smoothing,
        tolerance=tolerance, long_window=window, queue_size=queue,
    )  # fmt: skip
    limit, got = initial, []
    for rtt, in_flight, dropped in trace:
        limit = algorithm.update(limit, rtt, in_flight, dropped)
        got.append(limit)
    expected = gradient2_model(float(initial), 1, 150, smoothing, tolerance, window, queue, trace)
    assert got == expected
    assert all(1 <= value <= 150 for value in got)


class Calls:
    """
    Calls through a policy that each take `seconds` of fake time, or fail.
    """

    def __init__(self, policy: AdaptiveConcurrency, clock: FakeClock) -> None:
        self.policy = policy
        self.clock = clock

    async def body(self, seconds: float, error: BaseException | None = None) -> str:
        await self.clock.sleep(seconds)
        if error is not None:
            raise error
        return "ok"

    def start(self, seconds: float, error: BaseException | None = None) -> asyncio.Task[str]:
        return asyncio.create_task(self.policy.call(self.body, seconds, error))


async def test_aimd_limit_grows_under_use_and_falls_on_drops() -> None:
    """
    Calls that use the limit add one each; an overload failure multiplies it by the
    backoff; the limit is in statistics() (a metrics gauge reads it there).
    """
    clock = FakeClock(auto_advance=False)
    policy = AdaptiveConcurrency(AIMD(initial=4, max_limit=6), clock=clock)
    calls = Calls(policy, clock)
    tasks = [calls.start(0.01) for _ in range(4)]
    await settle()
    clock.advance(0.01)
    await promptly(asyncio.gather(*tasks))
    assert policy.limit == 6  # 4 samples of in_flight 4: +1 each, capped at 6
    failing = calls.start(0.01, TimeoutError())
    await settle()
    clock.advance(0.01)
    with pytest.raises(TimeoutError):
        await failing
    assert policy.statistics() == AdaptiveConcurrencyStatistics(
        max_concurrent=5, max_queue=0, in_flight=0, queued=0, accepted=5, rejected=0,
        limit=5, min_limit=1, max_limit=6, dropped=1,
    )  # fmt: skip


async def test_gradient2_shrinks_when_latency_rises_and_grows_while_it_holds() -> None:
    """
    Under full use, steady latency lets Gradient2 grow the limit; latency tripled
    against the long-term average shrinks it.
    """
    clock = FakeClock(auto_advance=False)
    policy = AdaptiveConcurrency(Gradient2(initial=10, max_limit=100), clock=clock)
    calls = Calls(policy, clock)
    history = []
    for latency in [0.01] * 20 + [0.03] * 5:
        tasks = [calls.start(latency) for _ in range(policy.limit)]
        await settle()
        clock.advance(latency)
        await promptly(asyncio.gather(*tasks))
        history.append(policy.limit)
    assert history[19] > 10
    assert history[-1] < history[19]


async def test_calls_beyond_the_limit_queue_then_are_rejected() -> None:
    """
    Past the limit, callers wait in FIFO order up to max_queue; the next is rejected
    with ConcurrencyLimitError and a Rejected(CONCURRENCY_LIMIT) event.
    """
    clock = FakeClock(auto_advance=False)
    policy = AdaptiveConcurrency(AIMD(initial=2, max_limit=2), max_queue=1, name="db", clock=clock)
    calls = Calls(policy, clock)
    running = [calls.start(1.0), calls.start(1.0)]
    queued = calls.start(1.0)
    await settle()
    assert repr(policy) == "<AdaptiveConcurrency 'db' 2/2 in flight (limit 1..2), 1/1 queued>"
    with capture_events(Rejected) as events, pytest.raises(ConcurrencyLimitError) as caught:
        await policy.call(calls.body, 0)
    assert caught.value.limit == 2
    assert [e.reason for e in events] == [RejectionReason.CONCURRENCY_LIMIT]  # type: ignore[attr-defined]
    clock.advance(1.0)
    await promptly(asyncio.gather(*running))
    await settle()
    clock.advance(1.0)
    assert await queued == "ok"
    assert policy.statistics().rejected == 1


async def test_a_grown_limit_admits_several_waiters_at_once() -> None:
    """
    When one finished call raises the limit, every waiter that now fits is admitted.
    """
    clock = FakeClock(auto_advance=False)
    policy = AdaptiveConcurrency(AIMD(initial=1, max_limit=3), max_queue=5, clock=clock)
    calls = Calls(policy, clock)
    first = calls.start(1.0)
    waiting = [calls.start(1.0) for _ in range(3)]
    await settle()
    assert policy.statistics().queued == 3
    clock.advance(1.0)
    await first
    await settle()
    stats = policy.statistics()
    assert (stats.limit, stats.in_flight, stats.queued) == (2, 2, 1)
    clock.advance(1.0)
    await settle()
    clock.advance(1.0)
    await promptly(asyncio.gather(*waiting))


async def test_cancelled_calls_release_their_slot_without_a_sample() -> None:
    """
    A running call that is cancelled frees its slot and leaves the limit alone; a
    cancelled waiter leaves the queue.
    """
    clock = FakeClock(auto_advance=False)
    policy = AdaptiveConcurrency(AIMD(initial=1, max_limit=5), max_queue=1, clock=clock)
    calls = Calls(policy, clock)
    running, waiting = calls.start(1.0), calls.start(1.0)
    await settle()
    waiting.cancel()
    running.cancel()
    await settle()
    stats = policy.statistics()
    assert (stats.limit, stats.in_flight, stats.queued, stats.dropped) == (1, 0, 0, 0)


async def test_only_overload_failures_are_drops() -> None:
    """
    With overload_on narrowed, other failures are ordinary samples, not drops.
    """
    clock = FakeClock()
    policy = AdaptiveConcurrency(
        AIMD(initial=2, max_limit=10), overload_on=TimeoutError, clock=clock
    )
    with pytest.raises(KeyError):
        await policy.call(Calls(policy, clock).body, 0.1, KeyError("absent"))
    assert policy.statistics().dropped == 0
    assert policy.limit == 3  # a sample with half the limit in use: +1


async def test_a_queued_caller_gives_up_after_max_wait() -> None:
    """
    A waiter not admitted within max_wait is rejected and leaves the queue.
    """
    clock = FakeClock(auto_advance=False)
    policy = AdaptiveConcurrency(AIMD(initial=1), max_queue=1, max_wait=0.5, clock=clock)
    calls = Calls(policy, clock)
    running, waiting = calls.start(1.0), calls.start(1.0)
    await settle()
    clock.advance(0.5)
    with pytest.raises(ConcurrencyLimitError, match=r"waited 0\.5s"):
        await waiting
    assert policy.statistics().queued == 0
    clock.advance(0.5)
    await running


def test_error_is_picklable() -> None:
    """
    ConcurrencyLimitError survives pickling with its fields and message.
    """
    error = pickle.loads(pickle.dumps(ConcurrencyLimitError("db", 7, "queue full")))  # noqa: S301
    assert (error.name, error.limit, error.why) == ("db", 7, "queue full")
    assert str(error) == "concurrency limit 'db' reached (queue full; limit=7)"


@pytest.mark.parametrize(
    ("build", "error", "named"),
    [
        (lambda: AIMD(min_limit=0), ValueError, r"AIMD\(min_limit="),
        (lambda: AIMD(min_limit=5, max_limit=4), ValueError, r"AIMD\(max_limit="),
        (lambda: AIMD(initial=300), ValueError, r"AIMD\(initial="),
        (lambda: AIMD(backoff=1), ValueError, r"AIMD\(backoff="),
        (lambda: AIMD(timeout=0), ValueError, r"AIMD\(timeout="),
        (lambda: Gradient2(tolerance=0.5), ValueError, r"Gradient2\(tolerance="),
        (lambda: Gradient2(smoothing=0), ValueError, r"Gradient2\(smoothing="),
        (lambda: Gradient2(long_window=0), ValueError, r"Gradient2\(long_window="),
        # Accepted, these broke every sample with an OverflowError (int to float).
        (lambda: Gradient2(long_window=10**400), ValueError, r"Gradient2\(long_window="),
        (lambda: Gradient2(queue_size=10**400), ValueError, r"Gradient2\(queue_size="),
        (lambda: Gradient2(max_limit=10**400), ValueError, r"Gradient2\(max_limit="),
        (lambda: AIMD(max_limit=10**400), ValueError, r"AIMD\(max_limit="),
        (lambda: AdaptiveConcurrency(max_queue=-1), ValueError, r"\(max_queue="),
        (lambda: AdaptiveConcurrency(max_wait=-1), ValueError, r"\(max_wait="),
        (lambda: AdaptiveConcurrency(object()), TypeError, r"\(algorithm="),  # type: ignore[arg-type]
        (lambda: AdaptiveConcurrency(overload_on=()), ValueError, r"\(overload_on="),
    ],
)
def test_bad_parameters_are_named(build: object, error: type, named: str) -> None:
    """
    A bad parameter raises at construction, naming it.
    """
    with pytest.raises(error, match=named):
        build()  # type: ignore[operator]


async def test_inner_rejections_are_not_samples() -> None:
    """
    A RejectedError from an inner policy (the dependency never saw the call) frees the
    slot and is neither a drop nor a sample.
    """
    policy = AdaptiveConcurrency(AIMD(initial=2), clock=FakeClock())

    async def refused() -> None:
        raise ConcurrencyLimitError("inner", 1, "full")

    with pytest.raises(ConcurrencyLimitError):
        await policy.call(refused)
    stats = policy.statistics()
    assert (stats.limit, stats.in_flight, stats.dropped) == (2, 0, 0)


async def test_async_with_samples_the_block() -> None:
    """
    Used as ``async with``, the block is the call: its duration is a sample, and an
    overload error leaving it is a drop.
    """
    clock = FakeClock()
    policy = AdaptiveConcurrency(AIMD(initial=1, max_limit=3), clock=clock)
    async with policy:
        assert policy.statistics().in_flight == 1
        await clock.sleep(0.1)
    assert policy.limit == 2
    with pytest.raises(TimeoutError):
        async with policy:
            raise TimeoutError
    stats = policy.statistics()
    assert (stats.limit, stats.in_flight, stats.dropped) == (1, 0, 1)


async def test_async_with_left_in_another_task_frees_the_slot() -> None:
    """
    A block entered in one task and left in another (an AsyncExitStack closed by
    another task) frees its slot without a sample, rather than fail with KeyError
    and keep the slot for good.
    """
    policy = AdaptiveConcurrency(AIMD(initial=1, max_limit=1), clock=FakeClock())
    stack = contextlib.AsyncExitStack()
    await asyncio.create_task(stack.enter_async_context(policy))
    assert policy.in_flight == 1
    await stack.aclose()
    assert policy.in_flight == 0
    assert await policy.call(asyncio.sleep, 0, "served") == "served"


async def test_the_limit_is_exported_as_a_gauge() -> None:
    """
    A tracked AdaptiveConcurrency exports its current limit (and slots) through the
    Prometheus integration's bulkhead gauges, read at scrape time, and its rejection
    counter starts at 0 under its own reason.
    """
    registry = CollectorRegistry()
    policy = AdaptiveConcurrency(AIMD(initial=3), name="db", clock=FakeClock())
    ResilienceMetrics(registry).track(policy)
    assert registry.get_sample_value("resilient_bulkhead_max_concurrent", {"policy": "db"}) == 3
    refused = {"kind": "adaptive_concurrency", "policy": "db", "reason": "concurrency_limit"}
    assert registry.get_sample_value("resilient_rejections_total", refused) == 0
    with pytest.raises(TimeoutError):
        await policy.call(Calls(policy, FakeClock()).body, 0, TimeoutError())
    assert registry.get_sample_value("resilient_bulkhead_max_concurrent", {"policy": "db"}) == 2


def test_algorithms_show_their_settings_and_ignore_empty_samples() -> None:
    """
    The algorithms' reprs show their parameters; Gradient2 exposes its long-term latency
    and leaves the limit alone on a zero-latency sample (a clock that did not move);
    AIMD leaves it alone while less than half of it is in use.
    """
    assert repr(AIMD()) == (
        "AIMD(initial=20, min_limit=1, max_limit=200, backoff=0.9, timeout=None)"
    )
    gradient = Gradient2()
    assert repr(gradient) == (
        "Gradient2(initial=20, min_limit=1, max_limit=200, smoothing=0.2, tolerance=1.5,"
        " long_window=600, queue_size=4)"
    )
    assert gradient.update(20, 0.0, 20, dropped=False) == 20
    assert gradient.long_rtt() == 0
    gradient.update(20, 0.5, 20, dropped=False)
    assert gradient.long_rtt() == 0.5
    assert AIMD().update(20, 0.1, 9, dropped=False) == 20
    with pytest.raises(TypeError, match=r"Gradient2\(tolerance="):
        Gradient2(tolerance="2")  # type: ignore[arg-type]


class _Broken(LimitAlgorithm):
    """
    A user's algorithm that raises, or returns a limit outside its own bounds.
    """

    def __init__(self, answer: int | None) -> None:
        super().__init__("Broken", 2, 1, 4)
        self.answer = answer

    def update(self, limit: int, rtt: float, in_flight: int, dropped: bool) -> int:
        if self.answer is None:
            raise RuntimeError("update failed")
        return self.answer


async def test_an_algorithm_that_raises_does_not_keep_the_slot() -> None:
    """
    The algorithm's error reaches the caller, and the call's slot is freed all the same.
    """
    policy = AdaptiveConcurrency(_Broken(None), clock=FakeClock())
    with pytest.raises(RuntimeError, match="update failed"):
        await policy.call(asyncio.sleep, 0)
    assert policy.in_flight == 0


@pytest.mark.parametrize(("answer", "limit"), [(0, 1), (-5, 1), (99, 4)])
async def test_a_limit_outside_the_algorithms_bounds_is_clamped(answer: int, limit: int) -> None:
    """
    A limit an algorithm returns beyond its min_limit..max_limit is held to them: a
    limit of 0 would refuse every call from then on, with no sample to raise it.
    """
    policy = AdaptiveConcurrency(_Broken(answer), clock=FakeClock())
    await policy.call(asyncio.sleep, 0)
    assert policy.limit == limit
    assert await policy.call(asyncio.sleep, 0, "still served") == "still served"


@pytest.mark.parametrize(
    ("build", "error", "says"),
    [
        (
            lambda: AdaptiveConcurrency(max_wait=1.0),
            ValueError,
            r"^AdaptiveConcurrency\(max_wait=1\.0\)",
        ),
        (lambda: AdaptiveConcurrency(Vegas), TypeError, r"instance \(such as Vegas\(\)\)"),  # type: ignore[arg-type]
        (lambda: AIMD(backoff=1.5), ValueError, r"must be in \(0, 1\) "),
        (lambda: AIMD(backoff=0), ValueError, r"must be in \(0, 1\) "),
        (lambda: AIMD(backoff=1), ValueError, r"must be in \(0, 1\) "),
    ],
)
def test_error_messages_say_how_to_fix_the_mistake(build: object, error: type, says: str) -> None:
    """
    A newcomer's mistakes are named in this class's terms: max_wait without a queue names
    AdaptiveConcurrency (not the Bulkhead it builds on), passing the algorithm class asks
    for an instance, and every bad AIMD backoff gives the one range that works, (0, 1).
    """
    with pytest.raises(error, match=says):
        build()  # type: ignore[operator]
