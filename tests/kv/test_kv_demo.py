"""
``python -m examples.kv demo``: real runs (short), its failure paths, and the read-back check.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import cast

import pytest

from examples.kv import KVClient, KVError
from examples.kv.demo import _StopRequest  # the demo's private stop
from examples.kv.demo_monitor import READING_BACK, DemoState, NodeView, read_counters
from examples.kv.demo_view import PlainView
from examples.kv.demo_workload import KeyState, TrafficSnapshot, Workload
from tests._aio import until, within
from tests._servers import wait_until
from tests.kv._kv import ROOT

_BOUND = 60.0  # seconds a demo run may take here before the test gives up on it


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the demo with its temporary directory under `tmp_path`; stopped if it hangs."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "examples.kv", "demo", *args]
    with subprocess.Popen(
        command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        try:
            out, err = process.communicate(timeout=_BOUND)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGTERM)  # the demo's own clean-up stops its nodes
            out, err = process.communicate(timeout=30)
            pytest.fail(f"demo still running after {_BOUND} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def node_pids(output: str) -> set[int]:
    started = re.findall(r"^kv demo: n\d+ pid (\d+) on ", output, re.M)
    restarted = re.findall(r"restarted \(pid (\d+)\)", output)
    return {int(pid) for pid in started + restarted}


def node_running(pid: int) -> bool:
    try:
        return b"examples.kv" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False


def count(pattern: str, output: str) -> int:
    found = re.search(pattern, output)
    assert found, output
    return int(found.group(1).replace(",", ""))


def data_dir(output: str) -> Path:
    found = re.search(r"^kv demo: seed \d+, data in (\S+)$", output, re.M)
    assert found, output
    return Path(found.group(1))


def test_demo_kills_restarts_and_loses_no_acknowledged_write(tmp_path: Path) -> None:
    """A short plain run: a node is SIGKILLed and restarted, every acknowledged write
    reads back, the summary says so, exit 0; no node process or data is left behind."""
    result = run_demo(tmp_path, "--duration", "8", "--plain", "--seed", "3")
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "RESULT: OK, 0 acknowledged writes lost." in out
    assert re.search(r"n\d killed by SIGKILL \(pid \d+\)", out), out
    assert re.search(r"n\d restarted \(pid \d+\), same port and data directory", out), out
    assert re.search(r"n\d healthy again after", out), out
    assert count(r"Writes acknowledged: ([\d,]+)\.", out) > 0
    assert count(r"Read-back: ([\d,]+) keys read back", out) > 0
    pids = node_pids(out)
    assert len(pids) == 6, out  # five nodes and the restarted one
    assert not [pid for pid in pids if node_running(pid)]
    assert not data_dir(out).exists()
    assert not list(tmp_path.iterdir())


def test_demo_that_cannot_start_exits_non_zero_and_leaves_nothing(tmp_path: Path) -> None:
    """A node that can't bind its port: exit 3 with a message naming the node and why;
    the nodes that did start are stopped and the data is removed."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_demo(tmp_path, "--nodes", "3", "--port", str(port - 1), "--plain")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "kv demo: error: the cluster did not come up: node n" in result.stderr
    assert "cannot listen" in result.stderr
    pids = node_pids(result.stdout)
    assert pids, result.stdout
    assert not [pid for pid in pids if node_running(pid)]
    assert not data_dir(result.stdout).exists()
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_demo_stops_its_nodes_and_removes_its_data(
    tmp_path: Path, signum: signal.Signals
) -> None:
    """Ctrl-C (SIGINT) or SIGTERM mid-run: exit 130 with "interrupted"; no node process
    or data is left behind."""
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "examples.kv", "demo", "--plain", "--duration", "60"]
    with subprocess.Popen(
        command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        watchdog = threading.Timer(_BOUND, process.terminate)  # never wait forever for output
        watchdog.start()
        assert process.stdout is not None
        seen = ""
        for line in process.stdout:
            seen += line
            if "workload started" in line:
                process.send_signal(signum)
                break
        out, err = process.communicate(timeout=_BOUND)
        watchdog.cancel()
    out = seen + out
    assert process.returncode == 130, out + err
    assert "kv demo: interrupted" in err
    pids = node_pids(out)
    assert len(pids) == 5, out
    assert not [pid for pid in pids if node_running(pid)]
    assert not data_dir(out).exists()
    assert not list(tmp_path.iterdir())


def test_a_sigkilled_demo_takes_its_nodes_down_with_it(tmp_path: Path) -> None:
    """
    SIGKILL leaves the demo no chance to clean up: its nodes still stop by themselves
    (their stdin pipe from it closes), gracefully, within a few seconds.
    """
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "examples.kv", "demo", "--plain", "--nodes", "3"]
    pids: set[int] = set()
    with subprocess.Popen(
        command, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    ) as process:
        watchdog = threading.Timer(_BOUND, process.kill)  # never wait forever for output
        watchdog.start()
        try:
            assert process.stdout is not None
            seen = ""
            for line in process.stdout:
                seen += line
                if "workload started" in line:
                    break
            pids = node_pids(seen)
            assert len(pids) == 3, seen
            process.kill()
            process.wait(_BOUND)
            wait_until(  # a graceful stop on a loaded machine
                lambda: not any(node_running(pid) for pid in pids),
                seconds=20,
                state=lambda: f"nodes {[p for p in pids if node_running(p)]} outlived the demo",
            )
        finally:
            watchdog.cancel()
            for pid in pids:  # whatever happened, leave no node behind
                if node_running(pid):
                    os.killpg(pid, signal.SIGKILL)  # the demo starts each in its own group
    logs = list(tmp_path.glob("kv-demo-*/n*/node.log"))
    assert len(logs) == 3
    for log in logs:
        text = log.read_text()
        assert "stdin closed: stopping" in text
        assert re.search(r"^kv node n\d stopped$", text, re.M), text  # drained and flushed


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--nodes", "2"], "argument --nodes: 2 is outside 3..9"),
        (["--duration", "soon"], "argument --duration: 'soon' is not a number"),
        (["--rate", "0"], "argument --rate: 0 is outside 1..2000"),
    ],
)
def test_demo_refuses_bad_options(tmp_path: Path, option: list[str], message: str) -> None:
    """A bad option: exit 2 naming the option and the value, before anything starts."""
    result = run_demo(tmp_path, *option)
    assert result.returncode == 2
    assert message in result.stderr
    assert not list(tmp_path.iterdir())


class FakeClient:
    """Answers reads from a dict, as a cluster that lost or kept writes would."""

    def __init__(self, stored: dict[str, bytes | None]) -> None:
        self.stored = stored

    async def get(self, key: str) -> bytes | None:
        if key == "unreachable":
            raise KVError(503, {"error": "read quorum not met"})
        return self.stored.get(key)


async def test_read_back_flags_a_lost_or_older_value() -> None:
    """A key holding an older acknowledged value, or nothing, is lost; one holding a
    value written after its last ack but in doubt is not; one never readable is
    reported unreadable."""
    stored: dict[str, bytes | None] = {"kept": b"v2", "doubt": b"v3", "older": b"v1"}
    workload = Workload(
        cast(KVClient, FakeClient(stored)), rate=1, workers=1, keys_per_worker=1, seed=0
    )
    workload.keys = {
        "kept": KeyState(acked=True, value=b"v2"),
        "doubt": KeyState(acked=True, value=b"v2", doubt={b"v3"}),
        "older": KeyState(acked=True, value=b"v2"),
        "gone": KeyState(acked=True, value=b"v1"),
        "deleted": KeyState(acked=True, value=None),
        "never-acked": KeyState(doubt={b"x"}),
        "unreachable": KeyState(acked=True, value=b"v"),
    }
    result = await workload.verify()
    assert result.lost == ["gone", "older"]
    assert result.unreadable == ["unreachable"]
    assert (result.checked, result.acked_keys) == (7, 6)


def test_key_state_allows_only_the_last_ack_or_values_in_doubt() -> None:
    """What a read may answer: the last acknowledged value or one in doubt since."""
    state = KeyState()
    assert state.allows(None)
    assert not state.allows(b"a")
    state.doubt.add(b"a")
    assert state.allows(b"a")
    assert state.allows(None)
    acked = KeyState(acked=True, value=None)
    assert acked.allows(None)
    assert not acked.allows(b"a")


def test_read_counters_sums_the_policies_counters() -> None:
    """Retries, rejections by reason and breaker openings, summed over policies."""
    pipeline = 'kind="circuit_breaker",policy="peer-n2"'
    text = "\n".join([
        "# TYPE resilient_retries_total counter",
        'resilient_retries_total{policy="peer-n2"} 3.0',
        'resilient_retries_total{policy="peer-n3"} 2.0',
        "# TYPE resilient_rejections_total counter",
        f'resilient_rejections_total{{{pipeline},reason="circuit_open"}} 7.0',
        'resilient_rejections_total{kind="bulkhead",policy="peer-n2",reason="bulkhead_full"} 1.0',
        "# TYPE resilient_circuit_transitions_total counter",
        'resilient_circuit_transitions_total{policy="n2",from_state="closed",to_state="open"} 1.0',
        'resilient_circuit_transitions_total{policy="n2",from_state="half-open",to_state="open"} 2',
        'resilient_circuit_transitions_total{policy="n2",from_state="open",to_state="half-open"} 2',
        "",
    ])  # fmt: skip
    counters = read_counters(text)
    assert counters["retries"] == 5
    assert counters["breaker rejections"] == 7
    assert counters["bulkhead rejections"] == 1
    assert counters["breaker opens"] == 3
    assert counters["timeouts"] == 0


async def test_plain_view_says_the_read_back_is_running_not_zero_traffic() -> None:
    """After the workload the status line names the read-back instead of showing a
    rate and latencies of 0, which read as a stalled cluster."""
    lines: list[str] = []
    view = PlainView(lines.append, every=0.0)
    state = DemoState({"n1": NodeView("n1", "127.0.0.1:1", status="up")}, duration=1.0)
    state.started = asyncio.get_running_loop().time()
    idle = TrafficSnapshot(0.0, 0.0, 0.0, 0.0, 10, 5, 0, {})
    view.refresh(state, idle)
    state.phase = READING_BACK
    view.refresh(state, idle)
    assert "0 req/s" in lines[0]
    assert lines[1].endswith(f"{READING_BACK} | nodes up 1/1")
    assert "req/s" not in lines[1]


class SwallowingClient:
    """A client whose requests absorb one cancellation, as a lost race with a timeout can."""

    def __init__(self) -> None:
        self.requests = 0

    async def put(self, key: str, value: bytes | None = None) -> str:
        self.requests += 1
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # swallowed: the worker goes on
        return "v1"

    get = delete = put


async def test_a_stopped_workload_ends_though_a_request_swallowed_its_cancellation() -> None:
    """SIGTERM's path: the run is cancelled and the workload stopped; a worker whose
    request absorbed the cancellation still returns at its next turn, long before the
    run's end (the demo once ran ~55 s past a SIGTERM on a loaded machine)."""
    client = SwallowingClient()
    workload = Workload(cast(KVClient, client), rate=2000, workers=4, keys_per_worker=5, seed=1)
    loop = asyncio.get_running_loop()
    run = asyncio.ensure_future(workload.run(loop.time() + 60.0))
    await until(lambda: client.requests >= 8)
    run.cancel()
    workload.stop()
    with pytest.raises(asyncio.CancelledError):
        await within(run, 5.0)  # the TaskGroup returns once every worker has


async def test_a_swallowed_stop_cancellation_is_asked_again() -> None:
    """A main task that absorbs the stop's cancellation is cancelled again within the
    re-ask period, and the stop is remembered (the demo then exits 130)."""
    absorbed = 0

    async def main() -> None:
        nonlocal absorbed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                if absorbed:
                    raise
                absorbed += 1
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # in a task

    task = asyncio.ensure_future(main())
    await asyncio.sleep(0)
    stop = _StopRequest()
    stop.request(cast("asyncio.Task[object]", task))
    with pytest.raises(asyncio.CancelledError):
        await within(task, 5.0)
    assert stop.requested
    assert absorbed == 1


async def test_a_stop_that_takes_long_says_where_the_demo_waits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A stop still unfinished after the reporting delay names, once, on stderr, the
    frames the main task waits in (so a stuck stop can be traced in CI's log)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + 2.5

    async def stubborn() -> None:
        while loop.time() < until:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                asyncio.current_task().uncancel()  # type: ignore[union-attr]  # in a task

    task = asyncio.ensure_future(stubborn())
    await asyncio.sleep(0)
    stop = _StopRequest()
    stop._SAY_AFTER_SECONDS = 0.5  # the delay, shortened for the test
    stop.request(cast("asyncio.Task[object]", task))
    await within(task, 10.0)
    err = capsys.readouterr().err
    assert err.count("kv demo: still stopping after") == 1, err
    assert "in stubborn:" in err
