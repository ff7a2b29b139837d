"""
RedisBreakerStore: one circuit breaker shared by every process, decided atomically in Redis.

Each decision (admit a call, record its outcome, give a probe permit back, trip, reset)
is one ``EVALSHA`` of a Lua script (`lua`): Redis runs it atomically, so no
two processes read-modify-write the same counters, and no thread is involved (redis-py's
asyncio client on the caller's loop). Every breaker mode is kept: consecutive failures,
count and time windows, slow calls. Half-open probe permits are cluster-wide: with
``half_open_max_calls=1`` exactly one process probes, and each permit is a lease that
lapses after `probe_lease` seconds, so a prober that crashed can't wedge the breaker.

Time is Redis' own (``TIME``): hosts need not agree on the clock. The keys of one
breaker share a hash slot (``{name}``), so Redis Cluster runs the script too.

The breaker bounds every round trip by its ``storage_timeout`` and decides from its own
state when Redis is unreachable or slow (see `link`).

redis-py is imported when a store is built, so ``import resilient`` never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..._engine.validate import check_seconds
from .accounting import WindowTotals
from .lua import SCRIPT
from .store import BreakerAdmission, BreakerObservation, BreakerSpec, CircuitState

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["RedisBreakerStore"]

_Arg = str | int  # what the script's ARGV takes here

_STATES = {state.value: state for state in CircuitState}


class RedisBreakerStore:
    """
    A `BreakerStore` in Redis: ``CircuitBreaker("db", storage=RedisBreakerStore(client))``.

    Breakers with the same name (in any process) using stores with the same `prefix`
    share one state; give them the same settings.

    Args:
        client: A ``redis.asyncio.Redis`` client (the caller owns and closes it). Give it
            a ``socket_timeout``: the breaker never waits longer than its
            ``storage_timeout``, but a round trip left running on a frozen server holds
            a connection until the socket gives up.
        prefix: Prepended to the keys (default ``"resilient:breaker:"``).
        probe_lease: Seconds a half-open probe holds its permit at most (default: the
            breaker's reset_timeout). A probe running longer lets another one in; a
            prober that died frees its permit after that long.
        now: Time source in seconds, for tests (default: Redis' ``TIME``).

    Raises:
        ValueError: `probe_lease` is not a finite number of seconds > 0.
        TypeError: `prefix` is not a string.
        ImportError: redis-py is not installed (``pip install "resilient[redis]"``).
    """

    remote = True
    __slots__ = ("_now", "_rules", "_script", "prefix", "probe_lease")

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        prefix: str = "resilient:breaker:",
        probe_lease: float | None = None,
        now: Callable[[], float] | None = None,
    ) -> None:
        try:
            import redis.asyncio  # noqa: F401, PLC0415  # optional extra: fail here, named
        except ImportError as exc:  # pragma: no cover - the dev extra installs redis
            raise ImportError(
                'RedisBreakerStore needs redis-py: pip install "resilient[redis]"'
            ) from exc
        owner = type(self).__name__
        if not isinstance(prefix, str):
            raise TypeError(f"{owner}(prefix={prefix!r}): prefix must be a string")
        self.prefix = prefix
        self.probe_lease = None if probe_lease is None else check_seconds(
            owner, "probe_lease", probe_lease
        )  # fmt: skip
        self._now = now
        self._script = client.register_script(SCRIPT)
        self._rules: dict[BreakerSpec, tuple[list[str], str]] = {}

    def bind(self, spec: BreakerSpec) -> None:
        """
        Prepare the keys and script arguments for `spec` (every mode is supported).
        """
        self._rules[spec] = (self._keys(spec.name), _arguments(spec, self.probe_lease))

    def _keys(self, name: str) -> list[str]:
        # One hash slot for the four keys: Redis Cluster runs a script over one slot.
        base = f"{self.prefix}{{{name}}}"
        return [base, f"{base}:permits", f"{base}:ring", f"{base}:counts"]

    async def _eval(self, op: str, spec: BreakerSpec, *extra: _Arg) -> list[str]:
        rules = self._rules.get(spec)
        if rules is None:
            self.bind(spec)
            rules = self._rules[spec]
        keys, arguments = rules
        now = "" if self._now is None else repr(self._now())
        reply: bytes | str = await self._script(keys=keys, args=[op, now, arguments, *extra])
        return (reply.decode() if isinstance(reply, bytes) else reply).split()

    async def admit(self, spec: BreakerSpec) -> BreakerAdmission:
        """
        Admit a call, or refuse it; a half-open admission holds a probe permit.
        """
        admitted, state, generation, wait, permit, *counts = await self._eval("admit", spec)
        return BreakerAdmission(
            admitted=admitted == "1",
            state=_STATES[state],
            retry_in=float(wait),
            generation=int(generation),
            permit=None if permit == "-" else permit,
            totals=_totals(counts),
        )

    async def record(
        self, spec: BreakerSpec, admission: BreakerAdmission, failed: bool | None, slow: bool
    ) -> BreakerObservation:
        """
        Count an outcome in the state it was admitted in, or just give its permit back.
        """
        op = "release" if failed is None else "record"
        outcome = (admission.generation, admission.permit or "-", int(bool(failed)), int(slow))
        return _observation(await self._eval(op, spec, *outcome))

    async def force(self, spec: BreakerSpec, state: CircuitState) -> BreakerObservation:
        """
        Open or close the shared breaker now.
        """
        op = "open" if state is CircuitState.OPEN else "close"
        return _observation(await self._eval(op, spec))

    def __repr__(self) -> str:
        return f"<RedisBreakerStore prefix={self.prefix!r}>"


def _arguments(spec: BreakerSpec, lease: float | None) -> str:
    mode = "c" if spec.failure_threshold else ("n" if spec.window else "t")
    return " ".join(
        str(rule)
        for rule in [
            mode,
            spec.failure_threshold or 0,
            spec.window or 0,
            repr(spec.window_duration or 0.0),
            repr(spec.failure_rate),
            repr(spec.slow_call_rate),
            spec.min_calls,
            repr(spec.reset_timeout),
            spec.success_threshold,
            spec.half_open_max_calls,
            repr(spec.reset_timeout if lease is None else lease),
        ]
    )


def _totals(counts: Sequence[str]) -> WindowTotals | None:
    calls, failures, slow = (int(count) for count in counts)
    return None if calls < 0 else WindowTotals(calls, failures, slow)


def _observation(reply: list[str]) -> BreakerObservation:
    _, state, _, wait, _, *counts = reply
    return BreakerObservation(_STATES[state], retry_in=float(wait), totals=_totals(counts))
