"""
The bench's load generators: ``wrk`` for closed-loop saturation, Python for a fixed rate.

Closed loop (saturation): one ``wrk`` process per node, each with its own connections,
a Lua script spreading PUTs or GETs over the key space. wrk is C with an event loop per
thread; its CPU is measured (``RUSAGE_CHILDREN``) and reported. Without wrk, the Python
generator below runs in closed-loop mode instead (slower, and reported as such).

Open loop (fixed rate): ``python -m examples.kv.bench_load`` processes, each sending its
share of the rate on a fixed schedule, whatever the answers do; a request's latency runs
from when it was *due*, not when it went out, so a generator that falls behind shows up
in the latency instead of hiding it (no coordinated omission). Each prints its
latencies as JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import math
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .._process import uvloop_factory
from .bench_http import HttpPool, request_bytes
from .launch import ROOT

__all__ = ["LoadResult", "closed_loop", "fill", "open_loop", "percentile"]

_LUA = """
local keys = tonumber(os.getenv("KV_BENCH_KEYS"))
local method = os.getenv("KV_BENCH_METHOD")
local body = string.rep("v", tonumber(os.getenv("KV_BENCH_VALUE_BYTES")))
local headers = {["Content-Type"] = "application/octet-stream"}
function init(args)
  math.randomseed(os.time() + tonumber(string.sub(tostring({}), 8), 16) % 100000)
end
function request()
  local path = "/kv/k" .. math.random(0, keys - 1)
  if method == "PUT" then
    return wrk.format("PUT", path, headers, body)
  end
  return wrk.format("GET", path)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("KVBENCH %d %d %d %d %d %d\\n", summary.requests,
    e.status + e.connect + e.read + e.write + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99), latency.max))
end
"""
_TICK = 0.001  # seconds between the open loop's sends of what has come due
_IN_FLIGHT_CAP = 4096  # open loop: no new connections beyond this many requests in flight


@dataclass
class LoadResult:
    """
    What one load phase did.

    Attributes:
        requests: Requests answered (any status).
        errors: Requests that failed or got a status other than 200/204.
        seconds: How long the phase ran.
        latencies_ms: Per request (open loop) or [p50, p99] estimates (wrk).
        generator_cpu: CPU seconds the generator processes used.
        tool: ``wrk`` or ``python``.
        sender_late_ms: Open loop: how late, at worst, a generator's sending loop woke
            (its own stall; the requests due meanwhile count it in their latency).
    """

    requests: int
    errors: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    generator_cpu: float = 0.0
    tool: str = "python"
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    sender_late_ms: float = 0.0

    @property
    def rate(self) -> float:
        """
        Answered requests per second.
        """
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """
    The `q` quantile (0..1) of `values` (nearest rank); 0 when empty.
    """
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, nearest_rank(q, len(ordered)) - 1))]


def nearest_rank(q: float, count: int) -> int:
    """
    The rank (1-based) of the `q` quantile among `count` sorted values (`percentile`'s).

    The quantile is under a bound exactly when at most ``count - rank`` values are at or
    over it.
    """
    return math.ceil(round(q * count, 9))  # rounded: 0.29 * 100 is 28.999...


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def closed_loop(
    addresses: Sequence[str],
    method: str,
    *,
    connections: int,
    seconds: float,
    keys: int,
    value_bytes: int,
) -> LoadResult:
    """
    Saturate the nodes: `connections` in all, spread over `addresses`, for `seconds`.
    """
    wrk = shutil.which("wrk")
    if wrk is None:
        return _python_processes(
            addresses, method, ["--connections", str(max(1, connections // 2))], 2,
            seconds=seconds, keys=keys, value_bytes=value_bytes,
        )  # fmt: skip
    per_node = max(1, connections // len(addresses))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_LUA)
    env = {"KV_BENCH_KEYS": str(keys), "KV_BENCH_METHOD": method,
           "KV_BENCH_VALUE_BYTES": str(value_bytes), "PATH": "/usr/bin:/bin"}  # fmt: skip
    before = _children_cpu()
    argv = [wrk, "-t1", f"-c{per_node}", f"-d{max(1, round(seconds))}s", "--timeout", "5s",
            "-s", script.name]  # fmt: skip
    try:
        processes = [
            subprocess.Popen(  # noqa: S603  # argv built here, no shell
                [*argv, f"http://{address}"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env=env,
            )
            for address in addresses
        ]
        outputs = [process.communicate(timeout=seconds + 30)[0].decode() for process in processes]
    finally:
        Path(script.name).unlink(missing_ok=True)
    result = LoadResult(0, 0, 0.0, tool="wrk", generator_cpu=_children_cpu() - before)
    for output in outputs:
        line = next((x for x in output.splitlines() if x.startswith("KVBENCH ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no summary:\n{output[-2000:]}")
        requests, errors, micros, p50, p99, _ = (int(x) for x in line.split()[1:])
        result.requests += requests
        result.errors += errors
        result.seconds = max(result.seconds, micros / 1e6)
        # Percentiles can't be merged exactly: the worst node's, a conservative estimate.
        result.p50_ms = max(result.p50_ms, p50 / 1000)
        result.p99_ms = max(result.p99_ms, p99 / 1000)
    return result


def open_loop(
    addresses: Sequence[str],
    method: str,
    *,
    rate: float,
    seconds: float,
    keys: int,
    value_bytes: int,
    processes: int = 2,
) -> LoadResult:
    """
    Send `rate` requests per second in all for `seconds`, on schedule, from `processes`.
    """
    share = ["--rate", f"{rate / processes:.3f}"]
    result = _python_processes(
        addresses, method, share, processes, seconds=seconds, keys=keys, value_bytes=value_bytes
    )
    result.p50_ms = percentile(result.latencies_ms, 0.50)
    result.p99_ms = percentile(result.latencies_ms, 0.99)
    return result


def fill(addresses: Sequence[str], keys: int, value_bytes: int) -> LoadResult:
    """
    Write every key once (``k0`` .. ``k{keys-1}``), so GETs find values.
    """
    return _python_processes(
        addresses, "FILL", ["--connections", "32"], 1, seconds=60.0, keys=keys,
        value_bytes=value_bytes,
    )  # fmt: skip


def _python_processes(
    addresses: Sequence[str],
    method: str,
    mode: list[str],
    count: int,
    *,
    seconds: float,
    keys: int,
    value_bytes: int,
) -> LoadResult:
    argv = [
        sys.executable, "-m", "examples.kv.bench_load", "--method", method,
        "--seconds", str(seconds), "--keys", str(keys), "--value-bytes", str(value_bytes),
        *mode, *addresses,
    ]  # fmt: skip
    before = _children_cpu()
    running = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=ROOT)  # noqa: S603  # built here
        for _ in range(count)
    ]
    outputs = [process.communicate(timeout=seconds + 60)[0] for process in running]
    result = LoadResult(0, 0, 0.0, generator_cpu=_children_cpu() - before)
    for process, output in zip(running, outputs, strict=True):
        if process.returncode != 0:
            raise RuntimeError(f"load generator failed with status {process.returncode}")
        part = json.loads(output)
        result.requests += part["requests"]
        result.errors += part["errors"]
        result.seconds = max(result.seconds, part["seconds"])
        result.latencies_ms += part["latencies_ms"]
        result.sender_late_ms = max(result.sender_late_ms, part["sender_late_ms"])
    if mode[0] == "--connections":
        result.p50_ms = percentile(result.latencies_ms, 0.50)
        result.p99_ms = percentile(result.latencies_ms, 0.99)
        result.latencies_ms = []
    return result


class _Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.pools = [HttpPool(address) for address in args.addresses]
        self.method = "PUT" if args.method in {"PUT", "FILL"} else "GET"
        self.body = b"v" * args.value_bytes if self.method == "PUT" else b""
        self.latencies: list[float] = []
        self.requests = self.errors = 0
        self.in_flight = 0
        self.sender_late = 0.0  # open loop: the sending loop's worst lateness, seconds
        self.random = random.Random()  # noqa: S311  # load spreading, not secrets
        self.backlog: list[collections.deque[tuple[bytes, float]]] = []
        self.growing: list[bool] = []
        self._tasks: set[asyncio.Future[None]] = set()

    async def one(self, index: int, due: float) -> None:
        pool = self.pools[index % len(self.pools)]
        path = f"/kv/k{index % self.args.keys}"
        self.in_flight += 1
        try:
            status = await pool.send(request_bytes(self.method, pool.host, path, self.body))
            ok = status in {200, 204}
        except (OSError, ValueError):  # refused, reset, timed out, unparsable
            ok = False
        finally:
            self.in_flight -= 1
        self.requests += 1
        self.errors += not ok
        self.latencies.append((time.perf_counter() - due) * 1000)

    async def closed(self) -> None:
        stop = time.perf_counter() + self.args.seconds
        counter = iter(range(self.args.keys if self.args.method == "FILL" else sys.maxsize))

        async def worker() -> None:
            for index in counter:
                if time.perf_counter() >= stop:
                    return
                key = index if self.args.method == "FILL" else self.random.randrange(1 << 30)
                await self.one(key, time.perf_counter())

        await asyncio.gather(*(worker() for _ in range(self.args.connections)))

    async def open(self) -> None:
        # Callbacks, not a task per request: at a few thousand requests a second the
        # generator's own CPU would otherwise compete with the nodes it measures.
        rate, count = self.args.rate, len(self.pools)
        await asyncio.gather(*(p.grow(max(4, int(rate * 0.02 / count))) for p in self.pools))
        self.backlog = [collections.deque[tuple[bytes, float]]() for _ in self.pools]
        self.growing = [False] * count
        start = time.perf_counter()
        sent, total = 0, int(rate * self.args.seconds)
        while sent < total:
            due_now = min(total, int((time.perf_counter() - start) * rate) + 1)
            while sent < due_now:
                index = self.random.randrange(1 << 30)
                path = f"/kv/k{index % self.args.keys}"
                pool = index % count
                data = request_bytes(self.method, self.pools[pool].host, path, self.body)
                self.backlog[pool].append((data, start + sent / rate))
                sent += 1
            for pool in range(count):
                self._drain(pool)
            # At least 1 ms: the loop's timers have millisecond resolution (libuv's), so
            # a shorter sleep returns at once and the generator would spin.
            pause = max(_TICK, start + sent / rate - time.perf_counter())
            woken = time.perf_counter() + pause
            await asyncio.sleep(pause)
            self.sender_late = max(self.sender_late, time.perf_counter() - woken)
        stop = time.perf_counter() + 10.0
        while self.requests < total and time.perf_counter() < stop:
            for pool in range(count):
                self._drain(pool)
            await asyncio.sleep(0.005)
        self.errors += total - self.requests  # never answered within 10 s
        self.requests = total

    def _drain(self, pool: int) -> None:
        backlog, target = self.backlog[pool], self.pools[pool]
        while backlog:
            data, due = backlog[0]
            if not target.send_nowait(data, functools.partial(self._answered, pool, due)):
                if not self.growing[pool] and self.in_flight < _IN_FLIGHT_CAP:
                    self.growing[pool] = True
                    task = asyncio.ensure_future(self._grow(pool))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                return
            backlog.popleft()
            self.in_flight += 1

    async def _grow(self, pool: int) -> None:
        try:
            await self.pools[pool].grow(4)
        except OSError:
            pass  # the node refuses: requests wait, then count as errors
        finally:
            self.growing[pool] = False
        self._drain(pool)

    def _answered(self, pool: int, due: float, status: int | None) -> None:
        self.in_flight -= 1
        self.requests += 1
        self.errors += status not in {200, 204}
        self.latencies.append((time.perf_counter() - due) * 1000)
        self._drain(pool)


async def _generate(args: argparse.Namespace) -> dict[str, object]:
    generator = _Generator(args)
    began = time.perf_counter()
    try:
        await (generator.open() if args.rate else generator.closed())
    finally:
        for pool in generator.pools:
            pool.close()
    took = time.perf_counter() - began
    return {
        "requests": generator.requests, "errors": generator.errors, "seconds": took,
        "latencies_ms": [round(x, 3) for x in generator.latencies],
        "sender_late_ms": round(generator.sender_late * 1000, 2),
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """
    One generator process: ``--rate`` (open loop) or ``--connections`` (closed loop).
    """
    parser = argparse.ArgumentParser(prog="python -m examples.kv.bench_load")
    parser.add_argument("--method", choices=["PUT", "GET", "FILL"], required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--keys", type=int, required=True)
    parser.add_argument("--value-bytes", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("addresses", nargs="+")
    args = parser.parse_args(argv)
    with asyncio.Runner(loop_factory=uvloop_factory()) as runner:
        outcome = runner.run(_generate(args))
    json.dump(outcome, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
