"""
CPU per request at fixed offered rates: ``python -m examples.kv.bench_rates``.

The bench's "half saturation" finds the machine about as busy as at saturation: CPU per
request rises as the rate falls. This measures how much, for a 3-node cluster (PUTs,
`resilient` between nodes) and for the bare aiohttp floor (`bench_floor`: no storage,
no peers, no batching), at each of ``--rates`` in turn (open loop, the bench's Python
generator), ``--repeats`` times in alternating order. Prints, per target and rate, the
CPU the server processes used per request answered (utime + stime from /proc, summed
over the nodes), the cores they used (that CPU over the phase's wall time, the
generator's start-up included), the latency and the rate answered (below the
offered one when the target fell behind): median over the repeats (min-max). Needs no
wrk; takes about 2 s per phase more than ``--seconds`` (defaults: about 2 minutes).

Where the floor's CPU per request rises as steeply as the cluster's, what rises is the
machine's cost of waking a process for little work (cold caches, the scheduler, the
hypervisor), not batching in the cluster.
"""

from __future__ import annotations

import argparse
import math
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .._process import LOCALHOST
from .bench import _cpu, floor_and_clusters, wait_floor
from .bench_load import fill, open_loop
from .bench_report import _spread
from .launch import ClusterStartError, LocalCluster

__all__ = ["Sample", "main"]

_KEYS, _VALUE_BYTES = 2000, 100
_LEAST_RATE = 0.01


@dataclass(frozen=True)
class Sample:
    """
    One phase: a target loaded at one offered rate.
    """

    target: str
    rate: float
    requests: int
    cpu_us: float
    cores: float
    p50_ms: float
    p99_ms: float
    answered: float
    """Requests answered without error per second: below `rate` when the target fell
    behind (then latency, not the rate, is what grew)."""


def _rates(text: str) -> list[float]:
    try:
        rates = [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give rates as numbers, e.g. 300,1000"
        ) from None
    # The generator takes a rate to three decimals, and 0 means closed loop to it.
    if not all(math.isfinite(rate) and rate >= _LEAST_RATE for rate in rates):
        raise argparse.ArgumentTypeError(
            f"{text!r}: every rate must be a finite number of at least {_LEAST_RATE}"
        )
    return list(dict.fromkeys(rates))  # a rate given twice is one rate


def _load(
    target: str, pids: list[int], addresses: list[str], rate: float, seconds: float
) -> Sample:
    cpu, began = _cpu(pids), time.monotonic()
    result = open_loop(
        addresses, "PUT", rate=rate, seconds=seconds, keys=_KEYS, value_bytes=_VALUE_BYTES,
        processes=1,
    )  # fmt: skip
    used, took = _cpu(pids) - cpu, time.monotonic() - began
    answered = max(1, result.requests - result.errors)
    return Sample(
        target, rate, result.requests, used / answered * 1e6, used / took,
        result.p50_ms, result.p99_ms,
        (result.requests - result.errors) / result.seconds if result.seconds > 0 else 0.0,
    )  # fmt: skip


def report(samples: Sequence[Sample]) -> list[str]:
    """
    One line per target and rate: median (min-max) over the repeats.
    """
    lines = []
    for target in dict.fromkeys(s.target for s in samples):
        for rate in dict.fromkeys(s.rate for s in samples):
            group = [s for s in samples if s.target == target and s.rate == rate]

            def of(get: Callable[[Sample], float], fmt: str, group: list[Sample] = group) -> str:
                return _spread([get(s) for s in group], fmt)

            lines.append(
                f"{target:>8} at {rate:>7,.0f} PUT/s: CPU {of(lambda s: s.cpu_us, ',.0f')} us"
                f" per request answered, {of(lambda s: s.cores, '.2f')} cores, p50"
                f" {of(lambda s: s.p50_ms, '.1f')} ms, p99 {of(lambda s: s.p99_ms, '.1f')} ms,"
                f" answered {of(lambda s: s.answered, ',.0f')}/s"
            )
    return lines


def _start(cluster: LocalCluster, floor: subprocess.Popen[bytes], port: int) -> None:
    # The cluster and the floor answering, the cluster holding the keys the load writes.
    cluster.start()
    wait_floor(floor, port)
    filled = fill([cluster.address(node) for node in cluster.ids], _KEYS, _VALUE_BYTES)
    if filled.errors:
        raise ClusterStartError(f"{filled.errors} of {_KEYS} fill writes failed")


def main(argv: list[str] | None = None) -> int:
    """
    Load the floor and a 3-node cluster at each rate; print CPU per request.

    Returns 0, or 3 when a server did not start (said on stderr).
    """
    parser = argparse.ArgumentParser(
        prog="python -m examples.kv.bench_rates",
        description="CPU per request at fixed offered PUT rates: a 3-node cluster (resilient"
        " between nodes) against the bare aiohttp floor, on loopback.",
    )
    parser.add_argument(
        "--rates",
        type=_rates,
        default=_rates("300,1000,3000"),
        help="offered PUT rates, comma-separated (default 300,1000,3000)",
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="per phase (default 5)")
    parser.add_argument(
        "--repeats", type=int, default=3, help="phases per rate and target (default 3)"
    )
    args = parser.parse_args(argv)
    if not (math.isfinite(args.seconds) and args.seconds > 0):
        parser.error(f"--seconds {args.seconds!r}: must be > 0 and finite")
    if min(args.rates) * args.seconds < 1:
        parser.error(
            f"--seconds {args.seconds!r}: too short for a request at {min(args.rates):g}/s"
            " (each phase must send at least one)"
        )
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats!r}: must be >= 1")
    root = Path(tempfile.mkdtemp(prefix="kv-rates-"))
    cluster = LocalCluster(root, ["n1", "n2", "n3"], secrets.token_hex(16))
    samples: list[Sample] = []
    with floor_and_clusters(root, [cluster]) as (floor, port):
        nodes = [cluster.address(node) for node in cluster.ids]
        try:
            _start(cluster, floor, port)
        except ClusterStartError as error:
            print(f"kv bench_rates: a server failed to start: {error}", file=sys.stderr)
            return 3
        targets = {
            "floor": ([floor.pid], [f"{LOCALHOST}:{port}"]),
            "cluster": ([cluster.processes[node].pid for node in cluster.ids], nodes),
        }
        for repeat in range(args.repeats):
            order = list(targets) if repeat % 2 == 0 else list(reversed(targets))
            for rate in args.rates:
                for target in order:
                    samples.append(_load(target, *targets[target], rate, args.seconds))
                    print(report(samples[-1:])[0], flush=True)
    print(f"CPU per request at fixed PUT rates, median (min-max) of {args.repeats} phases:")
    for line in report(samples):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
