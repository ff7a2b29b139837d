"""
Vegas: a concurrency limit that keeps a few calls, and no more, waiting at the dependency.

TCP Vegas (Brakmo and Peterson, 1995) estimates how many of its packets sit in queues
as ``window * (1 - base_rtt / rtt)``, the window less what the no-load round trip time
would carry, and steers that estimate between `alpha` and `beta`. Netflix's
concurrency-limits (`VegasLimit`) applies it to calls, with the concurrency limit as
the window; so does failsafe-go's adaptive limiter. This one differs from Netflix's in
two ways, both for a dependency whose latency varies from call to call:

- **It judges round trips, not single calls.** The latency it compares is an average
  over the last round trip (an exponential average with weight ``1 / limit``: a round
  trip is `limit` calls), and each call moves the limit by ``1 / limit`` of a step, so
  the limit moves by about one step per round trip, as TCP Vegas moves its window.
  Netflix's moves a whole step per call, judged on that call's latency alone, so the
  limit follows the noise of single calls.
- **The no-load latency is measured, not the fastest call ever seen.** Every
  `probe_interval` round trips (at random between half and one and a half times that)
  the limit drops to `probe_limit` calls, and the median latency of `probe_samples`
  calls started at that concurrency becomes the baseline, as in Envoy's adaptive
  concurrency filter ("minRTT calculation", at `min_concurrency`, p50 of
  `request_count` calls) and BBR's ProbeRTT; the first probe is simply the first
  calls. Between probes the baseline follows the average latency down. (Envoy also
  probes when its limit sits at the minimum; Vegas's cannot stick there on latency
  alone: with `n` calls in flight at most `n` of them wait, so a dependency that got
  slower for good lowers the limit only to where
  ``limit * (1 - no_load / latency)`` is `beta`, until the next probe.) The fastest
  single call, which Netflix's takes as the baseline (and resets to the latest call
  every ``30 * limit`` calls), is the luckiest call rather than the typical one:
  against latency that varies by a quarter either way, it reads a queue where there is
  none, and a reset to a loaded call reads none where there is one.
"""

from __future__ import annotations

import math
import random as _random
import statistics
from collections.abc import Callable

from .._engine.validate import check_int
from .limit_algorithms import LimitAlgorithm, check_count

__all__ = ["Vegas"]

_NO_QUEUE = 1.0
"""At most this many calls waiting counts as none, and the limit grows fast (as Linux's
Vegas leaves slow start above `gamma` = 1 packet queued, and Netflix's `threshold`)."""


def _threshold(param: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"Vegas({param}=...): expected a number of calls, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"Vegas({param}={value!r}): {param} must be finite and > 0")
    return float(value)


class Vegas(LimitAlgorithm):
    """
    Keep between `alpha` and `beta` calls waiting at the dependency, as TCP Vegas.

    The calls waiting are estimated as ``limit * (1 - no_load / latency)``: `latency`
    averages the last round trip of calls, `no_load` is the latency with (almost) none
    of this client's calls in flight, measured by a periodic probe. Each call in a round
    trip that used at least half the limit moves the limit by ``1 / limit`` of a step:

    - nothing waiting (at most one call): grow by `beta` a round trip;
    - fewer than `alpha` waiting: grow by one a round trip;
    - more than `beta` waiting: shrink by one a round trip;
    - a dropped call (an overload error) shrinks the limit by one at once.

    A probe holds the limit at `probe_limit` until `probe_samples` calls started at that
    concurrency have finished, takes their median latency as the new `no_load`, and
    puts the limit back. It comes every `probe_interval` round trips spent using the
    limit (between half and one and a half times that, at random: clients started
    together do not probe together); a client that uses less than half its limit never
    probes. The first probe is the first `probe_samples` calls, at whatever
    concurrency they come (a starting client's calls are not refused for it), and
    only drops move the limit until it ends. On a dependency whose latency varies from
    call to call this holds a latency target where `Gradient2` drifts
    (docs/overload.md, "Under overload: a simulation").

    Args:
        initial: The starting limit (default 20).
        min_limit: Lower bound, >= 1 (default 1).
        max_limit: Upper bound (default 200).
        alpha: Fewest calls to keep waiting, > 0 (default 2, as Linux's TCP Vegas;
            Netflix's is 3).
        beta: Most calls to keep waiting, > alpha (default 4, as Linux's; Netflix's 6).
        probe_interval: Round trips at the limit between probes, >= 1 (default 300,
            so probes take under 2% of the time: about 5 round trips in 300).
        probe_limit: Calls in flight during a probe, >= 1 (default 3, as Envoy's
            `min_concurrency`); never below `min_limit`, never above the limit.
        probe_samples: Calls a probe measures, >= 1 (default 10).
        random: Returns a float in [0, 1) per probe, for the jitter (default
            `random.random`); give a seeded one for reproducible tests. Any other
            value raises ValueError when a probe ends.

    Raises:
        ValueError: A parameter is out of range.
        TypeError: A parameter has the wrong type.
    """

    __slots__ = ("_baseline", "_countdown", "_latency", "_probe", "_random", "alpha", "beta",
                 "estimate", "probe_interval", "probe_limit", "probe_samples")  # fmt: skip

    def __init__(  # the knobs of TCP Vegas and of Envoy's probe, each with its default
        self,
        *,
        initial: int = 20,
        min_limit: int = 1,
        max_limit: int = 200,
        alpha: float = 2,
        beta: float = 4,
        probe_interval: int = 300,
        probe_limit: int = 3,
        probe_samples: int = 10,
        random: Callable[[], float] = _random.random,
    ) -> None:
        super().__init__("Vegas", initial, min_limit, max_limit)
        self.alpha = _threshold("alpha", alpha)
        self.beta = _threshold("beta", beta)
        if self.beta <= self.alpha:
            raise ValueError(f"Vegas(beta={beta!r}): beta must be > alpha ({alpha!r})")
        self.probe_interval = check_count("Vegas", "probe_interval", probe_interval, minimum=1)
        self.probe_limit = check_int("Vegas", "probe_limit", probe_limit, minimum=1)
        self.probe_samples = check_count("Vegas", "probe_samples", probe_samples, minimum=1)
        if not callable(random):
            raise TypeError(f"Vegas(random=...): expected a function, got {random!r}")
        self._random = random
        self.estimate = float(self.initial)  # the limit before truncation to an int
        self._baseline = 0.0  # the no-load latency; 0 until the first probe ends
        self._latency = 0.0  # the average over the last round trip
        # The latencies of a probe under way. The first starts at once (as Envoy's) but
        # leaves the limit alone: it is not worth refusing a starting client's calls.
        self._probe: list[float] | None = []
        self._countdown = 0.0  # round trips at the limit until the next probe

    def no_load_rtt(self) -> float:
        """
        The no-load latency the limit is judged against, in seconds (0 at first).
        """
        return self._baseline

    def rtt(self) -> float:
        """
        The average latency over the last round trip, in seconds (0 at first).
        """
        return self._latency

    @property
    def probing(self) -> bool:
        """
        Whether a probe of the no-load latency holds the limit down now.
        """
        return self._probe is not None

    def update(self, limit: int, rtt: float, in_flight: int, dropped: bool) -> int:
        if dropped:  # its latency is the deadline's, not the dependency's
            # Counted whatever the latency: a call refused at once (0 on a coarse clock,
            # or a FakeClock) is still a drop, and it used to leave the limit alone.
            self.estimate = max(float(self.min_limit), self.estimate - 1)
        elif not 0 < rtt < math.inf:
            # No information (a clock that did not move or went back), and NaN or inf
            # would stay in the average for good and freeze the limit.
            return limit
        elif self._probe is not None:
            self._probe_sample(self._probe, rtt, in_flight)
        else:
            self._sample(rtt, in_flight)
        return self._limit()

    def _limit(self) -> int:
        if self._probe is None or not self._baseline:  # (the first probe holds nothing)
            return self._clamp(self.estimate)
        return max(self.min_limit, min(self.probe_limit, int(self.estimate)))

    def _sample(self, rtt: float, in_flight: int) -> None:
        window = self.estimate
        self._latency += (rtt - self._latency) / window
        if not self._latency > 0:  # rounding ate it (samples 2**53 times apart, or
            self._latency = rtt  # subnormal): it divides below, so start again from rtt
        self._baseline = min(self._baseline, self._latency)  # the dependency got faster
        if in_flight * 2 < window:
            return  # app-limited: this latency says nothing about more calls
        queued = window * (1 - self._baseline / self._latency)
        estimate = window + self._step(queued) / window
        self.estimate = max(float(self.min_limit), min(float(self.max_limit), estimate))
        self._countdown -= 1 / window
        if self._countdown <= 0:
            self._probe = []

    def _step(self, queued: float) -> float:
        if queued < self.alpha:
            return self.beta if queued <= _NO_QUEUE else 1.0
        return -1.0 if queued > self.beta else 0.0

    def _probe_sample(self, probe: list[float], rtt: float, in_flight: int) -> None:
        if self._baseline and in_flight > self._limit():
            return  # started before the probe drained the calls in flight
        probe.append(rtt)
        if len(probe) >= self.probe_samples:
            # (The middle two's mean overflows past 8.9e307 s: then the lower one.)
            median = statistics.median(probe)
            self._baseline = median if median < math.inf else statistics.median_low(probe)
            # The average must not pull a baseline that rose straight back down.
            self._latency = max(self._latency, self._baseline)
            self._probe = None
            self._countdown = self._next_probe()

    def _next_probe(self) -> float:
        jitter = self._random()
        # Checked here, where it is used (calling it at construction would shift a seeded
        # sequence): NaN never probed again, a negative value probed at every call.
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter < 1:
            raise ValueError(
                f"Vegas(random=...): returned {jitter!r}, expected a float in [0, 1)"
                " (such as random.random)"
            )
        return self.probe_interval * (0.5 + jitter)

    def __repr__(self) -> str:
        return (
            f"Vegas(initial={self.initial}, min_limit={self.min_limit},"
            f" max_limit={self.max_limit}, alpha={self.alpha:g}, beta={self.beta:g},"
            f" probe_interval={self.probe_interval}, probe_limit={self.probe_limit},"
            f" probe_samples={self.probe_samples})"
        )
