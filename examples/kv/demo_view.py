"""
The demo's output: a live terminal view (rich), plain progress lines, and the summary.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from resilient import CircuitState

from .demo_monitor import READING_BACK, DemoState, NodeView, TimelineEntry
from .demo_workload import TrafficSnapshot, Verification, Workload, percentile

__all__ = ["Outcome", "PlainView", "RichView", "View", "summary_lines"]

_TIMELINE_ROWS = 14
_BREAKER_MARKS = {
    CircuitState.CLOSED: ("●", "green"),
    CircuitState.HALF_OPEN: ("◐", "yellow"),
    CircuitState.OPEN: ("✕", "red"),
}
_STATUS_STYLES = {"up": "green", "down": "bold red", "restarting": "yellow", "starting": "yellow"}


@dataclass(frozen=True, slots=True)
class Outcome:
    """
    What the summary reports.

    Attributes:
        victim: The node killed and restarted.
        killed_at: Seconds into the workload it was killed (None: it was not).
        restarted_at: Seconds into the workload it was restarted (None: it was not).
        healthy_after: Seconds from restart to healthy (None: it never was).
        verification: The read-back.
        failovers: Requests the client moved to another node.
    """

    victim: str
    killed_at: float | None
    restarted_at: float | None
    healthy_after: float | None
    verification: Verification
    failovers: int

    @property
    def lost(self) -> int:
        """
        Keys that lost an acknowledged write or could not be read back.
        """
        return len(self.verification.lost) + len(self.verification.unreadable)


class View(Protocol):
    """
    Where the demo reports progress: `RichView` or `PlainView`.
    """

    def refresh(self, state: DemoState, traffic: TrafficSnapshot) -> None:
        """
        Show the current state.
        """

    def event(self, entry: TimelineEntry) -> None:
        """
        Show one new timeline entry.
        """

    def close(self) -> None:
        """
        Stop the live output (the last frame stays).
        """

    def print(self, lines: list[str]) -> None:
        """
        Print lines below the live output.
        """


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _count(totals: dict[str, float], name: str) -> int:
    return round(totals.get(name, 0.0))


class PlainView:
    """
    Progress as plain lines, for no terminal or ``--plain``.

    Events are printed as they happen, a status line every `every` seconds.
    """

    def __init__(self, write: Callable[[str], None] | None = None, every: float = 2.0) -> None:
        self._write = write or (lambda line: print(line, flush=True))
        self._every = every
        self._last = -every

    def refresh(self, state: DemoState, traffic: TrafficSnapshot) -> None:
        """
        A status line, when `every` seconds passed since the last one.
        """
        at = state.elapsed()
        if state.started is None or at - self._last < self._every:
            return
        self._last = at
        up = sum(1 for node in state.nodes.values() if node.status == "up")
        if state.phase == READING_BACK:  # no workload: its rate and latency would read 0
            self._write(f"[{at:5.1f}s] {READING_BACK} | nodes up {up}/{len(state.nodes)}")
            return
        opened = sum(
            1
            for node in state.nodes.values()
            if node.status == "up"
            for breaker in node.breakers.values()
            if breaker is not CircuitState.CLOSED
        )
        self._write(
            f"[{at:5.1f}s] {traffic.rate:.0f} req/s, {traffic.errors_rate:.1f} errors/s,"
            f" p50 {_ms(traffic.p50)}, p99 {_ms(traffic.p99)} | writes acked"
            f" {traffic.writes_acked}, reads {traffic.reads_served},"
            f" errors {sum(traffic.errors.values())} | nodes up {up}/{len(state.nodes)},"
            f" breakers not closed {opened}"
        )

    def event(self, entry: TimelineEntry) -> None:
        """
        One line for the event.
        """
        self._write(f"[{entry.at:5.1f}s] {entry.text}")

    def close(self) -> None:
        """
        Nothing to stop.
        """

    def print(self, lines: list[str]) -> None:
        """
        Print `lines`.
        """
        for line in lines:
            self._write(line)


class RichView:
    """
    A live view of nodes, breakers, traffic, policies and the timeline (rich ``Live``).
    """

    def __init__(self, console: Console | None = None) -> None:
        self._console = console or Console(file=sys.stdout)
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)
        self._live.start()

    def refresh(self, state: DemoState, traffic: TrafficSnapshot) -> None:
        """
        Redraw the view.
        """
        self._live.update(_render(state, traffic))

    def event(self, entry: TimelineEntry) -> None:
        """
        Shown with the next refresh.
        """

    def close(self) -> None:
        """
        Stop redrawing; the last frame stays on screen.
        """
        self._live.stop()

    def print(self, lines: list[str]) -> None:
        """
        Print `lines` in a panel.
        """
        self._console.print(Panel("\n".join(lines), title="summary", expand=False))


def _render(state: DemoState, traffic: TrafficSnapshot) -> RenderableType:
    title = (
        f"resilient KV demo · {len(state.nodes)} node processes · N=3 W=2 R=2 · "
        f"{state.elapsed():.1f} s of {state.duration:g} s · {state.phase}"
    )
    body = Group(
        _nodes_table(state),
        _traffic_table(traffic),
        _policies(state),
        _timeline(state),
    )
    return Panel(body, title=title, title_align="left")


def _nodes_table(state: DemoState) -> Table:
    ids = list(state.nodes)
    table = Table(
        title="nodes; →peer: that node's breaker for the peer", title_justify="left",
        caption="● closed  ◐ half-open (probing)  ✕ open (calls fail at once)",
        caption_justify="left",
    )  # fmt: skip
    for column in ("node", "pid", "status", "ring share", "keys"):
        table.add_column(column, justify="right" if column in {"pid", "keys"} else "left")
    for peer in ids:
        table.add_column(f"→{peer}", justify="center")
    for node in state.nodes.values():
        table.add_row(
            node.id, str(node.pid or "-"),
            Text(node.status, style=_STATUS_STYLES.get(node.status, "")),
            f"{node.ownership:.1%}", "-" if node.keys is None else f"{node.keys:,}",
            *(_breaker_mark(node, peer) for peer in ids),
        )  # fmt: skip
    return table


def _breaker_mark(node: NodeView, peer: str) -> Text:
    if peer == node.id or node.status != "up":
        return Text("·", style="dim")
    mark, style = _BREAKER_MARKS[node.breakers.get(peer, CircuitState.CLOSED)]
    return Text(mark, style=style)


def _traffic_table(traffic: TrafficSnapshot) -> Table:
    table = Table.grid(padding=(0, 3))
    errors = ", ".join(f"{kind} {n}" for kind, n in sorted(traffic.errors.items())) or "none"
    table.add_row(
        f"[bold]{traffic.rate:.0f}[/] req/s", f"errors [bold]{traffic.errors_rate:.1f}[/]/s",
        f"p50 [bold]{_ms(traffic.p50)}[/]", f"p99 [bold]{_ms(traffic.p99)}[/]",
        "(last 2 s, client side)",
    )  # fmt: skip
    table.add_row(
        f"writes acked [bold]{traffic.writes_acked:,}[/]",
        f"reads served [bold]{traffic.reads_served:,}[/]",
        f"stale reads [bold]{traffic.stale_reads}[/]", f"errors: {errors}",
    )  # fmt: skip
    return table


def _policies(state: DemoState) -> Text:
    node, client, cluster = state.node_totals, state.client, state.cluster_totals
    rows = [
        ("client     ", [
            f"failovers {client['failovers']}", f"nodes ejected {client['ejections']}",
            f"timeouts {client['timeouts']}",
        ]),
        ("node→node  ", [
            f"retries {_count(node, 'retries')}", f"breaker opens {_count(node, 'breaker opens')}",
            f"fast-failed by open breakers {_count(node, 'breaker rejections')}",
            f"attempt timeouts {_count(node, 'timeouts')}",
            f"bulkhead full {_count(node, 'bulkhead rejections')}",
        ]),
        ("reads      ", [
            f"hedged to another replica {_count(cluster, 'hedges')}",
            f"read repairs {_count(cluster, 'repairs')}",
        ]),
    ]  # fmt: skip
    text = Text()
    for label, parts in rows:
        text.append(label, style="bold").append(" · ".join(parts) + "\n")
    text.rstrip()
    return text


def _timeline(state: DemoState) -> Table:
    table = Table(title="timeline", title_justify="left", show_header=False, box=None)
    table.add_column(justify="right", style="dim")
    table.add_column()
    for entry in state.timeline[-_TIMELINE_ROWS:]:
        table.add_row(f"{entry.at:5.1f} s", Text(entry.text, style=entry.style))
    return table


def summary_lines(state: DemoState, workload: Workload, outcome: Outcome) -> list[str]:
    """
    The summary, for a newcomer: what ran, what broke, what each policy did, the verdict.
    """
    traffic = workload.snapshot(0.0)
    errors = sum(traffic.errors.values())
    requests = traffic.writes_acked + traffic.reads_served + errors
    kinds = ", ".join(f"{kind}: {n}" for kind, n in sorted(traffic.errors.items()))
    writes = sorted(workload.write_latencies)
    reads = sorted(workload.read_latencies)
    node, totals = state.node_totals, state.cluster_totals
    verification = outcome.verification
    lines = [
        f"Workload: {state.duration:g} s of reads and writes through KVClient against"
        f" {len(state.nodes)} node processes (each key on N=3 nodes, W=2, R=2).",
        f"Requests: {requests:,}. Writes acknowledged: {traffic.writes_acked:,}."
        f" Reads served: {traffic.reads_served:,} ({traffic.stale_reads} out of date).",
        f"Errors: {errors:,} ({kinds}); a failed write is in doubt, never counted as acknowledged."
        if errors
        else "Errors: none.",
        f"Latency: writes p50 {_ms(percentile(writes, 0.5))}, p99 {_ms(percentile(writes, 0.99))};"
        f" reads p50 {_ms(percentile(reads, 0.5))}, p99 {_ms(percentile(reads, 0.99))}.",
        _fault_line(outcome),
        "What each policy did:",
        f"  client (KVClient on DiscoveryClient): moved {outcome.failovers:,} requests to another"
        f" node; {_times(state.client['ejections'], 'ejected a node')}"
        f" (its breaker opened); {state.client['timeouts']} requests ran out of time.",
        _breakers_line(state),
        f"  node-to-node retries: {_count(node, 'retries'):,} retried calls (the retry budget"
        f" refused {_count(node, 'retry budget refusals'):,}); timeouts cut"
        f" {_count(node, 'timeouts'):,} attempts; bulkheads rejected"
        f" {_count(node, 'bulkhead rejections'):,} calls.",
        f"  reads: hedged to another replica {_count(totals, 'hedges'):,} times; read repair"
        f" brought {_count(totals, 'repairs'):,} stale copies up to date.",
        f"Read-back: {verification.checked:,} keys read back, {verification.acked_keys:,} of them"
        " with an acknowledged write, each compared with its last acknowledged value.",
    ]
    lines.append(_verdict(outcome))
    return lines


def _times(count: int, what: str) -> str:
    return f"{what} {count} time" + ("" if count == 1 else "s")


def _breakers_line(state: DemoState) -> str:
    pairs = state.breakers_opened
    if not pairs:
        return "  node-to-node breakers: none opened."
    peers = ", ".join(sorted({peer for _, peer in pairs}))
    node = state.node_totals
    closed = CircuitState.CLOSED
    opened = [(n, p) for n, p in pairs if state.nodes[n].breakers.get(p, closed) is not closed]
    return (
        f"  node-to-node breakers: {len(pairs)} opened for {peers} ({_count(node, 'breaker opens')}"
        f" times with re-opens after failed probes); {_count(node, 'breaker rejections'):,}"
        f" calls failed at once instead of waiting; {len(pairs) - len(opened)} of {len(pairs)}"
        " closed again."
    )


def _fault_line(outcome: Outcome) -> str:
    if outcome.killed_at is None:
        return f"Fault: none injected ({outcome.victim} was never killed)."
    text = f"Fault: {outcome.victim} was killed (SIGKILL) at {outcome.killed_at:.1f} s"
    if outcome.restarted_at is None:
        return text + " and not restarted."
    text += f" and restarted at {outcome.restarted_at:.1f} s with the same data directory"
    if outcome.healthy_after is None:
        return text + ", but never became healthy."
    return text + f", serving again {outcome.healthy_after:.1f} s later."


def _verdict(outcome: Outcome) -> str:
    verification = outcome.verification
    if not outcome.lost:
        return "RESULT: OK, 0 acknowledged writes lost."
    parts = []
    if verification.lost:
        parts.append(
            f"{len(verification.lost)} acknowledged writes lost"
            f" (e.g. {', '.join(verification.lost[:5])})"
        )
    if verification.unreadable:
        parts.append(
            f"{len(verification.unreadable)} keys could not be read back"
            f" (e.g. {', '.join(verification.unreadable[:5])})"
        )
    return "RESULT: FAILED, " + "; ".join(parts) + "."
