"""
``python -m examples.kv demo``: a local cluster loses a node and keeps serving.

Starts ``--nodes`` node processes (5 by default) on free loopback ports, each with
``--peers`` listing all (embedded discovery, no etcd), a data directory under a new
temporary directory and a freshly generated ``KV_CLUSTER_TOKEN``. Then it sends a paced
read/write/delete workload through `KVClient` for ``--duration`` seconds, SIGKILLs one
node at a quarter of it and restarts it (same port, same data directory) past half of
it, and shows it live: a rich terminal view, or plain progress lines without a terminal
(or with ``--plain``). At the end it reads every key back, compares each with its last
acknowledged value and prints a summary.

Exit status: 0 when no acknowledged write was lost; 1 when one was (or a key could not
be read back); 2 for a bad option; 3 when the cluster did not come up; 130 when
interrupted (Ctrl-C, SIGTERM, SIGHUP). On each of these exits the node processes and
the temporary directory are removed; after a SIGKILL the nodes stop by themselves (their
stdin closes) and the directory stays.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from types import FrameType

import aiohttp

from .client import KVClient
from .config import CLIENT_TOKEN_ENV
from .demo_monitor import READING_BACK, ClientEvents, DemoState, Monitor, NodeView
from .demo_view import Outcome, PlainView, RichView, View, summary_lines
from .demo_workload import Workload
from .launch import ClusterStartError, LocalCluster

__all__ = ["add_demo_arguments", "run_demo"]

_START_SECONDS = 30.0
_WORKERS = 16
_KEYS_PER_WORKER = 50
_KILL_AT, _RESTART_AT = 0.25, 0.55  # shares of --duration
EXIT_LOST, EXIT_NO_CLUSTER, EXIT_INTERRUPTED = 1, 3, 130
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)  # SIGINT raises KeyboardInterrupt already


def _bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is outside {low:g}..{high:g}")
        return value

    return parse


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    """
    Declare the ``demo`` command's options on `parser`.
    """
    options: list[tuple[str, Callable[[str], float], float | None, str]] = [
        ("--nodes", _bounded(int, 3, 9), 5, "node processes (3-9, default 5)"),
        ("--duration", _bounded(float, 5, 3600), 60.0, "seconds of workload (default 60)"),
        ("--rate", _bounded(float, 1, 2000), 200.0, "requests per second (default 200)"),
        ("--seed", int, None, "seeds the workload and the node killed (default: random)"),
        ("--port", _bounded(int, 1, 65535 - 9), None, "first of consecutive ports (default: free)"),
    ]
    for option, kind, default, text in options:
        parser.add_argument(option, type=kind, default=default, help=text)
    parser.add_argument("--plain", action="store_true", help="plain progress lines, no live view")


def run_demo(args: argparse.Namespace) -> int:
    """
    Run the demo with parsed options; the exit status.
    """
    seed = args.seed if args.seed is not None else secrets.randbelow(1 << 31)
    root = Path(tempfile.mkdtemp(prefix="kv-demo-"))
    cluster = LocalCluster(
        root, [f"n{i}" for i in range(1, int(args.nodes) + 1)], token=secrets.token_urlsafe(24),
        env={CLIENT_TOKEN_ENV: ""}, own_groups=True,
        first_port=None if args.port is None else int(args.port),
    )  # fmt: skip
    print(f"kv demo: seed {seed}, data in {root}", flush=True)
    try:
        with _signals_interrupt():
            _start(cluster)
            return asyncio.run(_demo(cluster, args, seed))
    except ClusterStartError as error:
        print(f"kv demo: error: the cluster did not come up: {error}", file=sys.stderr)
        return EXIT_NO_CLUSTER
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("kv demo: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        _clean_up(cluster, root)


def _start(cluster: LocalCluster) -> None:
    print(f"kv demo: starting {len(cluster.ids)} node processes", flush=True)
    for node in cluster.ids:
        process = cluster.launch(node)
        print(f"kv demo: {node} pid {process.pid} on {process.address}", flush=True)
    for node in cluster.ids:
        cluster.wait_healthy(node, _START_SECONDS)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    # SIGTERM and SIGHUP (a closed terminal) stop the demo the way Ctrl-C does, so the
    # finally clause removes the nodes and the data (inside the event loop they cancel
    # the main task instead: `_cancelled_by_signals`).
    previous = {s: signal.signal(s, _interrupt) for s in _STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _clean_up(cluster: LocalCluster, root: Path) -> None:
    # Ignore a second Ctrl-C here: it would leave nodes running. This is bounded: each
    # node gets 5 s to stop, then its process group is killed.
    handled = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in handled}
    try:
        cluster.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    pids = " ".join(str(p.pid) for p in cluster.processes.values())
    print(f"kv demo: stopped node processes (pids {pids}); removed {root}", flush=True)


async def _demo(cluster: LocalCluster, args: argparse.Namespace, seed: int) -> int:
    nodes = {
        node: NodeView(node, cluster.address(node), cluster.processes[node].pid, "up")
        for node in cluster.ids
    }
    state = DemoState(nodes, float(args.duration))
    stop = _StopRequest()
    victim = random.Random(seed).choice(cluster.ids)  # noqa: S311  # a demo, not a secret
    plan = state.duration * _KILL_AT, state.duration * _RESTART_AT
    print(
        f"kv demo: plan: kill {victim} at {plan[0]:.1f} s, restart it at {plan[1]:.1f} s,"
        f" stop at {state.duration:g} s, then read every key back",
        flush=True,
    )
    view: View = PlainView() if args.plain or not sys.stdout.isatty() else RichView()
    state.on_event = view.event
    names = {f"kv-node-{node.address}": node.id for node in nodes.values()}
    events = ClientEvents(state, names)
    try:
        async with (
            _cancelled_by_signals(stop),
            KVClient([n.address for n in nodes.values()], timeout=2.0, hooks=[events]) as client,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as session,
        ):
            scenario = _Scenario(cluster, state, client, Monitor(state, session), session, view)
            outcome, workload = await scenario.run(victim, plan, float(args.rate), seed, stop)
            view.refresh(state, workload.snapshot(asyncio.get_running_loop().time()))
    finally:
        view.close()
    if stop.requested:  # the run ended anyway: it was still interrupted
        raise asyncio.CancelledError
    view.print(summary_lines(state, workload, outcome))
    return EXIT_LOST if outcome.lost else 0


class _StopRequest:
    """
    Ctrl-C, SIGTERM or SIGHUP during the run: cancel the main task, stop the workload.

    Cancelling alone did not always stop the demo: on a loaded machine a Ctrl-C once
    left it running to the end of ``--duration``, its workload untouched (asyncio.run's
    own handler cancels the main task once). So the workload is told to stop as well,
    the main task is cancelled again every second while it is not being cancelled, and
    a stop that takes long says on stderr where the main task waits.
    """

    _AGAIN_SECONDS = 1.0
    _SAY_AFTER_SECONDS = 10.0

    def __init__(self) -> None:
        self.requested = False
        self.workload: Workload | None = None
        self._asked_at = 0.0
        self._said = False

    def request(self, main: asyncio.Task[object]) -> None:
        if self.workload is not None:
            self.workload.stop()
        main.cancel()
        if not self.requested:
            self.requested = True
            loop = main.get_loop()
            self._asked_at = loop.time()
            loop.call_later(self._AGAIN_SECONDS, self._again, main)

    def _again(self, main: asyncio.Task[object]) -> None:
        if main.done():
            return
        if main.cancelling() == 0:
            main.cancel()
        loop = main.get_loop()
        waited = loop.time() - self._asked_at
        if waited >= self._SAY_AFTER_SECONDS and not self._said:
            self._said = True
            where = " <- ".join(
                f"{frame.f_code.co_name}:{frame.f_lineno}" for frame in main.get_stack()
            )
            print(f"kv demo: still stopping after {waited:.0f} s, in {where}", file=sys.stderr)
        loop.call_later(self._AGAIN_SECONDS, self._again, main)


@asynccontextmanager
async def _cancelled_by_signals(stop: _StopRequest) -> AsyncIterator[None]:
    # Ctrl-C, SIGTERM and SIGHUP cancel the main task (asyncio.run's own Ctrl-C handler
    # is replaced: see _StopRequest), so that everything unwinds before the nodes stop.
    loop, main = asyncio.get_running_loop(), asyncio.current_task()
    if main is None:  # asyncio.run always runs a task
        raise RuntimeError("the demo runs in asyncio.run")
    for signum in (signal.SIGINT, *_STOP_SIGNALS):
        loop.add_signal_handler(signum, stop.request, main)
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGINT)  # back to KeyboardInterrupt
        for signum in _STOP_SIGNALS:
            loop.remove_signal_handler(signum)
            signal.signal(signum, _interrupt)


class _Scenario:
    """
    The workload, the kill and the restart, the live refresh and the read-back.
    """

    def __init__(  # noqa: PLR0917  # private, built once
        self,
        cluster: LocalCluster,
        state: DemoState,
        client: KVClient,
        monitor: Monitor,
        session: aiohttp.ClientSession,
        view: View,
    ) -> None:
        self.cluster, self.state, self.client = cluster, state, client
        self.monitor, self.session, self.view = monitor, session, view

    async def run(
        self, victim: str, plan: tuple[float, float], rate: float, seed: int, stop: _StopRequest
    ) -> tuple[Outcome, Workload]:
        """
        Run everything; what the summary needs.
        """
        loop = asyncio.get_running_loop()
        workload = stop.workload = Workload(
            self.client, rate=rate, workers=_WORKERS, keys_per_worker=_KEYS_PER_WORKER, seed=seed
        )
        state = self.state
        state.started = loop.time()
        state.phase = "all nodes up"
        state.add(f"workload started: up to {rate:g} requests/s through KVClient", "bold")
        background = [
            loop.create_task(self.monitor.run()),
            loop.create_task(self._refresh(workload)),
        ]
        try:
            chaos = loop.create_task(self._chaos(victim, *plan))
            await workload.run(state.started + state.duration)
            state.phase = READING_BACK
            state.add(f"workload stopped; {READING_BACK}", "bold")
            killed_at, restarted_at, healthy_after = await chaos
            verification = await workload.verify()
        finally:
            for task in background:
                task.cancel()
            results = await asyncio.gather(*background, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):  # a crashed monitor or view: say so
                raise result
        await self.monitor.poll()  # the last word, alone: no poll runs beside it
        state.phase = "done"
        state.add(
            f"read back {verification.checked:,} keys: {len(verification.lost)} lost,"
            f" {len(verification.unreadable)} unreadable",
            "bold green" if not verification.lost and not verification.unreadable else "bold red",
        )
        failovers = (await self.client.statistics()).failovers
        outcome = Outcome(victim, killed_at, restarted_at, healthy_after, verification, failovers)
        return outcome, workload

    async def _refresh(self, workload: Workload) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.state.client["failovers"] = (await self.client.statistics()).failovers
            self.view.refresh(self.state, workload.snapshot(loop.time()))
            await asyncio.sleep(0.25)

    async def _chaos(
        self, victim: str, kill_at: float, restart_at: float
    ) -> tuple[float | None, float | None, float | None]:
        state, node = self.state, self.state.nodes[victim]
        await self._until(kill_at)
        doomed = self.cluster.processes[victim]
        doomed.signal(signal.SIGKILL)
        killed_at = state.elapsed()
        node.status = "down"
        self.monitor.forget(victim)
        state.phase = f"{victim} is down"
        state.add(f"{victim} killed by SIGKILL (pid {node.pid}): no flush, no goodbye", "bold red")
        await asyncio.to_thread(doomed.process.wait, 10.0)
        await self._until(restart_at)
        process = self.cluster.launch(victim)
        restarted_at = state.elapsed()
        node.pid, node.status = process.pid, "restarting"
        state.add(f"{victim} restarted (pid {process.pid}), same port and data directory", "yellow")
        healthy_after = await self._healthy(victim)
        if healthy_after is None:
            state.add(f"{victim} did not come back: {process.output_tail(1)}", "bold red")
            node.status = "down"
            return killed_at, restarted_at, None
        node.status = "up"
        state.phase = "all nodes up"
        state.add(f"{victim} healthy again after {healthy_after:.1f} s", "green")
        return killed_at, restarted_at, healthy_after

    async def _until(self, at: float) -> None:
        await asyncio.sleep(max(0.0, at - self.state.elapsed()))

    async def _healthy(self, node: str) -> float | None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        url = f"http://{self.cluster.address(node)}/health"
        while loop.time() - began < _START_SECONDS:
            if self.cluster.processes[node].process.poll() is not None:
                return None
            try:
                async with self.session.get(url) as response:
                    if response.status == 200:  # noqa: PLR2004
                        return loop.time() - began
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.05)
        return None
