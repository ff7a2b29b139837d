"""
``python -m examples.kv.bench_storage``: durable write latency, checkpoints inline or not.

One process drives a node's `Storage` the way replication does, at a fixed rate (open
loop: a write's latency runs from when it was due to when its group commit resolved it),
with SQLite's own checkpoints inside the commits (``wal_autocheckpoint`` 1000, its
default: the node before `Checkpointer`) and with background checkpoints (the node now),
alternating round by round in fresh directories. Prints p50/p99/max latency per round,
the slowest commit and how many checkpoints ran, then the medians over rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import statistics
import tempfile
import time
from pathlib import Path

from .._process import uvloop_factory
from .bench_load import percentile
from .hlc import HybridClock
from .storage import Record, Storage

__all__ = ["main"]

VARIANTS: dict[str, dict[str, float | None]] = {
    "inline": {"wal_limit_pages": 1000, "checkpoint_interval": None},
    "background": {},
}


async def _drive(storage: Storage, args: argparse.Namespace) -> list[float]:
    clock = HybridClock("bench")
    value = b"v" * args.value_bytes
    latencies: list[float] = []
    pending: set[asyncio.Future[list[bool]]] = set()

    def done(due: float, future: asyncio.Future[list[bool]]) -> None:
        pending.discard(future)
        future.result()
        latencies.append((time.perf_counter() - due) * 1000)

    interval = args.group / args.rate
    start, sent, total = time.perf_counter(), 0, int(args.seconds / interval)
    while sent < total:
        while sent < total and start + sent * interval <= time.perf_counter():
            keys = [f"k{(sent * args.group + i) % args.keys}".encode() for i in range(args.group)]
            future = storage.submit([Record(key, clock.now(), value) for key in keys])
            future.add_done_callback(functools.partial(done, start + sent * interval))
            pending.add(future)
            sent += 1
        await asyncio.sleep(max(0.001, start + sent * interval - time.perf_counter()))
    while pending:
        await asyncio.wait(set(pending))
    return latencies


async def _round(variant: str, args: argparse.Namespace) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="kv-bench-storage-") as directory:
        storage = Storage(Path(directory), **VARIANTS[variant])  # type: ignore[arg-type]
        try:
            fill = [
                Record(f"k{i}".encode(), HybridClock("fill").now(), b"v" * args.value_bytes)
                for i in range(args.keys)
            ]
            await storage.apply(fill)
            latencies = await _drive(storage, args)
        finally:
            storage.close()
    return {
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
        "slowest_commit": storage.slowest_commit * 1000,
        "checkpoints": storage.checkpointer.checkpoints,
    }


def main(argv: list[str] | None = None) -> int:
    """
    Run the rounds; print each and the medians.
    """
    parser = argparse.ArgumentParser(prog="python -m examples.kv.bench_storage")
    parser.add_argument("--rounds", type=int, default=6, help="per variant")
    parser.add_argument("--seconds", type=float, default=5.0, help="per round")
    parser.add_argument("--rate", type=float, default=7000.0, help="records per second")
    parser.add_argument("--group", type=int, default=10, help="records per submit")
    parser.add_argument("--keys", type=int, default=2000)
    parser.add_argument("--value-bytes", type=int, default=100)
    args = parser.parse_args(argv)
    results: dict[str, list[dict[str, float]]] = {name: [] for name in VARIANTS}
    with asyncio.Runner(loop_factory=uvloop_factory()) as runner:
        for number in range(args.rounds):
            order = list(VARIANTS) if number % 2 == 0 else list(VARIANTS)[::-1]
            for name in order:
                result = runner.run(_round(name, args))
                results[name].append(result)
                print(f"round {number + 1} {name:10}" + _format(result), flush=True)
    for name, rounds in results.items():
        medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
        worst = max(r["max"] for r in rounds)
        print(f"median {name:10}" + _format(medians) + f"; worst max {worst:.1f} ms")
    return 0


def _format(result: dict[str, float]) -> str:
    return (
        f" write latency p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms,"
        f" max {result['max']:.1f} ms; slowest commit {result['slowest_commit']:.1f} ms;"
        f" {result['checkpoints']:.0f} background checkpoints"
    )


if __name__ == "__main__":
    raise SystemExit(main())
