"""
What the demo watches, turned into a timeline of events.

Every node's ``/cluster`` and ``/metrics``, and the client's own policies (through a
`resilient` hook given to its `KVClient`).

A breaker flapping between open and half-open while its peer is down (a probe every
`reset_timeout`) is one event, "opened", until it closes again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from resilient import CircuitState, Event, Rejected, StateChanged, TimedOut

__all__ = ["READING_BACK", "ClientEvents", "DemoState", "Monitor", "NodeView", "TimelineEntry"]

READING_BACK = "reading every key back"
"""The phase after the workload: its traffic figures stand still while keys are read."""

_POLL_SECONDS = 0.5
_CLOSED = CircuitState.CLOSED


@dataclass(slots=True)
class NodeView:
    """
    One node as the demo sees it.

    Attributes:
        id: The node's id.
        address: Its ``host:port``.
        pid: Its process id (None before it starts).
        status: ``starting``, ``up``, ``down`` (killed), ``restarting``, ``stopped``.
        ownership: Its share of the ring.
        keys: Keys it stores (records and tombstones), from its ``/cluster``.
        breakers: Its breaker's state for each peer.
    """

    id: str
    address: str
    pid: int | None = None
    status: str = "starting"
    ownership: float = 0.0
    keys: int | None = None
    breakers: dict[str, CircuitState] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """
    One thing that happened, `at` seconds into the workload.
    """

    at: float
    text: str
    style: str = ""


@dataclass
class DemoState:
    """
    Everything the view shows, kept current by the demo and its `Monitor`.

    Attributes:
        nodes: Every node, by id.
        started: The loop time the workload started (None before).
        duration: Seconds the workload runs.
        phase: What is going on, in a few words.
        timeline: Events, oldest first.
        node_totals: Sums over every node's ``/metrics`` (restarts accounted for).
        cluster_totals: Hedges and read repairs, summed over the nodes' ``/cluster``.
        client: What the client's policies did (failovers, ejections, timeouts).
        breakers_opened: (node, peer) of every node-to-node breaker that opened.
        on_event: Called with each new timeline entry (the plain output prints it).
    """

    nodes: dict[str, NodeView]
    duration: float
    started: float | None = None
    phase: str = "starting the cluster"
    timeline: list[TimelineEntry] = field(default_factory=list)
    node_totals: dict[str, float] = field(default_factory=dict)
    cluster_totals: dict[str, float] = field(default_factory=dict)
    client: Counter[str] = field(default_factory=Counter)
    breakers_opened: set[tuple[str, str]] = field(default_factory=set)
    on_event: Callable[[TimelineEntry], None] | None = None

    def elapsed(self) -> float:
        """
        Seconds since the workload started (0 before).
        """
        if self.started is None:
            return 0.0
        return asyncio.get_running_loop().time() - self.started

    def add(self, text: str, style: str = "") -> None:
        """
        Add an event to the timeline.
        """
        entry = TimelineEntry(self.elapsed(), text, style)
        self.timeline.append(entry)
        if self.on_event is not None:
            self.on_event(entry)


class ClientEvents:
    """
    A `resilient` hook for the demo's `KVClient` (its `hooks=`).

    It hears exactly that client's policies: its node breakers and its timeout.

    Args:
        state: Where to count and report.
        names: Node id by the client breaker's name (``kv-node-host:port``).
    """

    event_types = (StateChanged, Rejected, TimedOut)

    def __init__(self, state: DemoState, names: dict[str, str]) -> None:
        self._state = state
        self._names = names

    def __call__(self, event: Event) -> None:
        """
        Count `event`; a client breaker opening or closing goes on the timeline.
        """
        node = self._names.get(event.name)
        if isinstance(event, TimedOut):
            self._state.client["timeouts"] += 1
        elif isinstance(event, Rejected):
            self._state.client["rejections"] += 1
        elif isinstance(event, StateChanged) and node is not None:
            if event.old is CircuitState.CLOSED:
                self._state.client["ejections"] += 1
                self._state.add(f"client ejected {node} (its breaker opened)", "red")
            elif event.new is CircuitState.CLOSED:
                self._state.add(f"client sends to {node} again (breaker closed)", "green")


# Counters read from every node's /metrics: (metric family, label filter) -> total name.
_COUNTERS: dict[str, tuple[str, dict[str, str]]] = {
    "retries": ("resilient_retries", {}),
    "breaker rejections": ("resilient_rejections", {"reason": "circuit_open"}),
    "bulkhead rejections": ("resilient_rejections", {"reason": "bulkhead_full"}),
    "retry budget refusals": ("resilient_rejections", {"reason": "retry_budget"}),
    "timeouts": ("resilient_timeouts", {}),
    "breaker opens": ("resilient_circuit_transitions", {"to_state": "open"}),
}


_STATES = {state.value: state for state in CircuitState}  # /cluster's "breaker" values


def read_counters(text: str) -> dict[str, float]:
    """
    The `_COUNTERS` of one ``/metrics`` page, summed over their other labels.
    """
    totals = dict.fromkeys(_COUNTERS, 0.0)
    families = {family.name: family for family in text_string_to_metric_families(text)}
    for total, (name, labels) in _COUNTERS.items():
        family = families.get(name)
        for sample in family.samples if family else ():
            if sample.name.endswith("_total") and labels.items() <= sample.labels.items():
                totals[total] += sample.value
    return totals


class Monitor:
    """
    Poll every node twice a second and keep `state` current.

    Args:
        state: What to update.
        session: An aiohttp session without policies (the demo watches, it doesn't heal).
    """

    def __init__(self, state: DemoState, session: aiohttp.ClientSession) -> None:
        self._state = state
        self._session = session
        self._seen: dict[str, dict[str, float]] = {}  # node -> counter -> last value
        self._cluster_seen: dict[str, dict[str, float]] = {}
        self._opened: dict[str, list[str]] = {}  # peer -> nodes whose breaker opened
        self._closed: dict[str, list[str]] = {}

    async def run(self) -> None:
        """
        Poll until cancelled.
        """
        while True:
            began = time.monotonic()
            await self.poll()
            await asyncio.sleep(max(0.0, _POLL_SECONDS - (time.monotonic() - began)))

    async def poll(self) -> None:
        """
        Read every running node once, then report breaker changes.
        """
        await asyncio.gather(*(self._poll_node(node) for node in self._state.nodes.values()))
        self._report_breakers()

    async def _poll_node(self, node: NodeView) -> None:
        if node.status in {"down", "stopped"}:
            return
        base = f"http://{node.address}"
        try:
            async with self._session.get(f"{base}/cluster") as response:
                view = await response.json()
            async with self._session.get(f"{base}/metrics") as response:
                metrics = await response.text()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return  # down or busy: the next poll tries again
        self._apply_cluster(node, view)
        self._accumulate(self._state.node_totals, self._seen, node.id, read_counters(metrics))

    def _apply_cluster(self, node: NodeView, view: dict[str, object]) -> None:
        members = view.get("members")
        if not isinstance(members, list):
            return
        for member in members:
            peer, breaker = str(member.get("id")), member.get("breaker")
            if peer == node.id:
                node.ownership = float(member.get("ownership", 0.0))
            elif breaker in _STATES:
                self._note_breaker(node, peer, _STATES[breaker])
        node.keys = int(str(view.get("keys_stored", 0)))
        counts = {name: float(str(view.get(name, 0))) for name in ("hedges", "repairs")}
        self._accumulate(self._state.cluster_totals, self._cluster_seen, node.id, counts)

    @staticmethod
    def _accumulate(
        totals: dict[str, float],
        seen: dict[str, dict[str, float]],
        node: str,
        now: dict[str, float],
    ) -> None:
        # A counter lower than last time means the process restarted from zero, as
        # Prometheus's rate() assumes: the new value is all increase.
        last = seen.setdefault(node, {})
        for name, value in now.items():
            previous = last.get(name, 0.0)
            increase = value - previous if value >= previous else value
            totals[name] = totals.get(name, 0.0) + increase
            last[name] = value

    def _note_breaker(self, node: NodeView, peer: str, state: CircuitState) -> None:
        # Noted as soon as seen, reported by the next poll's end: a poll cancelled
        # half-way loses no transition.
        was = node.breakers.get(peer, _CLOSED)
        node.breakers[peer] = state
        if state is not _CLOSED and was is _CLOSED:
            self._opened.setdefault(peer, []).append(node.id)
            self._state.breakers_opened.add((node.id, peer))
        elif state is _CLOSED and was is not _CLOSED:
            self._closed.setdefault(peer, []).append(node.id)

    def _report_breakers(self) -> None:
        for peer, nodes in sorted(self._opened.items()):
            self._state.add(
                f"breaker for {peer} opened on {', '.join(sorted(nodes))}: calls to it fail"
                " at once",
                "red",
            )
        for peer, nodes in sorted(self._closed.items()):
            self._state.add(f"breaker for {peer} closed on {', '.join(sorted(nodes))}", "green")
        self._opened.clear()
        self._closed.clear()

    def forget(self, node: str) -> None:
        """
        `node` was killed: its breakers start closed when it comes back.
        """
        self._state.nodes[node].breakers.clear()
