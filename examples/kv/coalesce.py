"""
`Coalescer`: gather the calls bound for one peer into batches.

Items submitted while `max_in_flight` batches are on the wire wait and leave together
in the next batch; a lone item leaves at the end of the current loop iteration. So an
idle cluster pays no added latency, and a busy one sends a few large requests instead
of many small ones (the "natural batching" of group commit, applied to the network).
Each item still gets its own future and its own answer.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from .loops import running_loop

__all__ = ["Coalescer"]

T = TypeVar("T")
R = TypeVar("R")

Ship = Callable[[list[T], float], Awaitable[Sequence[R]]]
"""Sends a batch within a budget (seconds); returns one answer per item."""


class Coalescer(Generic[T, R]):
    """
    Batches items for one destination.

    Args:
        ship: Sends one batch: ``await ship(items, budget) -> answers``.
        size: The size of an item, to cap batches at `max_batch` (default: 1 each).
        max_in_flight: Batches on the wire at once.
        max_batch: Largest batch, in `size` units.
        again: The answer that means "not now" (compared by identity): its item goes
            back to the front of the queue for the next batch, its caller still waiting
            (until its deadline passes, then a TimeoutError). None: every answer is final.

    An item whose `size` raises is not sent: its caller's future gets the error.

    Raises:
        ValueError: `max_in_flight` or `max_batch` below 1.
    """

    def __init__(
        self,
        ship: Ship[T, R],
        *,
        size: Callable[[T], int] = lambda _: 1,
        max_in_flight: int = 4,
        max_batch: int = 4 << 20,
        again: object = None,
    ) -> None:
        if max_in_flight < 1 or max_batch < 1:
            raise ValueError(
                f"Coalescer(max_in_flight={max_in_flight!r}, max_batch={max_batch!r}):"
                " both must be >= 1"
            )
        self._ship = ship
        self._size = size
        self._max_in_flight = max_in_flight
        self._max_batch = max_batch
        self._again = again
        self._pending: collections.deque[tuple[T, float, asyncio.Future[R]]] = collections.deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduled = False
        # The loop of the last submit (one coalescer serves one loop): `_flush` and the
        # batches run in fresh contexts, where `running_loop` would ask asyncio again.
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        self.items = 0

    def submit(self, item: T, until: float) -> asyncio.Future[R]:
        """
        Queue `item`, to be sent before `until` (the loop's clock); its answer's future.
        """
        loop = self._loop = running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, until, future))
        if not self._scheduled and len(self._tasks) < self._max_in_flight:
            self._scheduled = True
            # A fresh context: the batch serves many callers, so it must not carry the
            # first one's deadline or trace.
            loop.call_soon(self._flush, context=contextvars.Context())
        return future

    def _flush(self) -> None:
        self._scheduled = False
        loop = self._loop or running_loop()  # submit's: this runs in a fresh context
        pending = self._pending
        while pending and len(self._tasks) < self._max_in_flight:
            # Items up to `max_batch` (the last may cross it), from a deque: popping
            # the front of a list moves the whole queue, quadratic in a backlog.
            batch: list[tuple[T, float, asyncio.Future[R]]] = []
            size = 0
            while pending and size < self._max_batch:
                entry = pending.popleft()
                try:
                    size += self._size(entry[0])
                except Exception as error:  # noqa: BLE001  # that item's caller gets it
                    if not entry[2].done():
                        entry[2].set_exception(error)
                    continue
                batch.append(entry)
            if not batch:
                continue
            self.batches += 1
            self.items += len(batch)
            task = loop.create_task(self._send(batch), context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._pending and not self._scheduled:
            self._flush()

    async def _send(self, batch: list[tuple[T, float, asyncio.Future[R]]]) -> None:
        loop = self._loop or running_loop()
        batch = [entry for entry in batch if not entry[2].cancelled()]
        budget = max((until for _, until, _ in batch), default=0.0) - loop.time()
        try:
            if budget <= 0:
                raise TimeoutError("the deadline passed before the batch was sent")  # noqa: TRY301
            answers = await self._ship([item for item, _, _ in batch], budget)
        except asyncio.CancelledError:
            for _, _, future in batch:
                future.cancel()
            raise
        except Exception as error:  # noqa: BLE001  # every item's caller gets the error
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        again, requeued = self._again, []
        for entry, answer in zip(batch, answers, strict=True):
            future = entry[2]
            if future.done():
                continue
            if again is None or answer is not again:
                future.set_result(answer)
            elif entry[1] <= loop.time():
                future.set_exception(TimeoutError("the deadline passed before it was answered"))
            else:
                requeued.append(entry)
        # At the front, in their order, for the next flush (`_done`): behind the items
        # that arrived meanwhile, they could be held back again round after round.
        self._pending.extendleft(reversed(requeued))

    async def drain(self) -> None:
        """
        Return once nothing is pending or on the wire.
        """
        while self._tasks or self._pending:
            if self._pending and not self._tasks:
                self._flush()
            await asyncio.gather(*self._tasks, return_exceptions=True)
