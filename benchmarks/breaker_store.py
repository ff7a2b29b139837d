"""
Added cost per call of a circuit breaker shared through Redis: resilient's
`RedisBreakerStore` (each mode) against pybreaker's `CircuitRedisStorage`, both through
``CircuitBreaker(storage=...)`` and through pybreaker's own synchronous ``call``.

    python -m benchmarks.breaker_store -o /tmp/b1.json   # pyperf; then benchmarks.report
    python -m benchmarks.breaker_store --quick --md /tmp/b.md

Each process starts a redis-server of its own (loopback, no persistence, stopped at
exit), so every breaker pays real round trips. The breakers wrap the no-op and stay
closed: what is measured is the happy path, i.e. per call the round trips to Redis
(admission and recording) and the bookkeeping around them.
"""

from __future__ import annotations

import atexit
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any

from benchmarks import _perf
from benchmarks._perf import Case, noop
from benchmarks.report import Figure, Report
from resilient import CircuitBreaker

_REDIS: list[int] = []


def _redis_port() -> int:
    """A redis-server of this process's own (started once, stopped at exit); its port."""
    if _REDIS:
        return _REDIS[0]
    import redis

    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    folder = tempfile.TemporaryDirectory(prefix="resilient-bench-redis-")
    process = subprocess.Popen(  # a fixed binary and arguments
        [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
         "--appendonly", "no", "--dir", folder.name],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip

    def stop() -> None:
        process.terminate()
        process.wait(10)
        folder.cleanup()

    atexit.register(stop)
    client = redis.Redis(port=port, socket_timeout=5)
    for _ in range(1000):  # up to ~10 s for the server to listen
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.01)
    client.close()
    _REDIS.append(port)
    return port


def _store(**options: Any) -> Any:
    import redis.asyncio

    from resilient import RedisBreakerStore

    client = redis.asyncio.Redis(port=_redis_port(), socket_timeout=5)
    _perf.close_at_end(client.aclose)
    store = RedisBreakerStore(client, prefix=f"bench:{sorted(options)}:")
    return CircuitBreaker("bench", storage=store, reset_timeout=30, **options)(noop)


def _pybreaker_storage(namespace: str) -> Any:
    import pybreaker
    import redis

    client = redis.Redis(port=_redis_port(), socket_timeout=5)
    return pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, client, namespace=namespace)


def _adapter() -> Any:
    storage = _pybreaker_storage("bench-adapter")
    return CircuitBreaker("bench", storage=storage, failure_threshold=5, reset_timeout=30)(noop)


def _pybreaker_sync() -> Any:
    import pybreaker

    storage = _pybreaker_storage("bench-sync")
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=30, state_storage=storage)

    def answer() -> int:
        return 42

    async def call() -> object:
        return breaker.call(answer)  # blocks the event loop for its round trips

    return call


STORE = "RedisBreakerStore(client)"
RAW = "raw EVALSHA of a trivial script (floor)"


def _floor() -> Any:
    """One round trip of the same client and kind (EVALSHA), doing nothing: the floor."""
    import redis.asyncio

    client = redis.asyncio.Redis(port=_redis_port(), socket_timeout=5)
    _perf.close_at_end(client.aclose)
    script = client.register_script("return 42")

    async def call() -> object:
        return int(await script())

    return call


def cases() -> list[Case]:
    """The in-memory breaker, the Redis store in each mode, pybreaker's Redis storage."""
    needs = ("redis",)
    return [
        Case("bare", lambda: noop, "await noop()"),
        Case("resilient CircuitBreaker (in memory)", lambda: CircuitBreaker()(noop),
             "@CircuitBreaker()"),
        Case("resilient RedisBreakerStore consecutive", lambda: _store(failure_threshold=5),
             f"@CircuitBreaker(failure_threshold=5, storage={STORE})", needs),
        Case("resilient RedisBreakerStore count window",
             lambda: _store(failure_rate=0.5, window=100),
             f"@CircuitBreaker(failure_rate=0.5, window=100, storage={STORE})", needs),
        Case("resilient RedisBreakerStore time window",
             lambda: _store(failure_rate=0.5, window_duration=60.0),
             f"@CircuitBreaker(failure_rate=0.5, window_duration=60, storage={STORE})", needs),
        Case("resilient RedisBreakerStore slow calls",
             lambda: _store(window=100, slow_call_duration=1.0),
             f"@CircuitBreaker(window=100, slow_call_duration=1, storage={STORE})", needs),
        Case("pybreaker CircuitRedisStorage via storage=", _adapter,
             "@CircuitBreaker(failure_threshold=5, storage=CircuitRedisStorage(...))",
             ("redis", "pybreaker")),
        Case("pybreaker CircuitRedisStorage .call (sync)", _pybreaker_sync,
             "pybreaker.CircuitBreaker(state_storage=CircuitRedisStorage(...)).call(fn)",
             ("redis", "pybreaker")),
        Case(RAW, _floor, "await client.register_script('return 42')()", needs),
    ]  # fmt: skip


_OURS = ("resilient RedisBreakerStore consecutive", "bare")
# fmt: off
PAGE = Report(
    "breaker_store",
    "Circuit breaker shared through Redis: added cost per call",
    "bare",
    [
        Figure("RedisBreakerStore (consecutive), added cost per call", _OURS),
        Figure("RedisBreakerStore / pybreaker storage via storage=", _OURS,
               [("pybreaker CircuitRedisStorage via storage=", "bare")]),
        Figure("RedisBreakerStore / pybreaker's own sync call", _OURS,
               [("pybreaker CircuitRedisStorage .call (sync)", "bare")]),
        Figure("RedisBreakerStore / one raw EVALSHA round trip", _OURS, [(RAW, "bare")]),
    ],
    notes="Each process runs its own redis-server on loopback. RedisBreakerStore makes two"
    " round trips per call (admission, then the outcome), each one EVALSHA of its Lua"
    " script, run as a task of its own bounded by storage_timeout. pybreaker's storage"
    " makes several commands per call (state, counters): through `storage=` they run in a"
    " worker thread; pybreaker's own `call` runs them on the caller's thread, which in an"
    " asyncio program blocks the event loop for every round trip. The last figure divides"
    " by one raw round trip (so about 2 would be two bare round trips). The figures here"
    " come from `-p 4 --min-time 0.05` runs in a shared window with other jobs on the"
    " machine (load average about 11 on 2 CPUs): round trips cost several times what a"
    " quiet machine shows, and redis.asyncio's per-command work in Python (asyncio"
    " streams, its RESP parser) weighs more than the blocking client's in that state.",
)
# fmt: on


if __name__ == "__main__":
    raise SystemExit(_perf.main("benchmarks.breaker_store", cases, PAGE))
