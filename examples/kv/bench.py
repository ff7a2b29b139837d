"""
``python -m examples.kv bench``: replicated PUT and GET, with and without `resilient`.

Throughput and latency of both, side by side in one run.

Two 3-node clusters run at once on loopback: one as shipped (node-to-node calls through
`ResilienceMiddleware`), one with ``--plain-peers`` (plain aiohttp between nodes), and
a bare aiohttp process (`bench_floor`, the floor). Each round loads one cluster, then
the other (the order alternates from round to round, so drift of a shared machine hits
both alike), then the floor at saturation; an idle cluster costs next to nothing. For
each cluster and operation a round measures:

1. saturation: a closed loop (`bench_load.closed_loop`, wrk) for ``--seconds``;
2. half of it: an open loop at half that round's saturation rate, p50/p99 measured from
   when each request was due.

After the rounds, ``--pairs`` pairs of short saturation phases per operation judge the
resilient/plain throughput ratio: a pair loads one cluster twice back to back, its
nodes' peer calls switched between the two modes (``PUT /internal/peer-calls``) in ABBA
order, so a linear drift of the machine cancels out and nothing but the calls' path
differs (same processes, same data: a cluster's own slow-varying state, its WAL, heap
and layout, once made one run's clusters differ by more than the 10% judged); the two
clusters take turns, pair by pair, and each phase starts after ``--pair-rest`` idle
seconds, so a phase doesn't pay for the background work the one before left. The
ratio is judged on the median of the pairs, with a distribution-free interval, since a
round's ratio alone is noisier than the 10% it judges on a shared machine.

Node CPU per request (``/proc/<pid>/stat``, summed over the three nodes) and the
generator's own CPU are recorded for every phase: what bounds the cluster, and whether
the generator was a bottleneck. Results go to stdout, ``--json`` and (unless
``--no-docs``) the ``kv`` region of docs/benchmarks.md (`bench_report`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from .._process import free_port
from .bench_load import LoadResult, closed_loop, fill, open_loop
from .launch import ROOT, ClusterStartError, LocalCluster

__all__ = ["Phase", "add_bench_arguments", "floor_and_clusters", "run_bench", "wait_floor"]

IDS = ("n1", "n2", "n3")
VARIANTS: dict[str, list[str]] = {"resilient": [], "plain": ["--plain-peers"]}
OPERATIONS = ("PUT", "GET")
FLOOR = "bare aiohttp"
"""The variant name of the floor: one bare aiohttp process (`bench_floor`), no cluster."""
P99_TARGET_MS = 50.0
"""Issue #9: the p99 at half saturation must be under this many milliseconds."""
_TICK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Phase:
    """
    One measurement: a cluster, an operation, a load shape, in one round.

    Attributes:
        round: Round number (from 1).
        variant: ``resilient`` or ``plain``.
        op: ``PUT`` or ``GET``.
        load: ``saturation`` (closed loop), ``half`` (open loop at half of it) or
            ``pair`` (a short saturation phase of a resilient/plain pair).
        rate: Answered requests per second.
        target: The rate asked for (open loop), 0 for saturation.
        errors: Requests that failed or got a status other than 200/204.
        p50_ms: Median latency.
        p99_ms: 99th percentile latency.
        node_cpu_us: Node CPU per request, summed over the three nodes (microseconds).
        generator_cpu: Share of one core the load generator used.
        tool: The generator (``wrk`` or ``python``).
        loadavg: The machine's 1-minute load average when the phase ended.
        policy_events: What the peers' policies did in the phase, over the cluster's
            nodes (from their /metrics): retries, timeouts, rejections, breaker
            transitions and calls that failed; 0 for plain peers, which have none.
        stalls: Per node, its event loop's stalls in the phase (wake-ups at least 20
            ms late, `looplag`); none for the floor.
        longest_stall_ms: Per node, its longest stall in the phase (0: none).
        slow_commits: Group commits of 20 ms or more in the phase, over the nodes.
        hints_written: Hints the nodes stored in the phase (a replica missed a write).
        machine_busy: Share of the machine's CPU time busy in the phase (/proc/stat).
        cpu_pressure: Share of the phase some runnable task waited for a CPU
            (/proc/pressure/cpu "some"; -1 where the kernel doesn't tell).
        other_cpu: Cores used in the phase by everything but this cluster's nodes and
            the load generator: other processes disturbing the measurement.
        requests: Requests sent (open loop; 0 for a closed loop's phase).
        slow: Of those, how many took `P99_TARGET_MS` or longer, or failed (open loop).
        writes_per_commit: Writes per group commit in the phase, over the nodes (0: no
            commit): smaller groups cost more CPU per write, whatever the peers run.
    """

    round: int
    variant: str
    op: str
    load: str
    rate: float
    target: float
    errors: int
    p50_ms: float
    p99_ms: float
    node_cpu_us: float
    generator_cpu: float
    tool: str
    loadavg: float
    policy_events: int = 0
    stalls: dict[str, int] = field(default_factory=dict)
    longest_stall_ms: dict[str, float] = field(default_factory=dict)
    slow_commits: int = 0
    hints_written: int = 0
    machine_busy: float = 0.0
    cpu_pressure: float = 0.0
    other_cpu: float = 0.0
    requests: int = 0
    slow: int = 0
    writes_per_commit: float = 0.0


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """
    The ``bench`` command's options.
    """
    parser.add_argument("--rounds", type=_positive(int), default=3, help="rounds per cluster")
    parser.add_argument("--seconds", type=_positive(float), default=5.0, help="per phase")
    parser.add_argument("--connections", type=_positive(int), default=96,
                        help="closed-loop connections in all (saturation)")  # fmt: skip
    parser.add_argument("--keys", type=_positive(int), default=2000)
    parser.add_argument("--value-bytes", type=_positive(int), default=100)
    parser.add_argument("--generators", type=_positive(int), default=2,
                        help="open-loop generator processes")  # fmt: skip
    parser.add_argument("--pairs", type=_positive(int), default=16,
                        help="resilient/plain saturation pairs per operation")  # fmt: skip
    parser.add_argument("--pair-seconds", type=_positive(float), default=2.0,
                        help="per phase of a pair")  # fmt: skip
    parser.add_argument("--pair-rest", type=_positive(float), default=1.0,
                        help="idle seconds before each phase of a pair")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write every phase as JSON here")
    parser.add_argument("--docs", type=Path, default=Path("docs/benchmarks.md"),
                        help="the page whose kv region is rewritten")  # fmt: skip
    parser.add_argument("--no-docs", action="store_true", help="don't touch the docs page")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 round of 1 s phases, few keys; no docs")  # fmt: skip


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its error
    return parse


def run_bench(args: argparse.Namespace, argv: list[str]) -> int:
    """
    Run the bench; the exit code (0, or 3 when a cluster did not start or stopped answering).
    """
    if args.quick:
        args.rounds, args.seconds, args.keys, args.connections = 1, 1.0, 100, 12
        args.generators, args.pairs, args.pair_seconds, args.pair_rest = 1, 2, 1.0, 0.2
        args.no_docs = True
    root = Path(tempfile.mkdtemp(prefix="kv-bench-"))
    token = secrets.token_hex(16)
    clusters = {
        name: LocalCluster(root / name, list(IDS), token, extra_args=list(extra))
        for name, extra in VARIANTS.items()
    }
    began = time.time()
    with floor_and_clusters(root, clusters.values()) as (floor, floor_port):
        try:
            for cluster in clusters.values():  # all six start at once, then each is awaited
                for node in cluster.ids:
                    cluster.launch(node)
            for cluster in clusters.values():
                for node in cluster.ids:
                    cluster.wait_healthy(node)
            wait_floor(floor, floor_port)
            phases = _rounds(args, clusters, (floor.pid, f"127.0.0.1:{floor_port}"))
            internals = _all_internals(clusters)
        except ClusterStartError as error:
            print(f"kv bench: a cluster failed: {error}", file=sys.stderr)
            return 3
    # Imported here: bench_report imports this module (and the repo's benchmarks/ package).
    from .bench_report import internals_line, print_table, write_docs  # noqa: PLC0415

    print_table(phases, quick=args.quick)
    if internals:
        print(internals_line(internals))
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(p) for p in phases], indent=1))
    if not args.no_docs:
        write_docs(args.docs, phases, argv, began=began, args=args, internals=internals)
        print(f"kv bench: wrote the kv region of {args.docs}")
    return 0


def _all_internals(clusters: dict[str, LocalCluster]) -> dict[str, dict[str, float]]:
    # Read after the last phase: a node that doesn't answer then costs the run its
    # internals line, not its figures.
    try:
        return {name: _internals(cluster) for name, cluster in clusters.items()}
    except (OSError, ValueError, KeyError) as error:
        print(f"kv bench: no internals line, a node's /cluster failed: {error!r}", file=sys.stderr)
        return {}


def _internals(cluster: LocalCluster) -> dict[str, float]:
    # What the nodes saw over the whole run (GET /cluster), to lay latency tails beside.
    views = []
    for node in cluster.ids:
        url = f"http://{cluster.address(node)}/cluster"
        with urllib.request.urlopen(url, timeout=10.0) as answer:
            views.append(json.load(answer))
    batching = [view["batching"] for view in views]
    return {
        "slowest_commit_ms": max(v["storage"]["slowest_commit_ms"] for v in views),
        "slowest_checkpoint_ms": max(v["storage"]["slowest_checkpoint_ms"] for v in views),
        "full_gcs": sum(v["gc"]["full_collections"] for v in views),
        "slowest_full_gc_ms": max(v["gc"]["slowest_full_ms"] for v in views),
        "hedges": sum(v["hedges"] for v in views),
        "hedges_refused": sum(v["hedges_refused"] for v in views),
        "repairs": sum(v["repairs"] for v in views),
        "hints_written": sum(v["hints_written"] for v in views),
        "keys_per_read_batch": sum(b["keys"] for b in batching)
        / max(1, sum(b["read_batches"] for b in batching)),
        "records_per_write_batch": sum(b["records"] for b in batching)
        / max(1, sum(b["write_batches"] for b in batching)),
    }


@contextlib.contextmanager
def floor_and_clusters(
    root: Path, clusters: Iterable[LocalCluster]
) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """
    Start the bare aiohttp floor (`bench_floor`) on a free port, not awaited (`wait_floor`).

    On leaving: the floor is killed, every one of `clusters` stopped and `root`, where
    their data lives, removed.
    """
    port = free_port()
    # Its stdin a pipe from here, as the nodes': it stops when this process dies, a
    # SIGKILL included. A SIGTERM here becomes SystemExit, so the clean-up below runs.
    floor = subprocess.Popen(  # noqa: S603  # argv built here, no shell
        [sys.executable, "-m", "examples.kv.bench_floor", str(port), "--stop-on-stdin-eof"],
        cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield floor, port
    finally:
        floor.kill()
        floor.wait()
        if floor.stdin is not None:
            floor.stdin.close()
        for cluster in clusters:
            cluster.stop_all()
        shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def wait_floor(process: subprocess.Popen[bytes], port: int) -> None:
    """
    Return once the floor answers ``/health``.

    Raises:
        ClusterStartError: It exited or did not answer within 20 s.
    """
    deadline = time.monotonic() + 20.0
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2.0):
                return
        except OSError:
            time.sleep(0.05)
    raise ClusterStartError("the bare aiohttp server (bench_floor) did not start")


def _rounds(
    args: argparse.Namespace, clusters: dict[str, LocalCluster], floor: tuple[int, str]
) -> list[Phase]:
    addresses = {name: [c.address(n) for n in IDS] for name, c in clusters.items()}
    for name in clusters:
        filled = fill(addresses[name], args.keys, args.value_bytes)
        if filled.errors:
            raise ClusterStartError(f"{name}: {filled.errors} of {args.keys} fill writes failed")
    phases: list[Phase] = []
    names = list(clusters)
    for number in range(1, args.rounds + 1):
        order = names if number % 2 else names[::-1]
        for name in order:
            pids = [p.pid for p in clusters[name].processes.values()]
            for op in OPERATIONS:
                phases += _measure(args, number, name, op, addresses[name], pids)
                print(_progress(phases[-2:]), flush=True)
        phases += [_measure_floor(args, number, op, *floor) for op in OPERATIONS]
    return phases + _pairs(args, clusters, addresses)


def _pairs(
    args: argparse.Namespace, clusters: dict[str, LocalCluster], addresses: dict[str, list[str]]
) -> list[Phase]:
    # Short saturation phases judging the ratio: each pair on one cluster, its nodes'
    # peer calls switched between the two modes (nothing else differs: same processes,
    # same data, same moment), in ABBA order; the clusters take turns, pair by pair.
    phases: list[Phase] = []
    names = list(clusters)
    for op in OPERATIONS:
        for number in range(1, args.pairs + 1):
            host = names[(number - 1) % len(names)]
            cluster, nodes = clusters[host], addresses[host]
            pids = [p.pid for p in cluster.processes.values()]
            for mode in names if number % 2 else names[::-1]:
                switch_peer_calls(nodes, cluster.token, resilient=mode == "resilient")
                # Idle first: what the phase before left to do in the background (WAL
                # checkpoints, the kernel's writeback) is done before this one, not in it.
                time.sleep(args.pair_rest)
                seen, events, cpu = node_marks(nodes), policy_events(nodes), _cpu(pids)
                result = closed_loop(
                    nodes, op, connections=args.connections, seconds=args.pair_seconds,
                    keys=args.keys, value_bytes=args.value_bytes,
                )  # fmt: skip
                cpu, events = _cpu(pids) - cpu, policy_events(nodes) - events
                phase = _phase(number, mode, op, "pair", result, 0.0, cpu, events)
                phases.append(replace(phase, **marks_between(seen, node_marks(nodes))))
            switch_peer_calls(nodes, cluster.token, resilient=host == "resilient")  # as started
            resilient, plain = (next(p for p in phases[-2:] if p.variant == n) for n in names)
            print(
                f"pair {number} {op} (on the {host} cluster): resilient/plain throughput"
                f" {resilient.rate / max(plain.rate, 1e-9):.2f}, node CPU per request"
                f" {resilient.node_cpu_us / max(plain.node_cpu_us, 1e-9):.2f}, writes per"
                f" group commit {resilient.writes_per_commit:.1f} / {plain.writes_per_commit:.1f},"
                f" policy events {resilient.policy_events}",
                flush=True,
            )
    return phases


def switch_peer_calls(nodes: list[str], token: str, *, resilient: bool) -> None:
    """
    Make each of `nodes` call its peers with policies or without (plain aiohttp).

    Raises:
        ClusterStartError: A node did not answer, or did not confirm the mode.
    """
    body = json.dumps({"resilient": resilient}).encode()
    for node in nodes:
        request = urllib.request.Request(
            f"http://{node}/internal/peer-calls", data=body, method="PUT",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=10.0) as answer:  # noqa: S310  # ours
                now = json.load(answer)["resilient"]
        except (OSError, ValueError, KeyError) as error:
            raise ClusterStartError(f"{node} did not switch its peer calls: {error!r}") from error
        if now is not resilient:
            raise ClusterStartError(f"{node} did not switch its peer calls (resilient={now})")


def _measure_floor(args: argparse.Namespace, number: int, op: str, pid: int, address: str) -> Phase:
    # As many connections as one node gets, on the one process.
    cpu = _cpu([pid])
    result = closed_loop(
        [address], op, connections=max(1, args.connections // len(IDS)),
        seconds=args.seconds, keys=args.keys, value_bytes=args.value_bytes,
    )  # fmt: skip
    return _phase(number, FLOOR, op, "saturation", result, 0.0, _cpu([pid]) - cpu)


def _measure(  # noqa: PLR0917  # private, called once
    args: argparse.Namespace, number: int, name: str, op: str, nodes: list[str], pids: list[int]
) -> list[Phase]:
    shape = {"keys": args.keys, "value_bytes": args.value_bytes}
    cpu, events, seen, machine = _cpu(pids), policy_events(nodes), node_marks(nodes), _machine()
    saturated = closed_loop(nodes, op, connections=args.connections, seconds=args.seconds, **shape)
    between, events_between = _cpu(pids), policy_events(nodes)
    seen_between, machine_between = node_marks(nodes), _machine()
    target = saturated.rate / 2
    half = open_loop(nodes, op, rate=target, seconds=args.seconds, processes=args.generators,
                     **shape)  # fmt: skip
    after, events_after, seen_after = _cpu(pids), policy_events(nodes), node_marks(nodes)
    machine_after = _machine()
    return [
        replace(
            _phase(number, name, op, "saturation", saturated, 0.0, between - cpu,
                   events_between - events),
            **marks_between(seen, seen_between),
            **machine_use(machine, machine_between, between - cpu + saturated.generator_cpu),
        ),
        replace(
            _phase(number, name, op, "half", half, target, after - between,
                   events_after - events_between),
            **marks_between(seen_between, seen_after),
            **machine_use(machine_between, machine_after, after - between + half.generator_cpu),
            requests=half.requests, slow=slow_requests(half),
        ),
    ]  # fmt: skip


def slow_requests(result: LoadResult) -> int:
    """
    The open loop's requests that took `P99_TARGET_MS` or longer, or failed.

    Every failed request counts (one never answered has no latency), so one answered
    with a wrong status after `P99_TARGET_MS` counts twice: an upper bound.
    """
    late = sum(1 for ms in result.latencies_ms if ms >= P99_TARGET_MS)
    return late + result.errors


def _machine() -> tuple[float, float, float, float]:
    # (monotonic seconds, CPU seconds busy, CPU seconds in all, seconds some task waited
    # for a CPU or NaN) so far, machine-wide.
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    try:
        some = Path("/proc/pressure/cpu").read_text().split("\n", 1)[0]
        waited = int(some.rsplit("total=", 1)[1]) / 1e6
    except (OSError, IndexError, ValueError):  # no PSI in this kernel
        waited = math.nan
    return time.monotonic(), (sum(ticks) - idle) / _TICK, sum(ticks) / _TICK, waited


def machine_use(
    before: tuple[float, float, float, float],
    after: tuple[float, float, float, float],
    own_cpu: float,
) -> dict[str, Any]:
    """
    `Phase`'s machine fields between two `_machine` readings.

    `own_cpu` is the CPU seconds the cluster's nodes and the load generator used
    meanwhile: the rest of the busy time is other processes'.
    """
    wall, busy, total, waited = (b - a for a, b in zip(before, after, strict=True))
    if wall <= 0 or total <= 0:
        return {"machine_busy": 0.0, "cpu_pressure": -1.0, "other_cpu": 0.0}
    return {
        "machine_busy": round(busy / total, 3),
        "cpu_pressure": -1.0 if math.isnan(waited) else round(waited / wall, 3),
        "other_cpu": round(max(0.0, busy - own_cpu) / wall, 2),
    }


def node_marks(nodes: list[str]) -> dict[str, dict[str, Any]]:
    """
    What each of `nodes` has seen so far (its GET /cluster), keyed by its ``node`` id.

    A phase's stalls, slow commits and hints are the difference of two readings
    (`marks_between`).
    """
    marks = {}
    for node in nodes:
        with urllib.request.urlopen(f"http://{node}/cluster", timeout=10.0) as answer:
            view = json.load(answer)
        marks[view["node"]] = {
            "at": time.time(), "loop": view["loop"],
            "slow_commits": view["storage"]["slow_commits"],
            "commits": view["storage"]["commits"], "writes": view["storage"]["writes"],
            "hints_written": view["hints_written"],
        }  # fmt: skip
    return marks


def marks_between(
    before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """
    The `Phase` fields of what the nodes saw between two `node_marks` readings.

    The longest stall is the longest of the node's recent stalls stamped inside the
    phase (those it keeps; a phase with more stalls than that has its early ones
    left out of the longest, never of the count).
    """
    stalls, longest = {}, {}
    commits = sum(after[n]["commits"] - m["commits"] for n, m in before.items())
    writes = sum(after[n]["writes"] - m["writes"] for n, m in before.items())
    for node, then in sorted(before.items()):
        now = after[node]
        stalls[node] = now["loop"]["stalls"] - then["loop"]["stalls"]
        inside = [ms for at, ms in now["loop"]["recent_stalls"] if then["at"] <= at <= now["at"]]
        longest[node] = max(inside, default=0.0)
    return {
        "stalls": stalls, "longest_stall_ms": longest,
        "slow_commits": sum(after[n]["slow_commits"] - m["slow_commits"]
                            for n, m in before.items()),
        "hints_written": sum(after[n]["hints_written"] - m["hints_written"]
                             for n, m in before.items()),
        "writes_per_commit": round(writes / commits, 2) if commits else 0.0,
    }  # fmt: skip


# The counters of what a policy did besides letting a call through (docs/metrics.md).
_EVENT_COUNTERS = (
    "resilient_retries_total",
    "resilient_timeouts_total",
    "resilient_rejections_total",
    "resilient_circuit_transitions_total",
)


def policy_events(nodes: list[str]) -> int:
    """
    What the policies of `nodes` did so far, summed over their /metrics.

    Retries, timeouts, rejections, breaker transitions and calls that failed: a phase's
    are the difference of two readings.
    """
    total = 0.0
    for node in nodes:
        with urllib.request.urlopen(f"http://{node}/metrics", timeout=10.0) as answer:
            total += count_policy_events(answer.read().decode())
    return round(total)


def count_policy_events(metrics: str) -> float:
    """The policy events in one node's Prometheus text (see `policy_events`)."""
    total = 0.0
    for line in metrics.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        failed = name == "resilient_calls_total" and 'outcome="success"' not in line
        if name in _EVENT_COUNTERS or failed:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _phase(  # noqa: PLR0917  # private: a Phase's fields in order
    number: int,
    name: str,
    op: str,
    load: str,
    result: LoadResult,
    target: float,
    cpu: float,
    events: int = 0,
) -> Phase:
    return Phase(
        number, name, op, load, round(result.rate, 1), round(target, 1), result.errors,
        round(result.p50_ms, 2), round(result.p99_ms, 2),
        round(cpu / max(result.requests, 1) * 1e6, 1),
        round(result.generator_cpu / max(result.seconds, 1e-9), 3), result.tool,
        os.getloadavg()[0], events,
    )  # fmt: skip


def _cpu(pids: list[int]) -> float:
    # utime + stime of each node process, in seconds.
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / _TICK


def _progress(phases: list[Phase]) -> str:
    sat, half = phases
    return (
        f"round {sat.round} {sat.variant:9} {sat.op}: saturation {sat.rate:,.0f}/s"
        f" (p99 {sat.p99_ms:.1f} ms, {sat.node_cpu_us:.0f} us node CPU/req);"
        f" half {half.rate:,.0f}/s p50 {half.p50_ms:.1f} ms p99 {half.p99_ms:.1f} ms"
        f" ({half.slow:,} of {half.requests:,} at {P99_TARGET_MS:g} ms or more);"
        f" policy events {sat.policy_events} / {half.policy_events};"
        f" stalls {_stalls(sat)} / {_stalls(half)};"
        f" slow commits {sat.slow_commits} / {half.slow_commits};"
        f" hints {sat.hints_written} / {half.hints_written}; load {sat.loadavg:.1f};"
        f" half: machine {half.machine_busy:.0%} busy, CPU pressure {half.cpu_pressure:.0%},"
        f" others {half.other_cpu:.2f} cores"
    )


def _stalls(phase: Phase) -> str:
    # "n1 2 (31 ms)" per node that stalled; "0" when none did.
    stalled = [f"{n} {c} ({phase.longest_stall_ms[n]:.0f} ms)"
               for n, c in phase.stalls.items() if c]  # fmt: skip
    return ", ".join(stalled) or "0"
