"""
Overload simulation: a server driven at 3x its capacity, with and without a limiter.

    python -m benchmarks.overload            # ~2 min; updates docs/overload.md and its PNG
    python -m benchmarks.overload --quick    # smoke run (~15 s), report to a temp dir
    python -m benchmarks.overload --seed 2 --seconds 20 --json /tmp/overload.json

**The server** (a separate process on 127.0.0.1, a fresh one per scenario) is an aiohttp
app with a pool of `WORKERS` workers (an `asyncio.Semaphore`). A request waits for a
worker in FIFO order, then holds it for its service time: `SERVICE` seconds, +-25% at
random, stretched by 1% for every request still waiting for a worker (contention: a
crowded server gets slower), at most `MAX_SLOWDOWN` times. Its capacity is therefore
``WORKERS / SERVICE`` requests per second, reached with no queue; latency rises with the
requests in it. It keeps working on a request whose client has gone (aiohttp's default:
handlers are not cancelled), as most servers do.

**The client** is an open loop: Poisson arrivals (seeded) at `LOAD` x capacity, each a
GET through ``pipeline(<limiter>, Timeout(DEADLINE))`` on one session with no connection
limit, so that nothing but the limiter holds load back. A success is a 200 within the
deadline. First the unloaded latency is measured at `UNLOADED` x capacity with no
limiter; then each scenario runs for `--seconds`, and its figures cover the time after
`--warmup` (the limiters' learning is in the chart, not in the table).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from benchmarks import _overload_report as report
from benchmarks._cli import report_path
from benchmarks._server import HOST, ServerProcess, serve_app
from resilient import (
    AIMD,
    AdaptiveConcurrency,
    AdaptiveThrottle,
    Bulkhead,
    Gradient2,
    Policy,
    RejectedError,
    Timeout,
    TimeoutExceeded,
    Vegas,
    pipeline,
)

WORKERS = 8
"""The server's worker pool."""
SERVICE = 0.080
"""A request's mean service time with nobody waiting, in seconds."""
CAPACITY = WORKERS / SERVICE
"""Requests per second the server completes at best (100)."""
SLOWDOWN = 0.01
"""Service time added per request waiting for a worker, as a share of `SERVICE`."""
MAX_SLOWDOWN = 3.0
LOAD = 3.0
"""Offered load in the scenarios, as a multiple of `CAPACITY`."""
UNLOADED = 0.3
"""Offered load when measuring the unloaded latency."""
DEADLINE = 0.5
"""The client's deadline per request, in seconds."""
SAMPLE_EVERY = 0.05
"""Seconds between two readings of a limiter's limit and calls in flight."""

DEFAULT_MD = Path(__file__).resolve().parent.parent / "docs" / "overload.md"
DEFAULT_PNG = DEFAULT_MD.with_name("overload-simulation.png")
FULL = {"seconds": 12.0, "warmup": 2.0, "baseline": 15.0}
QUICK = {"seconds": 1.0, "warmup": 0.3, "baseline": 1.0}


# ------------------------------------------------------------------- server


class WorkerPool:
    """The server's model: `WORKERS` workers, a FIFO queue, contention slowdown."""

    def __init__(self, seed: int) -> None:
        self._workers = asyncio.Semaphore(WORKERS)
        self._random = random.Random(seed)
        self.waiting = 0
        self.completed = 0

    async def handle(self, _: web.Request) -> web.Response:
        self.waiting += 1
        try:
            await self._workers.acquire()
        finally:
            self.waiting -= 1
        try:
            stretch = min(1 + SLOWDOWN * self.waiting, MAX_SLOWDOWN)
            await asyncio.sleep(SERVICE * self._random.uniform(0.75, 1.25) * stretch)
        finally:
            self._workers.release()
        self.completed += 1
        return web.Response(text="ok")

    async def stats(self, _: web.Request) -> web.Response:
        return web.json_response({"completed": self.completed, "waiting": self.waiting})


def serve(lifetime: float, seed: int) -> None:
    """The server process: serve the worker pool until stdin closes."""

    async def run() -> None:
        pool = WorkerPool(seed)
        app = web.Application()
        app.router.add_get("/", pool.handle)
        app.router.add_get("/stats", pool.stats)
        # Explicit, though it is aiohttp's default: a client that gave up does not
        # cancel the work it asked for. At the end, the backlog is dropped at once.
        await serve_app(app, lifetime, handler_cancellation=False, shutdown_timeout=0.1)

    asyncio.run(run())


# ------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Scenario:
    """A way of calling the server: a key, a label, and the limiter it builds (from a
    seeded random source), which goes outside the deadline's `Timeout`."""

    key: str
    label: str
    build: Callable[[random.Random], Policy | None]


SCENARIOS = (
    Scenario("none", "no limiter", lambda _: None),
    Scenario("bulkhead", "Bulkhead(32)", lambda _: Bulkhead(32)),
    Scenario("bulkhead_k", f"Bulkhead({WORKERS}), sized to the server",
             lambda _: Bulkhead(WORKERS)),
    Scenario("vegas", "AdaptiveConcurrency(), the default: Vegas()",
             lambda rng: AdaptiveConcurrency(Vegas(random=rng.random))),
    Scenario("gradient2", "AdaptiveConcurrency(Gradient2())",
             lambda _: AdaptiveConcurrency(Gradient2())),
    Scenario("gradient2_t1", "AdaptiveConcurrency(Gradient2(tolerance=1, queue_size=1))",
             lambda _: AdaptiveConcurrency(Gradient2(tolerance=1.0, queue_size=1))),
    Scenario("aimd", "AdaptiveConcurrency(AIMD())", lambda _: AdaptiveConcurrency(AIMD())),
    Scenario("throttle", "AdaptiveThrottle()", lambda rng: AdaptiveThrottle(random=rng.random)),
)  # fmt: skip


@dataclass
class Trace:
    """What one run of one scenario saw, request by request (times from its start)."""

    key: str
    rate: float
    seconds: float
    started: list[float] = field(default_factory=list)
    latency: list[float] = field(default_factory=list)
    outcome: list[str] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)
    limit: list[tuple[float, int, int]] = field(default_factory=list)
    server_completed: int = 0


class Unexpected(Exception):
    """The server answered with a status other than 200."""


def arrivals(rate: float, seconds: float, seed: int) -> list[float]:
    """Poisson arrival times in [0, seconds), seeded."""
    rng, at, times = random.Random(seed), 0.0, []
    while (at := at + rng.expovariate(rate)) < seconds:
        times.append(at)
    return times


def outcome_of(error: BaseException | None) -> str:
    """A short name for how a call ended."""
    if error is None:
        return "ok"
    if isinstance(error, TimeoutExceeded):
        return "timeout"
    if isinstance(error, RejectedError):
        return f"rejected:{type(error).__name__}"
    return f"error:{type(error).__name__}"


async def drive(port: int, scenario: Scenario, rate: float, seconds: float, seed: int) -> Trace:
    """Send Poisson arrivals at `rate` for `seconds` through the scenario's limiter."""
    url = f"http://{HOST}:{port}/"
    trace = Trace(scenario.key, rate, seconds)
    limiter = scenario.build(random.Random(seed + 1))
    policy = Timeout(DEADLINE) if limiter is None else pipeline(limiter, Timeout(DEADLINE))
    loop = asyncio.get_running_loop()
    connector = aiohttp.TCPConnector(limit=0)  # no hidden bulkhead in the client
    async with aiohttp.ClientSession(connector=connector) as session:

        async def get() -> None:
            async with session.get(url) as response:
                await response.read()
                if response.status != 200:
                    raise Unexpected(response.status)

        async def one(at: float, t0: float) -> None:
            start = loop.time()
            error: BaseException | None = None
            try:
                await policy.call(get)
            except Exception as exc:  # every failure is an outcome to count
                error = exc
            trace.started.append(start - t0)
            trace.latency.append(loop.time() - start)
            trace.outcome.append(outcome_of(error))
            trace.lag.append(start - t0 - at)

        sampler = asyncio.create_task(sample(limiter, trace, loop.time()))
        await launch(arrivals(rate, seconds, seed), one)
        sampler.cancel()
        async with session.get(f"{url}stats") as response:
            trace.server_completed = (await response.json())["completed"]
    return trace


async def launch(
    times: Sequence[float], one: Callable[[float, float], Coroutine[object, object, None]]
) -> None:
    """Start ``one(at, t0)`` at each time of `times`, open loop; wait for them all."""
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    running: set[asyncio.Task[None]] = set()
    for at in times:
        delay = t0 + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(at, t0))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)


async def sample(limiter: Policy | None, trace: Trace, t0: float) -> None:
    """Read the limiter's limit and calls in flight every `SAMPLE_EVERY` seconds."""
    if not isinstance(limiter, Bulkhead):  # AdaptiveConcurrency is one too
        return
    loop = asyncio.get_running_loop()
    while True:
        trace.limit.append((loop.time() - t0, limiter.max_concurrent, limiter.in_flight))
        await asyncio.sleep(SAMPLE_EVERY)


def run_one(scenario: Scenario, rate: float, seconds: float, seed: int) -> Trace:
    """One scenario against a fresh server process."""
    args = ["--server-lifetime", str(seconds + 120), "--seed", str(seed)]
    with ServerProcess("benchmarks.overload", args) as server:
        return asyncio.run(drive(server.port, scenario, rate, seconds, seed))


# ----------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The options; the run sizes are filled in from `FULL` or `QUICK`."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.overload",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="smoke run; report to a temp dir")
    parser.add_argument("--seconds", type=float, help=f"per scenario (default {FULL['seconds']})")
    parser.add_argument("--warmup", type=float, help=f"seconds left out (default {FULL['warmup']})")
    parser.add_argument("--seed", type=int, default=1, help="arrivals' seed (default 1)")
    parser.add_argument(
        "--only", nargs="+", choices=[s.key for s in SCENARIOS], help="run these scenarios only"
    )
    parser.add_argument("--md", type=Path, help=f"markdown report (default {DEFAULT_MD})")
    parser.add_argument("--png", type=Path, help=f"chart (default {DEFAULT_PNG})")
    parser.add_argument("--json", type=Path, help="also write every request's record here")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--server-lifetime", type=float, default=300.0, help=argparse.SUPPRESS)
    ns = parser.parse_args(argv)
    base = QUICK if ns.quick else FULL
    ns.seconds = base["seconds"] if ns.seconds is None else ns.seconds
    ns.warmup = base["warmup"] if ns.warmup is None else ns.warmup
    ns.baseline = base["baseline"]
    if not 0 <= ns.warmup < ns.seconds:
        parser.error("--seconds must be > 0 and --warmup in [0, seconds)")
    return ns


def main(argv: Sequence[str] | None = None) -> int:
    """Run the baseline and every scenario, print and write the report."""
    args = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(args)
    if opts.serve:
        serve(opts.server_lifetime, opts.seed)
        return 0
    started = report.now_utc()
    baseline = run_one(SCENARIOS[0], CAPACITY * UNLOADED, opts.baseline, opts.seed)
    unloaded = report.summarise(
        baseline,
        warmup=min(opts.warmup, opts.baseline / 3),
        label=f"unloaded ({UNLOADED:.0%} of capacity, no limiter)",
    )
    print(report.line("unloaded", unloaded), file=sys.stderr)
    traces, rows = [], []
    for scenario in SCENARIOS:
        if opts.only and scenario.key not in opts.only:
            continue
        trace = run_one(scenario, CAPACITY * LOAD, opts.seconds, opts.seed)
        rows.append(report.summarise(trace, warmup=opts.warmup, label=scenario.label))
        traces.append(trace)
        print(report.line(scenario.key, rows[-1]), file=sys.stderr)
    md = report_path(opts.md, quick=opts.quick, default=DEFAULT_MD)
    png = opts.png or md.with_name(DEFAULT_PNG.name)
    report.write_chart(png, traces, unloaded, opts.warmup)
    report.write_markdown(md, png, args, opts, started, unloaded, rows)
    print(report.verdict(unloaded, rows))
    print(f"wrote {md} and {png}", file=sys.stderr)
    if opts.json is not None:
        opts.json.write_text(json.dumps([asdict(t) for t in [baseline, *traces]]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
