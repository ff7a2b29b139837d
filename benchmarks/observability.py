"""What observing a policy costs per call: bare policies against observed ones.

Usage (from the repository root)::

    python -m benchmarks.observability            # full run (~1 min), updates docs/benchmarks.md
    python -m benchmarks.observability --quick    # smoke run (seconds), report to a temp dir
    python -m benchmarks.observability --rounds 40 --calls 20000 --json /tmp/obs.json

Every contender is a *workload* (one policy, or the Timeout + Retry + CircuitBreaker +
Bulkhead pipeline, around the harness's no-op coroutine) seen by one *observer*:

* ``bare``: nobody listens, so policies report nothing;
* ``no-op listener``: a global hook that hears calls as a `resilient.CallListener`, as
  `ResilienceMetrics` does, and does nothing: what the core's reporting of a call costs,
  the floor any listener-based integration pays;
* ``no-op event hook``: a global hook that wants the call events (`CallSucceeded`...)
  and does nothing: what hearing calls as event objects would cost instead;
* ``prometheus``: `ResilienceMetrics` installed globally (``metrics.install()``);
* ``prometheus hooks=``: the same, passed to the policies as their own hook.

All contenders are timed in one process and one event loop, in interleaved rounds
shuffled afresh each round (``_harness.time_batch``). A global hook is installed just
before its contender's batch and removed right after, outside the timed region, so it
never observes another contender. Per round, an observer's *added cost* is its ns/call
minus the bare workload's ns/call **in the same round**; the report gives medians and
quartiles over rounds.

Adding a contender (e.g. OpenTelemetry): append an `Observer` to `OBSERVERS`. Its
``build(workload)`` returns an `Observed`: the coroutine function to time, an optional
``activate()`` run before each batch (returning the undo, for global hooks) and an
optional ``check()`` run once after a test call (to prove it really observed the call).
``otel hooks`` would install the otel integration's hook; ``one SDK span directly``
would ignore hooks and wrap the bare policy's call in ``tracer.start_as_current_span``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import statistics
import sys
import time
import timeit
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram

from benchmarks import _params
from benchmarks._cli import add_run_options, report_path, run_size
from benchmarks._docs import command_line, merge_region
from benchmarks._harness import NOOP_RESULT, AsyncFn, noop, time_batch
from benchmarks._observability_report import BEGIN_MARKER, END_MARKER, Row, Run, render
from benchmarks._report import now_utc
from resilient import (
    Bulkhead,
    CallCancelled,
    CallFailed,
    CallSucceeded,
    CircuitBreaker,
    Event,
    Policy,
    Retry,
    Timeout,
    add_hook,
    pipeline,
)
from resilient._engine.events import deliver
from resilient.integrations.prometheus import ResilienceMetrics

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MD = REPO_ROOT / "docs" / "benchmarks.md"
FULL = {"rounds": 30, "calls": 20_000, "warmup": 2}
QUICK = {"rounds": 4, "calls": 2_000, "warmup": 1}


# ------------------------------------------------------------------ contenders


@dataclass(frozen=True)
class Workload:
    """What is called: a fresh policy from `make`, around the no-op coroutine."""

    key: str
    label: str
    layers: int  # policies a call passes, each reporting it once
    make: Callable[[], Policy]


@dataclass(frozen=True)
class Observed:
    """A built contender: the function to time, and how to switch its observer on."""

    fn: AsyncFn
    activate: Callable[[], Callable[[], None]] | None = None
    check: Callable[[], str | None] | None = None


@dataclass(frozen=True)
class Observer:
    """Who watches the workload; ``build`` wires it to a fresh policy."""

    key: str
    label: str
    note: str
    build: Callable[[Workload], Observed]


def _pipeline() -> Policy:
    return pipeline(
        Timeout(_params.TIMEOUT_S),
        Retry(_params.RETRY_ATTEMPTS),
        CircuitBreaker(
            name="bench-stack",
            failure_threshold=_params.FAILURE_THRESHOLD,
            reset_timeout=_params.RESET_TIMEOUT_S,
        ),
        Bulkhead(_params.MAX_CONCURRENT),
    )


WORKLOADS = (
    Workload("retry", f"Retry(attempts={_params.RETRY_ATTEMPTS})", 1, lambda: Retry(3)),
    Workload("pipeline", "Timeout + Retry + CircuitBreaker + Bulkhead", 4, _pipeline),
)


class NoopListener:
    """Hears what `ResilienceMetrics` hears, the same way, and does nothing."""

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


def _bare(workload: Workload) -> Observed:
    return Observed(workload.make()(noop))


def _noop_listener(workload: Workload) -> Observed:
    hook = NoopListener()
    return Observed(workload.make()(noop), activate=lambda: add_hook(hook))


def _noop_event_hook(workload: Workload) -> Observed:
    hook = NoopEventHook()
    return Observed(workload.make()(noop), activate=lambda: add_hook(hook))


def _counted(registry: CollectorRegistry, workload: Workload) -> Callable[[], str | None]:
    def check() -> str | None:
        labels = {"kind": "retry", "policy": "retry", "outcome": "success"}
        seen = registry.get_sample_value("resilient_calls_total", labels)
        return None if seen else f"{workload.key}: the test call was not counted"

    return check


def _prometheus(workload: Workload) -> Observed:
    registry = CollectorRegistry()
    metrics = ResilienceMetrics(registry)
    return Observed(
        workload.make()(noop), activate=metrics.install, check=_counted(registry, workload)
    )


def _prometheus_hooks(workload: Workload) -> Observed:
    registry = CollectorRegistry()
    policy = workload.make()
    policy.add_hook(ResilienceMetrics(registry))  # a pipeline adds it to every member
    return Observed(policy(noop), check=_counted(registry, workload))


OBSERVERS: list[Observer] = [
    Observer("bare", "bare", "no hook: policies report nothing", _bare),
    Observer(
        "noop",
        "no-op listener",
        "global hook hearing calls as a CallListener, doing nothing",
        _noop_listener,
    ),
    Observer(
        "noop-events",
        "no-op event hook",
        "global hook wanting the call events, doing nothing",
        _noop_event_hook,
    ),
    Observer("prometheus", "prometheus", "ResilienceMetrics, metrics.install()", _prometheus),
    Observer(
        "prometheus-hooks",
        "prometheus hooks=",
        "ResilienceMetrics as the policies' own hook",
        _prometheus_hooks,
    ),
]


# ----------------------------------------------------------------- measurement


@dataclass
class Contender:
    """One workload under one observer, and its per-round ns/call."""

    workload: Workload
    observer: Observer
    observed: Observed
    samples: list[float] = field(default_factory=list)

    @property
    def key(self) -> str:
        return f"{self.workload.key}/{self.observer.key}"


async def build(observers: Sequence[Observer]) -> list[Contender]:
    """Build every contender and prove each one works (returns 42, really observes)."""
    contenders = []
    for workload in WORKLOADS:
        for observer in observers:
            observed = observer.build(workload)
            undo = observed.activate() if observed.activate else None
            try:
                result = await observed.fn()
            finally:
                if undo is not None:
                    undo()
            problem = observed.check() if observed.check else None
            if result != NOOP_RESULT or problem:
                raise RuntimeError(f"{workload.key}/{observer.key}: {problem or result!r}")
            contenders.append(Contender(workload, observer, observed))
    return contenders


async def measure(opts: Options, observers: Sequence[Observer]) -> list[Contender]:
    """Time every contender once per round, in an order shuffled afresh each round."""
    contenders = await build(observers)
    gc.collect()
    gc.freeze()  # setup objects stay out of every later collection
    rng = random.Random(opts.seed)
    order = list(contenders)
    for round_no in range(opts.warmup + opts.rounds):
        rng.shuffle(order)
        for contender in order:
            activate = contender.observed.activate
            undo = activate() if activate else None
            try:
                ns = await time_batch(contender.observed.fn, opts.calls)
            finally:
                if undo is not None:
                    undo()
            if round_no >= opts.warmup:
                contender.samples.append(ns)
        print(f"\r  round {round_no + 1}/{opts.warmup + opts.rounds}", end="", file=sys.stderr)
    print(file=sys.stderr)
    return contenders


def rows(contenders: Sequence[Contender]) -> list[Row]:
    """Medians and quartiles of each contender's cost over its workload's bare run."""
    bare = {c.workload.key: c.samples for c in contenders if c.observer.key == "bare"}
    out = []
    for c in contenders:
        added = [a - b for a, b in zip(c.samples, bare[c.workload.key], strict=True)]
        q1, _, q3 = statistics.quantiles(added, n=4) if len(added) > 1 else (added * 3)
        out.append(
            Row(
                workload=c.workload.label,
                observer=c.observer.label,
                layers=c.workload.layers,
                ns_per_call=statistics.median(c.samples),
                added_ns=statistics.median(added),
                added_q1=q1,
                added_q3=q3,
                samples=tuple(c.samples),
            )
        )
    return out


# ------------------------------------------------------------------- breakdown


def components(number: int) -> dict[str, float]:
    """ns per operation of the pieces one observed layer pays for (best of 5 repeats).

    Explains the rows above: the Prometheus listener's own work, what an event would
    cost instead, and what prometheus_client's own metric objects would cost.
    """
    event = CallSucceeded(kind="retry", name="retry", time=0.0, duration=0.001)
    noop_hook, metrics = NoopEventHook(), ResilienceMetrics(CollectorRegistry())
    listener = metrics.listen_calls(Retry(3))
    registry = CollectorRegistry()
    counter = Counter("c", "c", ("kind", "policy", "outcome"), registry=registry)
    histogram = Histogram("h", "h", ("kind", "policy"), registry=registry)
    child, observe = counter.labels("retry", "retry", "success"), histogram.labels("r", "r")
    pieces: dict[str, Callable[[], object]] = {
        "ResilienceMetrics' listener counts one success (`call_ended`)": lambda: (
            listener.call_ended(None, 0.001, None)
        ),
        "a clock read (`time.monotonic()`, twice per layer)": time.monotonic,
        "instead, build one CallSucceeded event": lambda: CallSucceeded(
            kind="retry", name="retry", time=0.0, duration=0.001
        ),
        "and deliver it to a no-op hook (core `deliver`)": lambda: deliver((noop_hook,), event),
        "and ResilienceMetrics counts it (called directly)": lambda: metrics(event),
        "prometheus_client instead: cached Counter child inc()": child.inc,
        "prometheus_client instead: cached Histogram child observe()": lambda: observe.observe(
            0.001
        ),
        "prometheus_client: Counter.labels(...) lookup": lambda: counter.labels(
            "retry", "retry", "success"
        ),
    }
    return {
        name: min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e9
        for name, fn in pieces.items()
    }


# ------------------------------------------------------------------------- cli


@dataclass(frozen=True)
class Options:
    """Parsed command line."""

    rounds: int
    calls: int
    warmup: int
    seed: int
    md: Path
    json: Path | None
    argv: tuple[str, ...]


def parse_args(argv: Sequence[str]) -> Options:
    """Parse `argv` (without the program name)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.observability",
        description="Per-call cost of observing policies (Prometheus hooks) vs bare policies.",
    )
    add_run_options(parser, FULL, default_md=DEFAULT_MD)
    ns = parser.parse_args(argv)
    rounds, calls, warmup = run_size(parser, ns, FULL, QUICK)
    md = report_path(ns.md, quick=ns.quick, default=DEFAULT_MD)
    return Options(
        rounds=rounds,
        calls=calls,
        warmup=warmup,
        seed=ns.seed,
        md=md,
        json=ns.json,
        argv=tuple(argv),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    started = now_utc()
    table = rows(asyncio.run(measure(opts, OBSERVERS)))
    parts = components(max(1_000, opts.calls * 5))
    for r in table:
        print(f"{r.workload:<45} {r.observer:<18} {r.ns_per_call:>8.0f} ns  +{r.added_ns:>7.0f}")
    existing = opts.md.read_text() if opts.md.exists() else None
    opts.md.parent.mkdir(parents=True, exist_ok=True)
    run = Run(
        command_line("benchmarks.observability", opts.argv),
        started,
        opts.rounds,
        opts.calls,
        opts.warmup,
        opts.seed,
    )
    opts.md.write_text(
        merge_region(existing, render(run, table, parts), begin=BEGIN_MARKER, end=END_MARKER)
    )
    print(f"wrote {opts.md}", file=sys.stderr)
    if opts.json is not None:
        dump = {"rows": [asdict(r) for r in table], "components_ns": parts}
        opts.json.write_text(json.dumps(dump, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
