"""
AdaptiveThrottle: the SRE book's rejection probability against a reference model over
a bucketed window, local refusals, what counts as an accept, events, statistics, checks.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient import (
    AdaptiveThrottle,
    AdaptiveThrottleStatistics,
    Rejected,
    RejectedError,
    RejectionReason,
    ThrottledError,
)
from resilient.testing import FakeClock, capture_events


class Overloaded(Exception):
    """The dependency refused the call (a 503 or a 429, say)."""


class NotFound(Exception):
    """An application error: the dependency served the call."""


async def respond(outcome: str) -> str:
    if outcome == "overloaded":
        raise Overloaded
    if outcome == "not_found":
        raise NotFound
    return "ok"


class Model:
    """
    The SRE book's client-side throttle over a window of ten buckets.
    """

    def __init__(self, k: float, window: float) -> None:
        self.k = k
        self.width = window / 10
        self.events: list[tuple[int, bool]] = []  # (bucket number, accepted)

    def probability(self, now: float) -> float:
        current = int(now / self.width)
        live = [accepted for bucket, accepted in self.events if bucket > current - 10]
        requests, accepts = len(live), sum(live)
        return max(0.0, (requests - self.k * accepts) / (requests + 1))

    def record(self, now: float, accepted: bool) -> None:
        self.events.append((int(now / self.width), accepted))


@settings(max_examples=150, deadline=None)
@given(
    k=st.sampled_from([1.0, 1.5, 2.0, 3.0]),
    window=st.sampled_from([10.0, 20.0, 40.0]),
    steps=st.lists(
        st.tuples(
            st.integers(0, 40).map(lambda n: n / 4),
            st.sampled_from(["ok", "overloaded", "not_found"]),
            st.floats(0, 1, exclude_max=True),
        ),
        min_size=1,
        max_size=80,
    ),
)
def test_matches_the_sre_book_model(
    k: float, window: float, steps: list[tuple[float, str, float]]
) -> None:
    """
    Each call is refused exactly when the model's draw falls under
    max(0, (requests - k * accepts) / (requests + 1)) over the window, with refusals
    counted as requests and overload errors (only) as non-accepts.
    """
    model = Model(k, window)
    draws = iter([draw for _, _, draw in steps])

    async def scenario() -> None:
        clock = FakeClock()
        throttle = AdaptiveThrottle(
            k=k, window=window, overload_on=Overloaded, random=lambda: next(draws), clock=clock
        )
        for gap, outcome, draw in steps:
            clock.advance(gap)
            now = clock.monotonic()
            probability = model.probability(now)
            assert throttle.statistics().probability == probability
            if probability > 0 and draw < probability:
                with pytest.raises(ThrottledError) as caught:
                    await throttle.call(respond, outcome)
                assert caught.value.probability == probability
                model.record(now, accepted=False)
                continue
            if probability == 0:
                next(draws)  # the policy draws only when it might refuse
            with contextlib.suppress(Overloaded, NotFound):
                await throttle.call(respond, outcome)
            model.record(now, accepted=outcome != "overloaded")

    asyncio.run(scenario())


async def test_backs_off_a_rejecting_dependency_and_recovers() -> None:
    """
    While every call is refused by the dependency, the local refusal probability climbs
    towards 1; once calls are accepted again it falls back to 0.
    """
    clock = FakeClock()
    throttle = AdaptiveThrottle(window=10, random=lambda: 0.999, clock=clock)
    for _ in range(9):
        with pytest.raises(Overloaded):
            await throttle.call(respond, "overloaded")
    assert throttle.probability() == pytest.approx(0.9)
    for _ in range(20):
        await throttle.call(respond, "ok")
    assert throttle.probability() == 0
    clock.advance(10)  # the window forgets
    assert throttle.statistics() == AdaptiveThrottleStatistics(
        requests=0, accepts=0, probability=0, throttled=0
    )


async def test_refusals_are_rejections_with_an_event() -> None:
    """
    A local refusal raises ThrottledError (a RejectedError, picklable) without calling
    the dependency, and emits Rejected(reason=THROTTLED).
    """
    clock = FakeClock()
    throttle = AdaptiveThrottle(name="pricing", random=lambda: 0.0, clock=clock)
    with pytest.raises(Overloaded):
        await throttle.call(respond, "overloaded")
    called = False

    async def dependency() -> None:
        nonlocal called
        called = True

    with capture_events(Rejected) as events, pytest.raises(ThrottledError) as caught:
        await throttle.call(dependency)
    assert not called
    assert isinstance(caught.value, RejectedError)
    copy = pickle.loads(pickle.dumps(caught.value))  # noqa: S301  # our own bytes
    assert (copy.name, copy.probability) == ("pricing", 0.5)
    assert str(copy) == "'pricing' throttled the call locally (p=0.500)"
    assert [(e.kind, e.reason) for e in events] == [  # type: ignore[attr-defined]
        ("adaptive_throttle", RejectionReason.THROTTLED)
    ]
    assert throttle.statistics().throttled == 1
    assert repr(throttle) == ("<AdaptiveThrottle 'pricing' k=2 window=120s 0/2 accepted, p=0.667>")


async def test_cancelled_calls_are_not_counted() -> None:
    """
    A cancelled call is neither a request nor an accept.
    """
    throttle = AdaptiveThrottle(clock=FakeClock())
    started = asyncio.Event()

    async def hang() -> None:
        started.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(throttle.call(hang))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert throttle.statistics().requests == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "named"),
    [
        ({"k": 0.5}, ValueError, "k"),
        ({"k": math.inf}, ValueError, "k"),
        ({"k": "2"}, TypeError, "k"),
        ({"window": 0}, ValueError, "window"),
        ({"window": 5e-324}, ValueError, "window"),  # its buckets divided by zero
        ({"window": 1e-310}, ValueError, "window"),
        ({"random": 0.5}, TypeError, "random"),
        ({"overload_on": ()}, ValueError, "overload_on"),
    ],
)
def test_bad_parameters_are_named(kwargs: dict[str, object], error: type, named: str) -> None:
    """
    A bad parameter raises at construction, naming it.
    """
    with pytest.raises(error, match=rf"AdaptiveThrottle\({named}="):
        AdaptiveThrottle(**kwargs)  # type: ignore[arg-type]


async def test_inner_rejections_are_not_counted() -> None:
    """
    A RejectedError from an inner policy is neither a request nor a refusal here.
    """
    throttle = AdaptiveThrottle(clock=FakeClock())

    async def refused() -> None:
        raise ThrottledError("inner", 1.0)

    with pytest.raises(ThrottledError):
        await throttle.call(refused)
    assert throttle.statistics().requests == 0
