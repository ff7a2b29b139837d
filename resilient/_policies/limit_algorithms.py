"""
How an `AdaptiveConcurrency` limit moves: AIMD (loss-based) and Gradient2 (by latency).

(Vegas, latency-based and the default, is in `vegas`.) AIMD and Gradient2 follow
Netflix's concurrency-limits library (`AIMDLimit`, `Gradient2Limit`,
https://github.com/Netflix/concurrency-limits), which borrows from TCP congestion
control: the concurrency limit plays the congestion window. Each finished call is one
sample (its latency, the calls in flight when it started, and whether it was dropped:
failed with an overload error); the algorithm returns the new limit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from .._engine.validate import check_fraction, check_int, check_seconds

__all__ = ["AIMD", "Gradient2", "LimitAlgorithm"]


_MAX_COUNT = 2**53
"""The largest count the algorithms take: they compute in floats, exact up to here."""


def check_count(owner: str, param: str, value: object, *, minimum: int) -> int:
    """
    Return `value` if it is an int of at least `minimum` and at most 2**53.
    """
    # A bigger int (10**400) was accepted, then broke every call's sample with an
    # OverflowError once the algorithm turned it into a float.
    count = check_int(owner, param, value, minimum=minimum)
    if count > _MAX_COUNT:
        raise ValueError(f"{owner}({param}={value!r}): {param} must be <= 2**53")
    return count


class LimitAlgorithm:
    """
    The interface `AdaptiveConcurrency` drives; `Vegas`, `AIMD` and `Gradient2` implement it.

    Attributes:
        initial: The limit before any sample.
        min_limit: The limit never goes below this.
        max_limit: The limit never goes above this.
    """

    __slots__ = ("_driver", "initial", "max_limit", "min_limit")

    def __init__(self, owner: str, initial: int, min_limit: int, max_limit: int) -> None:
        self.min_limit = check_int(owner, "min_limit", min_limit, minimum=1)
        self.max_limit = check_count(owner, "max_limit", max_limit, minimum=self.min_limit)
        self.initial = check_int(owner, "initial", initial, minimum=self.min_limit)
        # The policy this instance drives (a weak reference), set by AdaptiveConcurrency:
        # its state (Vegas's estimate, Gradient2's average) belongs to one policy.
        self._driver: Callable[[], object] | None = None
        if self.initial > self.max_limit:
            raise ValueError(
                f"{owner}(initial={initial!r}): initial must be <= max_limit ({max_limit})"
            )

    def update(self, limit: int, rtt: float, in_flight: int, dropped: bool) -> int:
        """
        Return the limit after one sample.

        Args:
            limit: The limit now.
            rtt: The call's latency, in seconds.
            in_flight: Calls in flight when it started (itself included).
            dropped: The call failed with an overload error.
        """
        raise NotImplementedError

    def _clamp(self, limit: float) -> int:
        return max(self.min_limit, min(self.max_limit, int(limit)))


class AIMD(LimitAlgorithm):
    """
    Additive increase, multiplicative decrease, as Netflix's `AIMDLimit`.

    A dropped call, or one slower than `timeout`, multiplies the limit by `backoff`;
    any other sample adds 1, but only while at least half the limit is in use (an idle
    client learns nothing about the dependency's capacity).

    Args:
        initial: The starting limit (default 20).
        min_limit: Lower bound, >= 1 (default 1).
        max_limit: Upper bound (default 200).
        backoff: Factor applied on a drop, in (0, 1) (default 0.9).
        timeout: Latency, in seconds, that counts as a drop (default: none).

    Raises:
        ValueError: A parameter is out of range.
    """

    __slots__ = ("backoff", "timeout")

    def __init__(
        self,
        *,
        initial: int = 20,
        min_limit: int = 1,
        max_limit: int = 200,
        backoff: float = 0.9,
        timeout: float | None = None,
    ) -> None:
        super().__init__("AIMD", initial, min_limit, max_limit)
        # Checked before check_fraction, whose "(0, 1]" would invite a backoff of 1.
        number = isinstance(backoff, int | float) and not isinstance(backoff, bool)
        if number and not 0 < backoff < 1:
            raise ValueError(
                f"AIMD(backoff={backoff!r}): backoff must be in (0, 1)"
                " (at 1 a drop would never lower the limit)"
            )
        self.backoff = check_fraction("AIMD", "backoff", backoff)
        self.timeout = None if timeout is None else check_seconds("AIMD", "timeout", timeout)

    def update(self, limit: int, rtt: float, in_flight: int, dropped: bool) -> int:
        if dropped or (self.timeout is not None and rtt > self.timeout):
            return self._clamp(limit * self.backoff)
        if in_flight * 2 >= limit:
            return self._clamp(limit + 1)
        return limit

    def __repr__(self) -> str:
        return (
            f"AIMD(initial={self.initial}, min_limit={self.min_limit},"
            f" max_limit={self.max_limit}, backoff={self.backoff:g}, timeout={self.timeout})"
        )


class Gradient2(LimitAlgorithm):
    """
    Track the ratio of long-term to recent latency, as Netflix's `Gradient2Limit`.

    The long-term latency is an exponential average over `long_window` samples (a plain
    mean over the first ten). Each sample:

    - when the long-term average exceeds twice the sample, it decays by 5% (the
      dependency got faster: forget the old baseline);
    - while fewer than half the limit are in flight, the limit stays (app-limited);
    - else ``gradient = clamp(tolerance * long / sample, 0.5, 1)``, the target is
      ``limit * gradient + queue_size``, and the limit moves `smoothing` of the way
      there, within [min_limit, max_limit].

    So latency up to `tolerance` times the baseline lets the limit grow by up to
    `queue_size` a sample; beyond that the limit shrinks, by at most half. Like the
    original, drops are not used: an overloaded dependency shows up as latency (a
    timeout's sample is the time it took). Use `AIMD` to react to errors.

    Args:
        initial: The starting limit (default 20).
        min_limit: Lower bound, >= 1 (default 1).
        max_limit: Upper bound (default 200).
        smoothing: Share of the way to the target taken per sample, in (0, 1]
            (default 0.2).
        tolerance: Latency growth, as a ratio >= 1, tolerated before shrinking
            (default 1.5).
        long_window: Samples the long-term average spans, >= 1 (default 600).
        queue_size: Growth per sample when latency is within tolerance (default 4).

    Raises:
        ValueError: A parameter is out of range.
    """

    __slots__ = ("_long", "_samples", "estimate", "long_window", "queue_size", "smoothing",
                 "tolerance")  # fmt: skip

    _WARMUP = 10  # samples averaged plainly before the exponential average takes over

    def __init__(  # Netflix's knobs, each with its default
        self,
        *,
        initial: int = 20,
        min_limit: int = 1,
        max_limit: int = 200,
        smoothing: float = 0.2,
        tolerance: float = 1.5,
        long_window: int = 600,
        queue_size: int = 4,
    ) -> None:
        super().__init__("Gradient2", initial, min_limit, max_limit)
        self.smoothing = check_fraction("Gradient2", "smoothing", smoothing)
        if isinstance(tolerance, bool) or not isinstance(tolerance, int | float):
            raise TypeError(f"Gradient2(tolerance=...): expected a number, got {tolerance!r}")
        if not (math.isfinite(tolerance) and tolerance >= 1):
            raise ValueError(f"Gradient2(tolerance={tolerance!r}): tolerance must be >= 1")
        self.tolerance = float(tolerance)
        self.long_window = check_count("Gradient2", "long_window", long_window, minimum=1)
        self.queue_size = check_count("Gradient2", "queue_size", queue_size, minimum=0)
        self.estimate = float(self.initial)  # the limit before truncation to an int
        self._long = 0.0
        self._samples = 0

    def long_rtt(self) -> float:
        """
        The long-term latency average, in seconds (0 before the first sample).
        """
        return self._long

    def _average(self, rtt: float) -> float:
        self._samples += 1
        if self._samples <= self._WARMUP:
            self._long += (rtt - self._long) / self._samples
        else:
            factor = 2.0 / (self.long_window + 1)
            self._long = self._long * (1 - factor) + rtt * factor
        return self._long

    def update(self, limit: int, rtt: float, in_flight: int, dropped: bool) -> int:  # noqa: ARG002  # drops unused, as in the original
        if not 0 < rtt < math.inf:
            # No information (a clock that did not move or went back); NaN or inf
            # would stay in the long average for good, and a NaN gradient reads as 1:
            # the limit grew to max_limit whatever the latency.
            return limit
        long = self._average(rtt)
        if long / rtt > 2:  # noqa: PLR2004  # Netflix's threshold
            self._long = long * 0.95
        if in_flight < self.estimate / 2:
            return self._clamp(self.estimate)
        gradient = max(0.5, min(1.0, self.tolerance * long / rtt))
        target = self.estimate * gradient + self.queue_size
        estimate = self.estimate * (1 - self.smoothing) + target * self.smoothing
        self.estimate = max(float(self.min_limit), min(float(self.max_limit), estimate))
        return self._clamp(self.estimate)

    def __repr__(self) -> str:
        return (
            f"Gradient2(initial={self.initial}, min_limit={self.min_limit},"
            f" max_limit={self.max_limit}, smoothing={self.smoothing:g},"
            f" tolerance={self.tolerance:g}, long_window={self.long_window},"
            f" queue_size={self.queue_size})"
        )
