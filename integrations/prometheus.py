"""
Prometheus metrics for `resilient`.

Nothing is registered at import time and every entry point takes ``registry=``, as
prometheus_client recommends for libraries.

Discovery: `track_discovery(view, ..., registry=...)` exports, read at scrape time,

- ``resilient_discovery_connected{service}``: 1 while the view is in touch with its
  registry, 0 while it serves the last known instances;
- ``resilient_discovery_stale_seconds{service}``: how long it has been out of touch
  (0 when connected);
- ``resilient_discovery_instances{service}``: instances in the view.

Needs the ``prometheus`` extra: ``pip install "resilient[prometheus]"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

try:
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - needs an environment without the extra
    raise ImportError(
        "resilient.integrations.prometheus needs prometheus-client:"
        " pip install 'resilient[prometheus]'"
    ) from exc

from resilient import ServiceView

__all__ = ["DiscoveryCollector", "track_discovery"]


class DiscoveryCollector(Collector):
    """
    Exports the connection state and size of `ServiceView`s at scrape time.
    """

    def __init__(self, views: Iterable[ServiceView]) -> None:
        self._views = list(views)

    def add(self, view: ServiceView) -> None:
        """
        Export `view` too.
        """
        self._views.append(view)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """
        Yield the discovery gauges (called by the registry on each scrape).
        """
        connected = GaugeMetricFamily(
            "resilient_discovery_connected",
            "1 while the service view is in touch with its registry, 0 while stale.",
            labels=["service"],
        )
        stale = GaugeMetricFamily(
            "resilient_discovery_stale_seconds",
            "Seconds the service view has served its last known instances.",
            labels=["service"],
        )
        size = GaugeMetricFamily(
            "resilient_discovery_instances",
            "Instances in the service view.",
            labels=["service"],
        )
        for view in self._views:
            status = view.status()
            connected.add_metric([view.service], 1.0 if status.connected else 0.0)
            since = status.stale_since
            age = 0.0 if status.connected or since is None else view.clock.monotonic() - since
            stale.add_metric([view.service], max(0.0, age))
            size.add_metric([view.service], float(len(view.instances)))
        yield connected
        yield stale
        yield size


def track_discovery(*views: ServiceView, registry: CollectorRegistry) -> DiscoveryCollector:
    """
    Register a `DiscoveryCollector` for `views` on `registry` and return it.
    """
    collector = DiscoveryCollector(views)
    registry.register(collector)
    return collector
