"""
What observing a policy costs per call: bare policies against observed ones.

    python -m benchmarks.observability -o /tmp/b1.json    # pyperf; then benchmarks.report
    python -m benchmarks.observability --quick --md /tmp/b.md

Each case is a workload (`Retry(3)`, or the Timeout + Retry + CircuitBreaker + Bulkhead
pipeline, around the no-op coroutine) seen by one observer: nobody (``bare``); a global
hook hearing calls as a `resilient.CallListener` and doing nothing (the core's cost of
reporting a call, the floor any listener pays); a global hook wanting the call events
and doing nothing (what events would cost instead); `ResilienceMetrics` installed
globally; the same passed as the policies' own hook; and the floor of the same counting
with prometheus_client's own metrics (a cached Counter child's ``inc()`` and Histogram
child's ``observe()`` per layer and call, as the policies' own hook). A global hook is
switched on just around its case's batches, so it never observes another case. Then the
pieces one observed layer pays for, each timed alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

import resilient
from benchmarks import _perf
from benchmarks._perf import Case, noop, synchronous
from benchmarks.overhead import _stack
from benchmarks.report import Figure, Report
from resilient import CallCancelled, CallFailed, CallSucceeded, Event, Policy, Retry, add_hook
from resilient.integrations.prometheus import DEFAULT_BUCKETS, ResilienceMetrics

WORKLOADS: dict[str, Callable[[], Policy]] = {
    "Retry(attempts=3)": lambda: Retry(3),
    "Timeout + Retry + CircuitBreaker + Bulkhead": lambda: _stack(resilient, "s"),
}


class NoopListener:
    """
    Hears what `ResilienceMetrics` hears, the same way, and does nothing.

    No ``call_started``, as `ResilienceMetrics`' listener has none: one that returned
    None would tell the policy it wants no end, and the policy would skip the clock
    reads and the end this row is meant to measure.
    """

    event_types = ResilienceMetrics.event_types

    def __call__(self, _event: Event) -> None:
        return None

    def listen_calls(self, _policy: Policy) -> NoopListener:
        return self

    def call_ended(self, _token: None, _duration: float, _error: BaseException | None) -> None:
        return None


class NoopEventHook:
    """Wants the call events (not CallStarted) and does nothing: their own cost."""

    event_types = frozenset({CallSucceeded, CallFailed, CallCancelled})

    def __call__(self, _event: Event) -> None:
        return None


class ClientListener:
    """
    The floor of counting with prometheus_client's own metrics: per policy, a cached
    ``Counter`` child and a cached ``Histogram`` child (the same buckets), and per call
    one ``inc()`` and one ``observe()``, heard as a `CallListener` like `ResilienceMetrics`.
    """

    event_types = ResilienceMetrics.event_types

    def __init__(self) -> None:
        registry = CollectorRegistry()
        self._calls = Counter("c", "c", ("kind", "policy", "outcome"), registry=registry)
        self._seconds = Histogram(
            "h", "h", ("kind", "policy"), registry=registry, buckets=DEFAULT_BUCKETS
        )

    def __call__(self, _event: Event) -> None:
        return None

    def listen_calls(self, policy: Policy) -> _ClientCalls:
        return _ClientCalls(
            self._calls.labels(policy.kind, policy.name, "success"),
            self._seconds.labels(policy.kind, policy.name),
        )


class _ClientCalls:
    __slots__ = ("_inc", "_observe")

    def __init__(self, counter: Any, histogram: Any) -> None:
        self._inc, self._observe = counter.inc, histogram.observe

    def call_ended(self, _token: None, duration: float, _error: BaseException | None) -> None:
        self._inc()
        self._observe(duration)


def _counted(
    make: Callable[[], Policy], own_hook: bool
) -> tuple[Callable[[], Any], Callable[[], Callable[[], None]] | None]:
    """The workload reporting to a fresh `ResilienceMetrics`; checks a call is counted."""
    registry = CollectorRegistry()
    metrics = ResilienceMetrics(registry)
    policy = make()
    if own_hook:
        policy.add_hook(metrics)  # a pipeline adds it to every member

    async def build() -> Any:
        fn = policy(noop)
        undo = None if own_hook else metrics.install()
        await fn()
        if undo is not None:
            undo()
        labels = {"kind": "retry", "policy": f"{noop.__module__}.noop", "outcome": "success"}
        if not registry.get_sample_value("resilient_calls_total", labels):
            raise RuntimeError("the test call was not counted")
        return fn

    return build, (None if own_hook else metrics.install)


def _workload_cases(label: str, make: Callable[[], Policy]) -> list[Case]:
    listener, events = NoopListener(), NoopEventHook()
    prom, prom_on = _counted(make, own_hook=False)
    prom_hooks, _ = _counted(make, own_hook=True)
    return [
        Case(f"{label} / bare", lambda: make()(noop), "no hook: policies report nothing"),
        Case(f"{label} / no-op listener", lambda: make()(noop),
             "a global hook hearing calls as a CallListener, doing nothing",
             activate=lambda: add_hook(listener)),
        Case(f"{label} / no-op event hook", lambda: make()(noop),
             "a global hook wanting the call events, doing nothing",
             activate=lambda: add_hook(events)),
        Case(f"{label} / prometheus", prom, "ResilienceMetrics, metrics.install()",
             activate=prom_on),
        Case(f"{label} / prometheus hooks=", prom_hooks,
             "ResilienceMetrics as the policies' own hook"),
        Case(f"{label} / prometheus_client floor", lambda: _hooked(make, ClientListener()),
             "a cached Counter child inc() + Histogram child observe() per layer, own hook"),
    ]  # fmt: skip


def _hooked(make: Callable[[], Policy], hook: object) -> Callable[[], Any]:
    policy = make()
    policy.add_hook(hook)  # type: ignore[arg-type]  # a hook with listen_calls
    return policy(noop)


def _pieces() -> dict[str, tuple[Callable[[], object], str]]:
    event = CallSucceeded(kind="retry", name="retry", time=0.0, duration=0.001)
    hook, metrics = NoopEventHook(), ResilienceMetrics(CollectorRegistry())
    listener = metrics.listen_calls(Retry(3))
    registry = CollectorRegistry()
    counter = Counter("c", "c", ("kind", "policy", "outcome"), registry=registry)
    child = counter.labels("retry", "retry", "success")
    observe = Histogram("h", "h", ("kind", "policy"), registry=registry).labels("r", "r")
    return {
        "listener counts one success": (lambda: listener.call_ended(None, 0.001, None),
                                        "ResilienceMetrics' listener: call_ended(...)"),
        "a clock read": (time.monotonic, "time.monotonic(), twice per layer"),
        "build one CallSucceeded event": (lambda: CallSucceeded(
            kind="retry", name="retry", time=0.0, duration=0.001), "instead of a listener"),
        "a no-op hook called with it": (lambda: hook(event), "hook(event)"),
        "ResilienceMetrics counts it": (lambda: metrics(event), "metrics(event)"),
        "prometheus_client Counter child inc()": (child.inc, "cached child, instead"),
        "prometheus_client Histogram child observe()": (lambda: observe.observe(0.001),
                                                        "cached child, instead"),
        "prometheus_client Counter.labels(...)": (
            lambda: counter.labels("retry", "retry", "success"), "label lookup"),
    }  # fmt: skip


def cases() -> list[Case]:
    """Every workload under every observer, then the pieces."""
    out = [c for label, make in WORKLOADS.items() for c in _workload_cases(label, make)]
    out += [
        Case(f"piece: {name}", _piece(name), api, timer=synchronous, check=False)
        for name, (_, api) in _pieces().items()
    ]
    return out


def _piece(name: str) -> Callable[[], Callable[[], object]]:
    return lambda: _pieces()[name][0]


def _figures() -> list[Figure]:
    out = []
    for label in WORKLOADS:
        bare = f"{label} / bare"
        out += [
            Figure(f"{label}: Prometheus adds, ns", (f"{label} / prometheus", bare), (), 3e-6),
            Figure(f"{label}: of which the core's report", (f"{label} / no-op listener", bare)),
            Figure(f"{label}: Prometheus hooks= adds", (f"{label} / prometheus hooks=", bare)),
            Figure(f"{label}: call events would add", (f"{label} / no-op event hook", bare)),
            Figure(
                f"{label}: Prometheus hooks= / prometheus_client floor",
                (f"{label} / prometheus hooks=", bare),
                ((f"{label} / prometheus_client floor", bare),),
            ),
        ]
    return out


PAGE = Report(
    "observability",
    "Observability: what metrics add per call",
    None,
    _figures(),
    notes="What bounds it: every observed layer wraps the call in one more coroutine"
    " frame, reads the clock twice and calls the listener's `call_ended` once; that is the"
    " no-op listener row, paid per layer, so the four-layer pipeline pays it four times."
    " No event object is built for a call: hooks that define `listen_calls` hear calls"
    " through plain method calls. The Prometheus listener adds to plain per-thread"
    " counters and builds metric families only when scraped. The floor of counting with"
    " prometheus_client's own metrics instead is the `prometheus_client floor` row: a"
    " cached Counter child's `inc()` plus a Histogram child's `observe()` per layer, each"
    " taking a lock, cost more than the whole layer does here (see the pieces).",
)


if __name__ == "__main__":
    raise SystemExit(_perf.main("benchmarks.observability", cases, PAGE))
