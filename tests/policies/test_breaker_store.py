"""
The `BreakerStore` protocol as users meet it: a store of their own, what the breaker
does with its answers and errors, and pybreaker as an optional extra.
"""

from __future__ import annotations

import asyncio
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from resilient import (
    BreakerAdmission,
    BreakerObservation,
    BreakerSpec,
    BreakerStore,
    CircuitBreaker,
    CircuitOpenError,
    CircuitState,
    WindowTotals,
)
from resilient.testing import FakeClock
from tests._aio import until, within
from tests._paths import REPO_ROOT

CLOSED, OPEN, HALF_OPEN = CircuitState.CLOSED, CircuitState.OPEN, CircuitState.HALF_OPEN


class DictStore:
    """
    A user's in-process store: consecutive mode, one state per breaker name.
    """

    remote = False

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.state: dict[str, tuple[CircuitState, int, float, int]] = {}  # state, gen, opened, run
        self.fail_next = False
        self.fail_records = False

    def bind(self, spec: BreakerSpec) -> None:
        if spec.failure_threshold is None:
            raise ValueError("DictStore keeps consecutive mode only")

    def _get(self, name: str) -> tuple[CircuitState, int, float, int]:
        if self.fail_next:
            raise ConnectionError("store down")
        return self.state.get(name, (CLOSED, 0, 0.0, 0))

    async def admit(self, spec: BreakerSpec) -> BreakerAdmission:
        state, gen, opened, run = self._get(spec.name)
        if state is OPEN:
            wait = opened + spec.reset_timeout - self.clock.monotonic()
            if wait > 0:
                return BreakerAdmission(False, OPEN, retry_in=wait, generation=gen)
            state, gen = HALF_OPEN, gen + 1
            self.state[spec.name] = (state, gen, opened, run)
        return BreakerAdmission(True, state, generation=gen)

    async def record(
        self, spec: BreakerSpec, admission: BreakerAdmission, failed: bool | None, slow: bool
    ) -> BreakerObservation:
        if self.fail_records:
            raise ConnectionError("store down")
        state, gen, opened, run = self._get(spec.name)
        if failed is not None and admission.generation == gen:
            run = run + 1 if failed else 0
            threshold = spec.failure_threshold or 1
            if failed and (state is HALF_OPEN or run >= threshold):
                state, gen, opened = OPEN, gen + 1, self.clock.monotonic()
            elif not failed and state is HALF_OPEN:
                state, gen, run = CLOSED, gen + 1, 0
            self.state[spec.name] = (state, gen, opened, run)
        wait = opened + spec.reset_timeout - self.clock.monotonic() if state is OPEN else 0.0
        return BreakerObservation(state, retry_in=max(0.0, wait), totals=WindowTotals(run, run, 0))

    async def force(self, spec: BreakerSpec, state: CircuitState) -> BreakerObservation:
        _, gen, _, _ = self._get(spec.name)
        self.state[spec.name] = (state, gen + 1, self.clock.monotonic(), 0)
        return BreakerObservation(state)


async def outcome(breaker: CircuitBreaker, fail: bool = False) -> str:
    async def dependency() -> str:
        if fail:
            raise ConnectionError("down")
        return "ok"

    try:
        return await breaker.call(dependency)
    except CircuitOpenError as error:
        return f"rejected {error.retry_in:g}"
    except ConnectionError:
        return "failed"


def test_a_users_store_implements_the_protocol() -> None:
    """
    A class with `remote`, `bind`, `admit`, `record` and `force` is a `BreakerStore`.
    """
    assert isinstance(DictStore(FakeClock()), BreakerStore)
    assert not isinstance(object(), BreakerStore)


async def test_breakers_share_a_users_store() -> None:
    """
    Two breakers over one user-written store share its state: failures add up, an
    opening rejects in the other, a probe closes it, trip() writes it at once.
    """
    clock = FakeClock()
    store = DictStore(clock)
    first, second = (
        CircuitBreaker("db", storage=store, failure_threshold=2, reset_timeout=10, clock=clock)
        for _ in range(2)
    )
    assert await outcome(first, fail=True) == "failed"
    assert await outcome(second, fail=True) == "failed"
    assert second.state is OPEN
    clock.advance(3)
    assert await outcome(first) == "rejected 7"
    clock.advance(7)
    assert await outcome(first) == "ok"
    assert (await outcome(second), second.state) == ("ok", CLOSED)
    first.trip()
    assert store.state["db"][0] is OPEN
    assert await outcome(second) == "rejected 10"


async def test_a_failing_store_leaves_the_decision_to_the_local_state() -> None:
    """
    When the store raises, the call runs and the breaker's own state decides.
    """
    clock = FakeClock()
    store = DictStore(clock)
    breaker = CircuitBreaker("db", storage=store, failure_threshold=2, clock=clock)
    store.fail_next = True
    assert [await outcome(breaker, fail=True) for _ in range(3)] == [
        "failed",
        "failed",
        "rejected 30",
    ]
    assert "failing (ConnectionError), deciding locally" in repr(breaker)


async def test_an_outcome_the_store_cant_record_is_judged_locally() -> None:
    """
    A call the store admitted whose outcome can't be recorded counts in the local state:
    two such failures open the breaker here.
    """
    clock = FakeClock()
    store = DictStore(clock)
    breaker = CircuitBreaker("db", storage=store, failure_threshold=2, clock=clock)
    store.fail_records = True
    assert [await outcome(breaker, fail=True) for _ in range(2)] == ["failed", "failed"]
    assert breaker.state is OPEN
    assert "failing (ConnectionError), deciding locally" in repr(breaker)


class RemoteDictStore(DictStore):
    """
    The same store, declared remote: round trips run as tasks, switches in the background.
    """

    remote = True


def test_a_switch_without_a_running_loop_acts_locally_and_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """
    `trip()` outside an event loop opens this process's breaker; a remote store can't
    be written without a loop, which is logged at WARNING.
    """
    store = RemoteDictStore(FakeClock())
    breaker = CircuitBreaker("db", storage=store, failure_threshold=2)
    breaker.trip()
    assert breaker.state is OPEN
    assert "db" not in store.state
    assert any("no running event loop" in r.getMessage() for r in caplog.records)


async def test_a_remote_stores_switch_is_written_in_the_background() -> None:
    """
    `trip()` with a remote store opens this process's breaker at once and the store soon.
    """
    store = RemoteDictStore(FakeClock())
    breaker = CircuitBreaker("db", storage=store, failure_threshold=2)
    breaker.trip()
    assert breaker.state is OPEN
    await until(lambda: "db" in store.state)
    assert store.state["db"][0] is OPEN


class SuspendingStore(DictStore):
    """
    An in-process store (remote=False) whose force() awaits: a broken promise.
    """

    async def force(self, spec: BreakerSpec, state: CircuitState) -> BreakerObservation:
        await asyncio.sleep(0)
        return await super().force(spec, state)


async def test_an_in_process_store_that_suspends_fails_loudly() -> None:
    """
    A store declaring remote=False must answer without suspending: `trip()` says so.
    """
    breaker = CircuitBreaker("db", storage=SuspendingStore(FakeClock()), failure_threshold=2)
    with pytest.raises(RuntimeError, match=r"remote=False\) suspended"):
        breaker.trip()


def test_a_store_refusing_the_mode_fails_at_construction() -> None:
    """
    `bind` runs at construction: a store that can't keep the mode says so there.
    """
    with pytest.raises(ValueError, match="consecutive mode only"):
        CircuitBreaker(storage=DictStore(FakeClock()), window=10)


def test_without_pybreaker_its_paths_name_the_extra(tmp_path: Path) -> None:
    """
    With pybreaker missing, ``import resilient`` works, `RedisBreakerStore` works, a
    non-store `storage=` is a TypeError naming the ``pybreaker`` extra, and the adapter
    module raises ImportError naming it.
    """
    code = (
        "import sys\n"
        "sys.modules['pybreaker'] = None  # as if not installed\n"
        "import resilient\n"
        "try:\n"
        "    resilient.CircuitBreaker(storage=object())\n"
        "except TypeError as error:\n"
        "    print(error)\n"
        "try:\n"
        "    import resilient._policies.breaker.pybreaker_store\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    completed = subprocess.run(  # our own interpreter and code
        [sys.executable, "-c", code],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 2
    assert 'pip install "resilient[pybreaker]"' in lines[0]
    assert lines[0].startswith("CircuitBreaker(storage=...): expected a BreakerStore")
    assert 'pip install "resilient[pybreaker]"' in lines[1]


class GarbageStore(DictStore):
    """
    A store whose admit answers something that is no `BreakerAdmission`.
    """

    def __init__(self, clock: FakeClock, answer: object) -> None:
        super().__init__(clock)
        self.answer = answer

    async def admit(self, spec: BreakerSpec) -> BreakerAdmission:
        return self.answer  # type: ignore[return-value]  # the misbehaviour under test


class SyncStore(DictStore):
    """
    A store whose admit is a plain function, not a coroutine function.
    """

    def admit(self, spec: BreakerSpec) -> BreakerAdmission:  # type: ignore[override]
        return BreakerAdmission(True, CLOSED)


@pytest.mark.parametrize("remote", [False, True], ids=["in-process", "remote"])
@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda clock: GarbageStore(clock, None),
            r"BreakerStore\.admit\(\) answered None, not a BreakerAdmission",
        ),
        (
            lambda clock: GarbageStore(clock, BreakerObservation(OPEN)),
            r"BreakerStore\.admit\(\) answered BreakerObservation\(.*\), not a BreakerAdmission",
        ),
        (
            SyncStore,
            r"BreakerStore\.admit\(\) returned BreakerAdmission\(.*\), not a coroutine",
        ),
        (
            lambda clock: GarbageStore(clock, BreakerAdmission(True, "closed")),  # type: ignore[arg-type]
            r"BreakerStore\.admit\(\) answered state='closed', not a CircuitState",
        ),
        (
            lambda clock: GarbageStore(clock, BreakerAdmission(False, OPEN, retry_in=math.nan)),
            r"BreakerStore\.admit\(\) answered retry_in=nan",
        ),
    ],
    ids=["none", "wrong-dataclass", "not-async", "state-a-string", "retry-in-nan"],
)
async def test_a_store_answering_the_wrong_type_is_named_and_the_local_state_decides(
    make: Any, message: str, remote: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """
    An answer of the wrong type, or with a state or retry_in the breaker can't follow, is
    a failure of the store like any other: the log names the method and what it
    answered, and the local state decides (the breaker still opens); no AttributeError
    from deep inside the breaker reaches the caller, and no NaN reaches its clock.
    """
    clock = FakeClock()
    store = make(clock)
    store.remote = remote
    breaker = CircuitBreaker("db", storage=store, failure_threshold=2, clock=clock)
    outcomes = [await within(outcome(breaker, fail=True)) for _ in range(3)]
    assert outcomes == ["failed", "failed", "rejected 30"]
    assert re.search(message, caplog.text), caplog.text
    assert re.search(r"failing \((Type|Value)Error\), deciding locally", repr(breaker))


class SuspendingAdmitStore(DictStore):
    """
    An in-process store (remote=False) whose admit() waits, maybe forever.
    """

    async def admit(self, spec: BreakerSpec) -> BreakerAdmission:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_an_in_process_store_that_suspends_in_a_call_fails_loudly_not_forever() -> None:
    """
    A store declaring remote=False whose admit() waits would hold every call unbounded
    (only remote round trips are bounded): it fails loudly at the first call instead.
    """
    breaker = CircuitBreaker("db", storage=SuspendingAdmitStore(FakeClock()))
    with pytest.raises(RuntimeError, match=r"remote=False\) suspended in admit\(\)"):
        await within(breaker.call(ok))


async def ok() -> str:
    return "ok"
