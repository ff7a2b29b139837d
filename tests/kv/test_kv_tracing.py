"""
Tracing of real KV nodes through the OpenTelemetry SDK's environment variables.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from examples.kv import KVClient
from tests.kv._kv import SINGLE, KVCluster, running_cluster

IDS = ["n1", "n2", "n3"]


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KVCluster]:
    root = tmp_path_factory.mktemp("kv")
    with running_cluster(root, IDS, env={"OTEL_TRACES_EXPORTER": "console"}) as kv:
        yield kv


def spans_of(cluster: KVCluster, node: str) -> list[dict[str, object]]:
    """
    The spans a node printed (ConsoleSpanExporter writes one JSON document each).
    """
    text = cluster.processes[node].log_path.read_text(errors="replace")
    decoder, spans, index = json.JSONDecoder(), [], text.find("{")
    while index != -1:
        try:
            span, end = decoder.raw_decode(text, index)
        except ValueError:
            index = text.find("{", index + 1)
            continue
        if isinstance(span, dict) and "context" in span:
            spans.append(span)
        index = text.find("{", end)
    return spans


def trace_ids(cluster: KVCluster, node: str) -> set[str]:
    return {str(span["context"]["trace_id"]) for span in spans_of(cluster, node)}  # type: ignore[index]


async def test_one_trace_runs_from_client_to_coordinator_to_every_replica(
    traced: KVCluster, tracer: tuple[trace.Tracer, InMemorySpanExporter]
) -> None:
    """A client span's trace id shows up in the coordinator's and each replica's spans."""
    client_tracer, _ = tracer
    async with KVClient([traced.address("n1")]) as kv:
        with client_tracer.start_as_current_span("client") as span:
            await kv.put("traced-key", b"v", w=3)
    wanted = f"0x{span.get_span_context().trace_id:032x}"
    assert wanted in trace_ids(traced, "n1")  # the coordinator's SERVER span
    deadline = time.monotonic() + 10
    while not all(wanted in trace_ids(traced, node) for node in ("n2", "n3")):
        assert time.monotonic() < deadline, {n: trace_ids(traced, n) for n in IDS}
        await asyncio.sleep(0.05)  # polling a log file written by another process
    replica = [s for s in spans_of(traced, "n2") if s["name"] == "kv replica apply"]
    assert replica
    assert {s["resource"]["attributes"]["service.name"] for s in replica} == {"kv-n2"}  # type: ignore[index]


def test_no_exporter_prints_no_spans(tmp_path_factory: pytest.TempPathFactory) -> None:
    """OTEL_TRACES_EXPORTER unset: a node records and prints nothing."""
    with running_cluster(tmp_path_factory.mktemp("kv-quiet"), ["q1"], extra_args=SINGLE) as kv:
        assert kv.request("q1", "PUT", "/kv/a", b"v").status == 204
    assert spans_of(kv, "q1") == []


def test_an_unknown_exporter_is_refused_at_start(tmp_path_factory: pytest.TempPathFactory) -> None:
    """OTEL_TRACES_EXPORTER=zipkin: exit code 2 with one line naming the variable."""
    kv = KVCluster(
        tmp_path_factory.mktemp("kv-bad"), ["b1"], env={"OTEL_TRACES_EXPORTER": "zipkin"}
    )
    assert kv.launch("b1").wait(30) == 2  # and closes its stdin pipe
    lines = kv.processes["b1"].log_path.read_text().strip().splitlines()
    assert len(lines) == 1
    assert "OTEL_TRACES_EXPORTER" in lines[0]
