"""
Prometheus metrics for `resilient`: every decision a policy makes, and live state.

Nothing is registered at import time and every entry point takes a registry, as
prometheus_client recommends for libraries.

    registry = CollectorRegistry()
    metrics = ResilienceMetrics(registry)
    metrics.install()               # every policy's events (or hooks=[metrics] on one)
    metrics.track(breaker, bulkhead, my_pipeline)   # live state, read at scrape time

Policies (`ResilienceMetrics`; ``resilient`` is the default namespace):

- ``resilient_calls_total{kind,policy,outcome}``: calls that left a policy, outcome
  ``success``, ``failure``, ``rejected``, ``timeout`` or ``cancelled``;
- ``resilient_call_duration_seconds{kind,policy}``: histogram of their durations
  (rejected and cancelled calls are not observed);
- ``resilient_retries_total{policy}``, ``resilient_timeouts_total{policy}``,
  ``resilient_hedges_total{policy}``, ``resilient_fallbacks_total{policy}``;
- ``resilient_rejections_total{kind,policy,reason}``, reason ``circuit_open``,
  ``bulkhead_full``, ``retry_budget``, ``rate_limited``, ``store_unavailable``,
  ``concurrency_limit`` or ``throttled``;
- ``resilient_circuit_state{policy,state}``: 1 for the current state (``closed``,
  ``open``, ``half_open``), 0 for the other two;
  ``resilient_circuit_transitions_total{policy,from_state,to_state}``;
- ``resilient_bulkhead_in_flight{policy}``, ``resilient_bulkhead_queued{policy}``,
  ``resilient_bulkhead_max_concurrent{policy}`` (tracked bulkheads).

Discovery: `track_discovery(view, ..., registry=...)` exports, read at scrape time,

- ``resilient_discovery_connected{service}``: 1 while the view is in touch with its
  registry, 0 while it serves the last known instances;
- ``resilient_discovery_stale_seconds{service}``: how long it has been out of touch
  (0 when connected);
- ``resilient_discovery_instances{service}``: instances in the view.

docs/metrics.md describes each metric with example PromQL.

Needs the ``prometheus`` extra: ``pip install "resilient[prometheus]"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Final

try:
    from prometheus_client.core import GaugeMetricFamily
    from prometheus_client.metrics_core import Metric
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - needs an environment without the extra
    raise ImportError(
        "resilient.integrations.prometheus needs prometheus-client:"
        " pip install 'resilient[prometheus]'"
    ) from exc

from resilient import Bulkhead, CircuitBreaker, Pipeline, Policy, ServiceView, add_hook

from ._prometheus_export import families
from ._prometheus_tally import Tally

__all__ = ["DEFAULT_BUCKETS", "DiscoveryCollector", "ResilienceMetrics", "track_discovery"]

DEFAULT_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
"""Upper bounds in seconds: from a half-millisecond cache hit to a generous timeout."""

_NAMESPACE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")


class ResilienceMetrics(Tally):
    """
    A hook that exports every policy decision to a Prometheus registry.

    Pass it where hooks go (``hooks=[metrics]``, ``policy.add_hook(metrics)``) or make
    it global with `install`; either way, not both, or a policy's events count twice.
    Policies report calls to it as a `resilient.CallListener` (no event objects) and
    decisions as events. Counts are kept in plain numbers and become metric families
    when the registry is scraped.

    Args:
        registry: Where to register; required, so nothing lands on the global
            registry by accident.
        namespace: Prefix of every metric name.
        buckets: Upper bounds, in seconds and ascending, of the duration histogram;
            ``+Inf`` is added when missing.

    Raises:
        TypeError: `registry` is not a `CollectorRegistry`.
        ValueError: `namespace` is not a valid metric name prefix, `buckets` are not
            ascending positive numbers, or the registry already has these metric names
            (e.g. another `ResilienceMetrics` with the same namespace).
    """

    __slots__ = ("_remove", "_tracked", "namespace", "registry")

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        namespace: str = "resilient",
        buckets: Iterable[float] = DEFAULT_BUCKETS,
    ) -> None:
        if not isinstance(registry, CollectorRegistry):
            raise TypeError(
                f"ResilienceMetrics(registry=...): expected a CollectorRegistry, got {registry!r}"
            )
        if not isinstance(namespace, str) or not _NAMESPACE.fullmatch(namespace):
            raise ValueError(
                f"ResilienceMetrics(namespace={namespace!r}): must match [a-zA-Z_:][a-zA-Z0-9_:]*"
            )
        super().__init__(_check_buckets(buckets))
        self.namespace = namespace
        self.registry = registry
        self._tracked: list[Policy] = []
        self._remove: Callable[[], None] | None = None
        registry.register(self)

    @property
    def buckets(self) -> tuple[float, ...]:
        """
        The duration histogram's finite upper bounds, in seconds.
        """
        return self._bounds

    def install(self) -> Callable[[], None]:
        """
        Receive the events of every policy in the process (`resilient.add_hook`).

        Installing again while installed changes nothing (events still count once).

        Returns:
            A function that uninstalls it again.
        """
        if self._remove is None:
            remove = add_hook(self)

            def uninstall() -> None:
                if self._remove is uninstall:  # a stale remover must not undo a reinstall
                    remove()
                    self._remove = None

            self._remove = uninstall
        return self._remove

    def track(self, *policies: Policy) -> None:
        """
        Export the live state of `policies` at every scrape.

        Breakers export ``circuit_state`` from `CircuitBreaker.state`; bulkheads
        ``bulkhead_in_flight``, ``bulkhead_queued`` and ``bulkhead_max_concurrent``; a
        pipeline's members are tracked one by one. Every tracked policy's counters
        also appear at 0 before its first event, so ``rate()`` counts the first one.
        Tracking holds a reference to the policy; tracking it again is a no-op.

        Args:
            *policies: Policies or pipelines.

        Raises:
            TypeError: An argument is not a policy.
            ValueError: Another breaker or bulkhead with the same name is tracked
                already: their series would clash.
        """
        members: list[Policy] = []
        for policy in policies:
            if not isinstance(policy, Policy):
                raise TypeError(f"ResilienceMetrics.track(): {policy!r} is not a policy")
            members.extend(policy.policies if isinstance(policy, Pipeline) else (policy,))
        for member in members:
            if any(member is seen for seen in self._tracked):
                continue
            _check_clash(member, self._tracked)
            self._tracked.append(member)

    def collect(self) -> Iterator[Metric]:
        """
        Yield every metric family (called by the registry on each scrape).
        """
        # A copy: track() may append from the event loop while another thread scrapes.
        tracked = list(self._tracked)
        return families(self.namespace, self._bounds, self.snapshot(), tracked)

    def describe(self) -> Iterator[Metric]:
        """
        Yield the families without samples, so the registry can catch name clashes.
        """
        return families(self.namespace, self._bounds, None, ())

    def __repr__(self) -> str:
        installed = " installed" if self._remove is not None else ""
        return (
            f"<ResilienceMetrics namespace={self.namespace!r} tracked={len(self._tracked)}"
            f" shards={self.shard_count}{installed}>"
        )


def _check_buckets(buckets: Iterable[float]) -> tuple[float, ...]:
    given = list(buckets)
    try:
        bounds = [float(b) for b in given]
    except (TypeError, ValueError):
        bounds = []  # reported below, naming the parameter
    if bounds and math.isinf(bounds[-1]) and bounds[-1] > 0:
        bounds.pop()  # +Inf is always the last bucket; accepting it is friendlier
    if not bounds or any(
        not math.isfinite(b) or b <= 0 or (i and b <= bounds[i - 1]) for i, b in enumerate(bounds)
    ):
        raise ValueError(
            f"ResilienceMetrics(buckets={given!r}): expected ascending finite numbers > 0"
        )
    return tuple(bounds)


def _check_clash(policy: Policy, tracked: list[Policy]) -> None:
    if not isinstance(policy, CircuitBreaker | Bulkhead):
        return  # only breakers and bulkheads export live series keyed by name
    for other in tracked:
        if other.kind == policy.kind and other.name == policy.name:
            raise ValueError(
                f"ResilienceMetrics.track(): another {policy.kind} named {policy.name!r} is"
                " tracked already; give each one its own name"
            )


class DiscoveryCollector(Collector):
    """
    Exports the connection state and size of `ServiceView`s at scrape time.
    """

    def __init__(self, views: Iterable[ServiceView]) -> None:
        self._views: list[ServiceView] = []
        for view in views:
            self.add(view)

    def add(self, view: ServiceView) -> None:
        """
        Export `view` too (once, however often it is added).
        """
        if all(view is not known for known in self._views):
            self._views.append(view)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """
        Name the families (empty) so a second collector of them is refused on register.
        """
        return iter(self._families())

    def collect(self) -> Iterator[GaugeMetricFamily]:
        """
        Yield the discovery gauges (called by the registry on each scrape).
        """
        connected, stale, size = self._families()
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

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
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
        return connected, stale, size


def track_discovery(*views: ServiceView, registry: CollectorRegistry) -> DiscoveryCollector:
    """
    Register a `DiscoveryCollector` for `views` on `registry` and return it.
    """
    collector = DiscoveryCollector(views)
    registry.register(collector)
    return collector
