"""
What short-lived threads cost `ResilienceMetrics`: memory held and scrape time.

Each of THREADS threads runs one event loop and one call through a `Retry` that reports
to the metrics, then ends (as in a thread pool that recycles its workers, or
``asyncio.run`` in a request thread). Reported per run: the memory the metrics still
hold afterwards (tracemalloc, after a collection: everything the process gained, and the
part allocated by the tally module itself) and the median time of a scrape
(`generate_latest`), against the same with one thread. The process-wide figure can
include one-off allocations of asyncio's (about 1 MiB in some runs), hence both.

    python -m benchmarks.metrics_threads            # 3 runs of 5,000 threads, ~30 s
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import threading
import time
import tracemalloc

from prometheus_client import CollectorRegistry, generate_latest

from resilient import Retry
from resilient.integrations.prometheus import ResilienceMetrics

SCRAPES = 21


async def _ok() -> str:
    return "ok"


def _scrape_ms(registry: CollectorRegistry) -> float:
    times = []
    for _ in range(SCRAPES):
        started = time.perf_counter()
        generate_latest(registry)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def run(threads: int) -> tuple[float, float, float, int]:
    """
    One run: return (KiB held, KiB held by the tally, median scrape in ms, calls counted).
    """
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    registry = CollectorRegistry()
    metrics = ResilienceMetrics(registry)
    retry = Retry(2, name="short", hooks=[metrics])
    for _ in range(threads):
        worker = threading.Thread(target=asyncio.run, args=(retry.call(_ok),))
        worker.start()
        worker.join()
    gc.collect()
    scrape = _scrape_ms(registry)  # a scrape may fold what dead threads left
    gc.collect()
    held = (tracemalloc.get_traced_memory()[0] - before) / 1024
    mine = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(inclusive=True, filename_pattern="*_prometheus_tally.py")]
    )
    tally = sum(stat.size for stat in mine.statistics("filename")) / 1024
    tracemalloc.stop()
    counted = metrics.snapshot().calls["retry", "short"][0][0]
    return held, tally, scrape, counted


def main() -> None:
    """
    Print the figures for 1 thread and for ``--threads`` threads, ``--runs`` times each.
    """
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    options = parser.parse_args()
    for threads in (1, options.threads):
        for index in range(options.runs):
            held, tally, scrape, counted = run(threads)
            print(  # the benchmark's report
                f"threads={threads:>6} run={index + 1} held={held:8.1f} KiB"
                f" (tally {tally:8.1f} KiB) scrape={scrape:8.2f} ms counted={counted}"
            )


if __name__ == "__main__":
    main()
