"""
Tests for `resilient.integrations.prometheus.ResilienceMetrics`: every metric moves as it
should for real policy calls (fake clock, instant retries), and the exposition is valid.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Iterator
from unittest.mock import patch

import pytest
import tenacity
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import resilient._engine.events
import resilient._engine.policy
from resilient import (
    Bulkhead,
    BulkheadFullError,
    CallCancelled,
    CallFailed,
    CallStarted,
    CallSucceeded,
    CircuitBreaker,
    CircuitOpenError,
    Event,
    Fallback,
    Hedge,
    Hook,
    Retry,
    RetryBudget,
    Timeout,
    TimeoutExceeded,
    pipeline,
)
from resilient.integrations._prometheus_export import metric_names
from resilient.integrations.prometheus import DEFAULT_BUCKETS, ResilienceMetrics
from resilient.testing import FakeClock, instant_retries
from tests._aio import settle
from tests.integrations.prometheus._promql import (
    DASHBOARD,
    dashboard_queries,
    doc_queries,
    exported_names,
    metric_names_in,
)
from tests.policies.test_fusion import CHAINED, FUSED, Kinds


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> ResilienceMetrics:
    return ResilienceMetrics(registry)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def calls(registry: CollectorRegistry, kind: str, policy: str, outcome: str) -> float | None:
    return sample(registry, "resilient_calls_total", kind=kind, policy=policy, outcome=outcome)


def observed(registry: CollectorRegistry, kind: str, policy: str) -> float | None:
    return sample(registry, "resilient_call_duration_seconds_count", kind=kind, policy=policy)


async def ok() -> str:
    return "ok"


async def boom() -> str:
    raise ValueError("boom")


# -- calls and durations -----------------------------------------------------------


async def test_success_is_counted_and_its_duration_observed(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """A successful call counts as success and lands in the bucket its duration falls in."""
    clock = FakeClock()
    retry = Retry(3, name="inventory", clock=clock, hooks=[metrics])
    await retry.call(clock.sleep, 0.2)
    assert calls(registry, "retry", "inventory", "success") == 1
    assert calls(registry, "retry", "inventory", "failure") == 0
    bucket = "resilient_call_duration_seconds_bucket"
    labels = {"kind": "retry", "policy": "inventory"}
    assert sample(registry, bucket, le="0.1", **labels) == 0
    assert sample(registry, bucket, le="0.25", **labels) == 1
    assert sample(registry, bucket, le="+Inf", **labels) == 1
    assert sample(registry, "resilient_call_duration_seconds_sum", **labels) == pytest.approx(0.2)


@pytest.mark.parametrize("failing", [False, True], ids=["success", "failure"])
async def test_a_call_lasting_exactly_a_bound_is_in_that_bucket(
    registry: CollectorRegistry, metrics: ResilienceMetrics, failing: bool
) -> None:
    """Through real calls, a duration equal to a bucket's bound counts in that bucket
    (le means <=), for every default bound, whether the call answers or fails."""

    async def lasting(clock: FakeClock, seconds: float) -> str:
        await clock.sleep(seconds)
        if failing:
            raise ValueError("boom")
        return "ok"

    for bound in DEFAULT_BUCKETS:
        clock = FakeClock()  # from 0: the measured duration is the bound, to the bit
        breaker = CircuitBreaker(name="db", clock=clock, hooks=[metrics])
        with contextlib.suppress(ValueError):
            await breaker.call(lasting, clock, bound)
    labels = {"kind": "circuit_breaker", "policy": "db"}
    for count, text in enumerate(bucket_labels(), start=1):
        assert sample(registry, "resilient_call_duration_seconds_bucket", le=text, **labels) == (
            count
        )
    assert calls(registry, "circuit_breaker", "db", "failure" if failing else "success") == len(
        DEFAULT_BUCKETS
    )


async def test_failure_is_counted_and_observed(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """A call that raises counts as failure and its duration is observed."""
    breaker = CircuitBreaker(name="db", clock=FakeClock(), hooks=[metrics])
    with pytest.raises(ValueError, match="boom"):
        await breaker.call(boom)
    assert calls(registry, "circuit_breaker", "db", "failure") == 1
    assert calls(registry, "circuit_breaker", "db", "success") == 0
    assert observed(registry, "circuit_breaker", "db") == 1


async def test_retries_are_counted_and_the_call_succeeds_once(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """Two failed attempts then a success: two retries, one successful call."""
    attempts = 0

    async def flaky() -> str:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise ConnectionError("reset")
        return "ok"

    retry = Retry(3, name="pricing", clock=FakeClock(), hooks=[metrics])
    with instant_retries():
        assert await retry.call(flaky) == "ok"
    assert sample(registry, "resilient_retries_total", policy="pricing") == 2
    assert calls(registry, "retry", "pricing", "success") == 1
    assert calls(registry, "retry", "pricing", "failure") == 0


async def test_retry_budget_rejection_has_its_reason(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """A retry refused by an empty budget counts as a retry_budget rejection."""
    clock = FakeClock()
    budget = RetryBudget(0.01, min_per_second=0.0, clock=clock)
    retry = Retry(3, name="search", budget=budget, clock=clock, hooks=[metrics])
    with instant_retries(), pytest.raises(ValueError, match="boom"):
        await retry.call(boom)
    reason = {"kind": "retry", "policy": "search", "reason": "retry_budget"}
    assert sample(registry, "resilient_rejections_total", **reason) == 1
    assert sample(registry, "resilient_retries_total", policy="search") is None
    assert calls(registry, "retry", "search", "failure") == 1


# -- circuit breaker -----------------------------------------------------------------


async def test_breaker_rejections_transitions_and_state(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """Open, calls are rejected (not observed) and the gauge says open; a good probe closes it."""
    clock = FakeClock()
    breaker = CircuitBreaker(
        name="inventory", failure_threshold=2, reset_timeout=30, clock=clock, hooks=[metrics]
    )
    for _ in range(2):
        with pytest.raises(ValueError, match="boom"):
            await breaker.call(boom)
    with pytest.raises(CircuitOpenError):
        await breaker.call(ok)

    def state(name: str) -> float | None:
        return sample(registry, "resilient_circuit_state", policy="inventory", state=name)

    assert (state("closed"), state("open"), state("half_open")) == (0, 1, 0)
    reason = {"kind": "circuit_breaker", "policy": "inventory", "reason": "circuit_open"}
    assert sample(registry, "resilient_rejections_total", **reason) == 1
    assert calls(registry, "circuit_breaker", "inventory", "rejected") == 1
    assert observed(registry, "circuit_breaker", "inventory") == 2  # the failures only

    clock.advance(30)
    assert await breaker.call(ok) == "ok"
    assert (state("closed"), state("open"), state("half_open")) == (1, 0, 0)
    transitions = "resilient_circuit_transitions_total"
    for old, new in (("closed", "open"), ("open", "half_open"), ("half_open", "closed")):
        labels = {"policy": "inventory", "from_state": old, "to_state": new}
        assert sample(registry, transitions, **labels) == 1, (old, new)


async def test_tracked_breaker_reports_live_state_before_any_event(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """A tracked breaker shows closed at once, and open after trip() (which calls nothing)."""
    breaker = CircuitBreaker(name="payments", clock=FakeClock())
    metrics.track(breaker)
    labels = {"policy": "payments"}
    assert sample(registry, "resilient_circuit_state", state="closed", **labels) == 1
    breaker.trip()  # no hook on this breaker: only track() can know
    assert sample(registry, "resilient_circuit_state", state="open", **labels) == 1
    assert sample(registry, "resilient_circuit_state", state="closed", **labels) == 0


# -- bulkhead ------------------------------------------------------------------------


async def test_bulkhead_gauges_and_rejections(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """In flight and queued follow the bulkhead; a full one rejects with bulkhead_full."""
    bulkhead = Bulkhead(1, max_queue=1, name="reports", hooks=[metrics])
    metrics.track(bulkhead)
    gate = asyncio.Event()
    holder = asyncio.create_task(bulkhead.call(gate.wait))
    waiter = asyncio.create_task(bulkhead.call(ok))
    await settle(10)

    def gauge(name: str) -> float | None:
        return sample(registry, f"resilient_bulkhead_{name}", policy="reports")

    assert (gauge("in_flight"), gauge("queued"), gauge("max_concurrent")) == (1, 1, 1)
    with pytest.raises(BulkheadFullError):
        await bulkhead.call(ok)
    reason = {"kind": "bulkhead", "policy": "reports", "reason": "bulkhead_full"}
    assert sample(registry, "resilient_rejections_total", **reason) == 1
    assert calls(registry, "bulkhead", "reports", "rejected") == 1
    gate.set()
    assert (await holder, await waiter) == (True, "ok")
    assert (gauge("in_flight"), gauge("queued")) == (0, 0)
    assert calls(registry, "bulkhead", "reports", "success") == 2


# -- timeout, hedge, fallback, cancellation ---------------------------------------------


async def test_timeout_counts_a_timeout_outcome(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """An overrun counts in timeouts_total and as outcome timeout, with its duration."""
    clock = FakeClock(auto_advance=False)
    timeout = Timeout(1.0, name="quote", clock=clock, hooks=[metrics])
    task = asyncio.create_task(timeout.call(clock.sleep, 5))
    await settle(10)
    clock.advance(1.0)
    with pytest.raises(TimeoutExceeded):
        await task
    assert sample(registry, "resilient_timeouts_total", policy="quote") == 1
    assert calls(registry, "timeout", "quote", "timeout") == 1
    assert calls(registry, "timeout", "quote", "failure") == 0
    assert sample(
        registry, "resilient_call_duration_seconds_sum", kind="timeout", policy="quote"
    ) == pytest.approx(1.0)


async def test_hedge_sent_is_counted(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """A slow first attempt makes the hedge start a second one: hedges_total is 1."""
    clock = FakeClock(auto_advance=False)
    hedge = Hedge(0.5, name="search", clock=clock, hooks=[metrics])
    started = 0

    async def attempt() -> str:
        nonlocal started
        started += 1
        if started == 1:
            await clock.sleep(10)
        return f"attempt {started}"

    task = asyncio.create_task(hedge.call(attempt))
    await settle(10)
    clock.advance(0.5)
    assert await task == "attempt 2"
    assert sample(registry, "resilient_hedges_total", policy="search") == 1
    assert calls(registry, "hedge", "search", "success") == 1


async def test_fallback_is_counted_and_the_call_succeeds(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """A fallback that answers counts in fallbacks_total; the call itself is a success."""
    fallback = Fallback("cached", name="profile", hooks=[metrics])
    assert await fallback.call(boom) == "cached"
    assert sample(registry, "resilient_fallbacks_total", policy="profile") == 1
    assert calls(registry, "fallback", "profile", "success") == 1


async def test_cancelled_call_is_counted_but_not_observed(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """Cancelling the caller counts as cancelled, never as failure, and adds no duration."""
    retry = Retry(3, name="slow", hooks=[metrics])
    task = asyncio.create_task(retry.call(asyncio.Event().wait))
    await settle(10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls(registry, "retry", "slow", "cancelled") == 1
    assert calls(registry, "retry", "slow", "failure") == 0
    assert observed(registry, "retry", "slow") == 0


# -- install, track, construction ------------------------------------------------------


async def test_install_counts_every_policy_until_removed(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """Installed, any policy is counted once (even if installed twice); removed, none is."""
    remove = metrics.install()
    try:
        assert metrics.install() is remove  # a second install adds nothing
        await Retry(2, name="global").call(ok)
    finally:
        remove()
    await Retry(2, name="global").call(ok)
    assert calls(registry, "retry", "global", "success") == 1
    assert "installed" not in repr(metrics)
    again = metrics.install()
    try:
        remove()  # the first installation's remover is spent: it must not undo this one
        await Retry(2, name="global").call(ok)
    finally:
        again()
    assert calls(registry, "retry", "global", "success") == 2


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _counted_through(kinds: Kinds) -> Samples:
    # One script of calls (successes, retried failures, timeouts, queueing, rejections)
    # through Timeout, Retry, CircuitBreaker, Bulkhead under globally installed metrics.
    registry = CollectorRegistry()
    clock = FakeClock()
    policy = pipeline(
        kinds.timeout(1.0, name="t", clock=clock),
        kinds.retry(3, wait=tenacity.wait_fixed(0.1), name="r", clock=clock),
        kinds.breaker(failure_threshold=6, reset_timeout=10.0, name="b", clock=clock),
        kinds.bulkhead(1, max_queue=1, name="k", clock=clock),
    )
    assert (policy._fusion is not None) is (kinds is FUSED)

    async def work(what: str) -> str:
        await clock.sleep(0.01)
        if what == "fail":
            raise ConnectionError("down")
        if what == "slow":
            await clock.sleep(5.0)
        return what

    remove = ResilienceMetrics(registry).install()
    try:
        for script in (["ok", "fail", "ok"], ["slow", "ok", "ok"], ["fail"] * 3, ["ok"]):
            await asyncio.gather(
                *(policy.call(work, what) for what in script), return_exceptions=True
            )
            await asyncio.gather(*(policy(work)(what) for what in script), return_exceptions=True)
    finally:
        remove()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.name.startswith("resilient_")
    }


async def test_a_fused_pipeline_is_counted_as_its_chained_twin() -> None:
    """Under `ResilienceMetrics` a fused pipeline calls each policy's listener from its
    one frame: every policy's calls, outcomes and durations come out as those of the
    same policies chained layer by layer."""
    fused = await _counted_through(FUSED)
    assert fused == await _counted_through(CHAINED)
    outcomes = {
        (dict(labels)["kind"], dict(labels)["outcome"])
        for (name, labels), value in fused.items()
        if name == "resilient_calls_total" and value
    }
    assert {("timeout", "timeout"), ("retry", "failure"), ("bulkhead", "rejected")} <= outcomes
    assert {kind for kind, outcome in outcomes if outcome == "success"} == {
        "timeout",
        "retry",
        "circuit_breaker",
        "bulkhead",
    }


def test_events_it_does_not_count_are_ignored(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """An event outside event_types handed to it directly changes no series."""
    before = generate_latest(registry)
    metrics(CallStarted(kind="retry", name="r", time=0.0))
    assert generate_latest(registry) == before


async def test_calls_are_counted_without_building_events(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """Policies report calls to the hook's listener: no call event is built or delivered."""
    delivered: list[object] = []
    original = resilient._engine.events.deliver

    def spy(hooks: tuple[Hook, ...], event: Event) -> None:
        delivered.append(event)
        original(hooks, event)

    with patch.object(resilient._engine.policy, "deliver", spy):
        await Retry(3, name="quiet", hooks=[metrics]).call(ok)
    assert delivered == []
    labels = {"kind": "retry", "policy": "quiet", "outcome": "success"}
    assert sample(registry, "resilient_calls_total", **labels) == 1
    assert CallStarted not in ResilienceMetrics.event_types
    assert CallSucceeded not in ResilienceMetrics.event_types


async def test_track_pipeline_exports_members_at_zero(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """Tracking a pipeline tracks its breaker and bulkhead; their counters start at 0."""
    policy = pipeline(
        Timeout(2.0, name="t"), Retry(3, name="r"), CircuitBreaker(name="b"), Bulkhead(4, name="k")
    )
    metrics.track(policy)
    metrics.track(policy)  # again: nothing doubles
    assert sample(registry, "resilient_bulkhead_max_concurrent", policy="k") == 4
    assert sample(registry, "resilient_circuit_state", policy="b", state="closed") == 1
    reason = {"kind": "circuit_breaker", "policy": "b", "reason": "circuit_open"}
    assert sample(registry, "resilient_rejections_total", **reason) == 0
    assert sample(registry, "resilient_retries_total", policy="r") == 0
    assert sample(registry, "resilient_timeouts_total", policy="t") == 0
    assert calls(registry, "retry", "r", "success") == 0
    assert "tracked=4" in repr(metrics)


def test_track_rejects_clashing_names_and_non_policies(metrics: ResilienceMetrics) -> None:
    """Two breakers with one name would export clashing series: refused, as is a non-policy."""
    metrics.track(CircuitBreaker(name="db"))
    with pytest.raises(ValueError, match="circuit_breaker named 'db'"):
        metrics.track(CircuitBreaker(name="db"))
    metrics.track(Bulkhead(1, name="db"))  # another kind may share the name
    with pytest.raises(TypeError, match="not a policy"):
        metrics.track("db")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"registry": None}, TypeError, "CollectorRegistry"),
        ({"namespace": "bad-name"}, ValueError, "namespace"),
        ({"buckets": [1.0, 0.5]}, ValueError, "buckets"),
        ({"buckets": []}, ValueError, "buckets"),
        ({"buckets": [0.0, 1.0]}, ValueError, "buckets"),
        ({"buckets": ["fast", "slow"]}, ValueError, "buckets"),
    ],
)
def test_misconfiguration_raises_at_construction(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    """A missing registry, a bad namespace or unordered buckets fail at construction."""
    arguments: dict[str, object] = {"registry": CollectorRegistry(), **kwargs}
    with pytest.raises(error, match=match):
        ResilienceMetrics(**arguments)  # type: ignore[arg-type]


def test_one_namespace_per_registry(registry: CollectorRegistry) -> None:
    """A second ResilienceMetrics with the same names on one registry is refused."""
    ResilienceMetrics(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        ResilienceMetrics(registry)
    other = ResilienceMetrics(registry, namespace="edge", buckets=[0.1, 1.0, float("inf")])
    assert other.buckets == (0.1, 1.0)


async def test_exposition_has_every_family_with_its_type(registry: CollectorRegistry) -> None:
    """The text exposition parses and holds exactly the documented families."""
    metrics = ResilienceMetrics(registry, namespace="app")
    await Retry(2, name="r", hooks=[metrics]).call(ok)
    parsed = {
        family.name: family.type
        for family in text_string_to_metric_families(generate_latest(registry).decode())
    }
    expected = {name.removesuffix("_total") for name in metric_names("app")}
    assert set(parsed) == expected
    assert parsed["app_calls"] == "counter"
    assert parsed["app_call_duration_seconds"] == "histogram"
    assert parsed["app_circuit_state"] == "gauge"


# -- threads and the histogram's arithmetic --------------------------------------------


async def test_calls_from_other_threads_add_up(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """Policies on other threads' event loops count into the same series."""
    retry = Retry(2, name="shared", hooks=[metrics])

    def worker() -> None:
        for _ in range(30):
            asyncio.run(retry.call(ok))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for _ in range(20):
        await retry.call(ok)
    for thread in threads:
        thread.join()
    assert calls(registry, "retry", "shared", "success") == 110
    assert observed(registry, "retry", "shared") == 110


def test_short_lived_threads_leave_no_shards_and_lose_no_calls(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """
    5,000 threads that each count two calls and end leave no per-thread shard behind
    (each is folded into the retired totals as its thread ends), and every call is
    counted exactly once: after every batch the totals are exact, and a scraper
    running meanwhile never sees them fall or overshoot.
    """
    listener = metrics.listen_calls(Retry(2, name="short"))
    failed = CallFailed(kind="retry", name="short", time=0.0, duration=0.2, error=OSError())
    batches, per_batch = 100, 50
    done = threading.Event()
    seen: list[int] = []

    def worker() -> None:
        listener.call_ended(None, 0.001, None)  # reported like a policy's call
        metrics(failed)  # and as an event fed by hand

    def scraper() -> None:
        while not done.wait(0.001):  # pacing, not synchronisation: leave the GIL to them
            seen.append(sum(metrics.snapshot().calls["retry", "short"][0]))

    metrics(failed)  # the series exists before the scraper reads it
    watching = threading.Thread(target=scraper)
    watching.start()
    try:
        for batch in range(1, batches + 1):
            threads = [threading.Thread(target=worker) for _ in range(per_batch)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert calls(registry, "retry", "short", "success") == batch * per_batch
            assert calls(registry, "retry", "short", "failure") == batch * per_batch + 1
    finally:
        done.set()
        watching.join()
    assert observed(registry, "retry", "short") == 2 * batches * per_batch + 1
    assert len(metrics._shards) <= 1  # this thread's (it fed an event); none of theirs
    assert "shards=1" in repr(metrics)
    assert seen == sorted(seen)
    assert len(seen) > 1
    assert seen[-1] <= 2 * batches * per_batch + 1


def test_call_events_fed_by_hand_count_like_reported_calls(
    registry: CollectorRegistry, metrics: ResilienceMetrics
) -> None:
    """CallFailed and CallCancelled handed to the hook count as failure/timeout/cancelled."""
    metrics(CallFailed(kind="retry", name="p", time=0.0, duration=0.2, error=OSError()))
    metrics(
        CallFailed(kind="retry", name="p", time=0.0, duration=0.3, error=TimeoutExceeded("p", 1.0))
    )
    metrics(CallCancelled(kind="retry", name="p", time=0.0, duration=9.0))
    assert calls(registry, "retry", "p", "failure") == 1
    assert calls(registry, "retry", "p", "timeout") == 1
    assert calls(registry, "retry", "p", "cancelled") == 1
    assert observed(registry, "retry", "p") == 2  # the cancelled call's duration is not


def durations() -> st.SearchStrategy[list[float]]:
    return st.lists(st.floats(min_value=0.0, max_value=100.0), max_size=30)


@given(durations())
def test_buckets_count_every_duration_at_or_below_their_bound(values: list[float]) -> None:
    """Each bucket holds the durations <= its bound; +Inf and _count hold them all."""
    registry = CollectorRegistry()
    metrics = ResilienceMetrics(registry)
    for seconds in values:
        metrics(CallSucceeded(kind="retry", name="p", time=0.0, duration=seconds))
    labels = {"kind": "retry", "policy": "p"}
    for bound, text in zip(DEFAULT_BUCKETS, bucket_labels(), strict=True):
        expected = sum(1 for v in values if v <= bound)
        assert sample(registry, "resilient_call_duration_seconds_bucket", le=text, **labels) == (
            expected if values else None
        )
    if values:
        assert sample(registry, "resilient_call_duration_seconds_count", **labels) == len(values)
        total = sample(registry, "resilient_call_duration_seconds_sum", **labels)
        assert total == pytest.approx(sum(values))


def bucket_labels() -> Iterator[str]:
    for bound in DEFAULT_BUCKETS:
        yield repr(float(bound))


# -- the Grafana dashboard and the docs' PromQL -------------------------------------------


def test_metric_name_extraction() -> None:
    """The PromQL scan finds selected metrics and skips functions, labels and numbers."""
    promql = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x="b_c"}[5m])))'
        " / on(job) group_left b_total > 1e3"
    )
    assert metric_names_in(promql) == {"a_bucket", "b_total"}


def test_dashboard_queries_only_use_exported_metrics() -> None:
    """Every panel query selects only metric names the integration exports."""
    exported = exported_names()
    queries = dashboard_queries()
    assert len(queries) >= 10
    for title, promql in queries:
        unknown = metric_names_in(promql) - exported
        assert not unknown, f"panel {title!r} uses {sorted(unknown)}, not exported"


def test_metrics_doc_examples_only_use_exported_metrics() -> None:
    """Every PromQL example in docs/metrics.md selects only exported metric names."""
    exported = exported_names()
    queries = doc_queries()
    assert len(queries) >= 15
    for promql in queries:
        assert metric_names_in(promql) <= exported, promql


def test_dashboard_covers_every_family_and_is_importable() -> None:
    """Each exported family has a panel; the model is Grafana 10's, with a datasource variable."""
    model = json.loads(DASHBOARD.read_text())
    used = set().union(*(metric_names_in(promql) for _, promql in dashboard_queries()))
    families = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in exported_names()}
    covered = {re.sub(r"_(total|bucket|sum|count)$", "", name) for name in used}
    assert families <= covered, f"no panel for {sorted(families - covered)}"
    assert 36 <= model["schemaVersion"] <= 41
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in model["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [panel["id"] for panel in model["panels"]]
    assert len(ids) == len(set(ids))
