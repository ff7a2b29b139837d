"""
Scrape time for `ResilienceMetrics`: tallies and tracked policies become metric families.

Naming follows Prometheus's conventions: base units (seconds), ``_total`` on counters
(prometheus_client appends it to a counter family's name), and only low-cardinality
labels (``kind``, ``policy``, ``outcome``, ``reason``, ``state``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from resilient import Bulkhead, CircuitBreaker, CircuitState, Policy, RejectionReason

from ._prometheus_tally import OUTCOMES, Labels, Snapshot, state_label

__all__ = ["COUNTERS", "STATES", "families", "metric_names"]

STATES: Final = tuple(state_label(state) for state in CircuitState)
"""Values of the ``state`` label of the circuit state gauge."""

COUNTERS: Final = (
    (
        "retries",
        ("policy",),
        "Retries a Retry policy scheduled (attempts after the first).",
    ),
    (
        "rejections",
        ("kind", "policy", "reason"),
        "Calls or retries a policy refused: circuit_open, bulkhead_full, retry_budget,"
        " rate_limited, store_unavailable, concurrency_limit or throttled.",
    ),
    (
        "timeouts",
        ("policy",),
        "Calls a Timeout policy cancelled because their time budget ran out.",
    ),
    (
        "hedges",
        ("policy",),
        "Extra attempts a Hedge policy started because earlier ones were slow or failed.",
    ),
    (
        "fallbacks",
        ("policy",),
        "Failures a Fallback policy answered in place of the call.",
    ),
    (
        "circuit_transitions",
        ("policy", "from_state", "to_state"),
        "Circuit breaker state transitions.",
    ),
)
"""(name suffix, label names, help) of each event counter besides calls."""

# The counter a policy kind's own decisions go to (breakers and bulkheads: rejections).
_COUNTER_OF_KIND: Final = {
    "retry": "retries",
    "timeout": "timeouts",
    "hedge": "hedges",
    "fallback": "fallbacks",
}

_CALLS_HELP = (
    "Calls that left a policy, by outcome: success, failure, rejected (a RejectedError),"
    " timeout (TimeoutExceeded) or cancelled."
)
_DURATION_HELP = (
    "Seconds calls spent inside a policy; rejected and cancelled calls are not observed."
)
_STATE_HELP = "1 for the circuit breaker's current state, 0 for its other states."


def metric_names(namespace: str) -> list[str]:
    """
    The names of every family `ResilienceMetrics` exports, as PromQL sees them.
    """
    names = [f"{namespace}_calls_total", f"{namespace}_call_duration_seconds"]
    names += [f"{namespace}_{suffix}_total" for suffix, _, _ in COUNTERS]
    names += [f"{namespace}_circuit_state"]
    names += [f"{namespace}_bulkhead_{g}" for g in ("in_flight", "queued", "max_concurrent")]
    return names


def families(
    namespace: str,
    bounds: Sequence[float],
    snapshot: Snapshot | None,
    tracked: Iterable[Policy],
) -> Iterator[Metric]:
    """
    Yield every family; with ``snapshot=None``, empty ones (for ``describe()``).

    Args:
        namespace: The metric name prefix.
        bounds: The duration histogram's finite upper bounds.
        snapshot: The tallies to export.
        tracked: Policies whose live state is read now; each also appears with zero
            counts before its first event, so ``rate()`` sees its first increment.
    """
    tracked = list(tracked)
    if snapshot is not None:
        _add_zeros(snapshot, tracked, len(bounds) + 1)
    yield from _call_families(namespace, bounds, snapshot)
    for suffix, labels, help_text in COUNTERS:
        family = CounterMetricFamily(f"{namespace}_{suffix}", help_text, labels=labels)
        for values, count in (snapshot.counters[suffix] if snapshot else {}).items():
            family.add_metric(values, count)
        yield family
    yield _state_family(namespace, snapshot, tracked)
    yield from _bulkhead_families(namespace, tracked if snapshot else ())


def _call_families(
    namespace: str, bounds: Sequence[float], snapshot: Snapshot | None
) -> Iterator[Metric]:
    calls = CounterMetricFamily(
        f"{namespace}_calls", _CALLS_HELP, labels=("kind", "policy", "outcome")
    )
    duration = HistogramMetricFamily(
        f"{namespace}_call_duration_seconds", _DURATION_HELP, labels=("kind", "policy")
    )
    edges = [_le(bound) for bound in bounds] + ["+Inf"]
    for (kind, name), (outcomes, buckets, seconds) in (snapshot.calls if snapshot else {}).items():
        for outcome, count in zip(OUTCOMES, outcomes, strict=True):
            calls.add_metric((kind, name, outcome), count)
        cumulative, running = [], 0
        for edge, count in zip(edges, buckets, strict=True):
            running += count
            cumulative.append((edge, float(running)))
        duration.add_metric((kind, name), cumulative, seconds)
    yield calls
    yield duration


def _state_family(
    namespace: str, snapshot: Snapshot | None, tracked: Sequence[Policy]
) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        f"{namespace}_circuit_state", _STATE_HELP, labels=("policy", "state")
    )
    if snapshot is None:
        return family
    # A tracked breaker's live state wins over the last transition seen in events.
    current = dict(snapshot.states)
    for policy in tracked:
        if isinstance(policy, CircuitBreaker):
            current[policy.name] = state_label(policy.state)
    for name, state in current.items():
        for candidate in STATES:
            family.add_metric((name, candidate), 1.0 if candidate == state else 0.0)
    return family


def _bulkhead_families(namespace: str, tracked: Iterable[Policy]) -> Iterator[Metric]:
    in_flight = GaugeMetricFamily(
        f"{namespace}_bulkhead_in_flight", "Calls holding a bulkhead slot.", labels=("policy",)
    )
    queued = GaugeMetricFamily(
        f"{namespace}_bulkhead_queued", "Callers waiting for a bulkhead slot.", labels=("policy",)
    )
    limit = GaugeMetricFamily(
        f"{namespace}_bulkhead_max_concurrent",
        "Calls a bulkhead allows in flight at once.",
        labels=("policy",),
    )
    for policy in tracked:
        if isinstance(policy, Bulkhead):
            in_flight.add_metric((policy.name,), float(policy.in_flight))
            queued.add_metric((policy.name,), float(policy.queued))
            limit.add_metric((policy.name,), float(policy.max_concurrent))
    yield in_flight
    yield queued
    yield limit


def _add_zeros(snapshot: Snapshot, tracked: Iterable[Policy], buckets: int) -> None:
    for policy in tracked:
        snapshot.calls.setdefault(
            (policy.kind, policy.name), ([0] * len(OUTCOMES), [0] * buckets, 0.0)
        )
        for suffix, labels in _zero_counters(policy):
            snapshot.counters[suffix].setdefault(labels, 0)


def _zero_counters(policy: Policy) -> list[tuple[str, Labels]]:
    name, kind = policy.name, policy.kind
    if isinstance(policy, CircuitBreaker):
        return [("rejections", (kind, name, RejectionReason.CIRCUIT_OPEN.value))]
    if isinstance(policy, Bulkhead):  # AdaptiveConcurrency too: a bulkhead of learned size
        reason = (
            RejectionReason.CONCURRENCY_LIMIT
            if kind == "adaptive_concurrency"
            else RejectionReason.BULKHEAD_FULL
        )
        return [("rejections", (kind, name, reason.value))]
    counter = _COUNTER_OF_KIND.get(kind)
    return [] if counter is None else [(counter, (name,))]


def _le(bound: float) -> str:
    # As prometheus_client writes `le`: "0.005", "1.0", "+Inf".
    return "+Inf" if math.isinf(bound) else repr(float(bound))
