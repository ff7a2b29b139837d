"""
The bucketed sliding window (`_engine/window.py`) that the retry budget and the
breakers' time windows count in.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from resilient._engine.window import BucketedWindow


class Now:
    """A settable time source."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_counts_add_up_per_counter() -> None:
    """Each counter has its own running total over the window."""
    now = Now()
    window = BucketedWindow(10.0, 2, now)
    window.add(0)
    window.add(0, 3)
    window.add(1)
    assert window.sums == [4, 1]


def test_counts_leave_one_slice_at_a_time() -> None:
    """A count leaves the window once its slice is a whole span old, not before."""
    now = Now()
    window = BucketedWindow(10.0, 1, now)  # ten slices of one second
    window.add(0)  # slice [0, 1)
    now.t = 5.0
    window.add(0)  # slice [5, 6)
    now.t = 9.99
    window.advance()
    assert window.sums == [2]
    now.t = 10.0  # the first slice comes round again: cleared for reuse
    window.advance()
    assert window.sums == [1]
    now.t = 15.0
    window.advance()
    assert window.sums == [0]


def test_a_long_pause_clears_everything_in_bounded_work() -> None:
    """After a pause of many spans every count is gone (at most one pass over the slices)."""
    now = Now()
    window = BucketedWindow(1.0, 2, now)
    for _ in range(5):
        window.add(0)
        window.add(1, 2)
    now.t = 1e9
    window.add(1)
    assert window.sums == [0, 1]


def test_reset_forgets_every_count() -> None:
    """reset() empties every slice and total; counting starts again from zero."""
    now = Now()
    window = BucketedWindow(10.0, 3, now, buckets=4)
    window.add(0)
    window.add(2, 5)
    window.reset()
    assert window.sums == [0, 0, 0]
    window.add(1)
    now.t = 9.0
    window.advance()
    assert window.sums == [0, 1, 0]


@given(
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=3.0), st.integers(0, 1), st.integers(1, 5)),
        max_size=60,
    )
)
def test_the_window_counts_what_a_list_of_every_add_would(
    steps: list[tuple[float, int, int]],
) -> None:
    """
    Against a model keeping every add with its slice: the totals are the adds of the
    last `buckets` slices, whether an add lands in the slice of the one before (the
    fast path) or moves the window on.
    """
    now = Now()
    window = BucketedWindow(2.0, 2, now, buckets=4)  # slices of 0.5 s
    adds: list[tuple[int, int, int]] = []  # (slice, counter, count)
    for pause, counter, count in steps:
        now.t += pause
        window.add(counter, count)
        current = int(now.t / 0.5)
        adds.append((current, counter, count))
        expected = [0, 0]
        for slice_, which, n in adds:
            if slice_ > current - 4:
                expected[which] += n
        assert window.sums == expected


def test_an_add_at_a_slices_end_counts_in_the_next_slice() -> None:
    """`add` tells slices apart by the current one's end, not by a division: at exactly
    that end a count is the next slice's, and leaves the window a slice later."""
    now = Now()
    window = BucketedWindow(10.0, 1, now)  # ten slices of one second
    now.t = 0.999
    window.add(0)  # slice [0, 1)
    now.t = 1.0
    window.add(0)  # slice [1, 2), at its very start
    now.t = 10.5  # [0, 1) fell out, [1, 2) did not
    window.advance()
    assert window.sums == [1]
    now.t = 11.0  # now [1, 2) falls out too
    window.advance()
    assert window.sums == [0]
