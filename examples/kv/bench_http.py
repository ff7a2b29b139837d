"""
A minimal HTTP/1.1 client for the bench's Python load generators.

aiohttp's client costs a few hundred microseconds of CPU per request on a loaded
2-core machine, enough to make the generator, not the cluster, the bottleneck of an
open-loop run. This one writes prebuilt request bytes on keep-alive connections and
reads only the status line and ``Content-Length``: what a load generator needs, at a
fraction of the cost. It speaks to the KV nodes' answers (always a Content-Length, or
a bodiless 204/304); it is not a general client.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import cast

__all__ = ["HttpPool", "request_bytes"]

_BODILESS = (204, 304)
Fut = asyncio.Future[int]


def request_bytes(method: str, host: str, path: str, body: bytes = b"") -> bytes:
    """
    One HTTP/1.1 request, ready to write.
    """
    length = f"Content-Length: {len(body)}\r\n" if body or method == "PUT" else ""
    return f"{method} {path} HTTP/1.1\r\nHost: {host}\r\n{length}\r\n".encode() + body


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[int] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TCP transport is not an asyncio.Transport subclass, but has its API.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:end]).lower()
        status = int(head[9:12])
        length = 0
        start = head.find(b"\r\ncontent-length:")
        if start >= 0 and status not in _BODILESS:
            stop = head.find(b"\r\n", start + 2)
            length = int(head[start + 17 : stop if stop >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return  # the body is still coming
        del self.buffer[: end + 4 + length]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result(status)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc!r}"))

    def send(self, data: bytes) -> asyncio.Future[int]:
        assert self.transport is not None  # noqa: S101  # set on connection
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return self.waiter


class HttpPool:
    """
    Keep-alive connections to one ``host:port``, one request at a time on each.

    Args:
        address: ``host:port``.
        timeout: Seconds a request may take.
    """

    def __init__(self, address: str, timeout: float = 5.0) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port, self.timeout = host, int(port), timeout
        self._idle: list[_Connection] = []

    async def send(self, data: bytes) -> int:
        """
        Send one request (from `request_bytes`); the response's status.

        Raises:
            OSError, ConnectionError, TimeoutError: The request failed.
        """
        if self._idle:
            connection = self._idle.pop()
        else:
            loop = asyncio.get_running_loop()
            _, connection = await loop.create_connection(_Connection, self.host, self.port)
        try:
            async with asyncio.timeout(self.timeout):
                status = await connection.send(data)
        except BaseException:
            if connection.transport is not None:
                connection.transport.close()  # its state is unknown: not reused
            raise
        if not connection.closed:
            self._idle.append(connection)
        return status

    def send_nowait(self, data: bytes, done: Callable[[int | None], None]) -> bool:
        """
        Send on an idle connection, if there is one; `done` gets the status (None: failed).

        Returns:
            False when no connection was idle (nothing sent).
        """
        if not self._idle:
            return False
        connection = self._idle.pop()
        connection.send(data).add_done_callback(functools.partial(self._answered, connection, done))
        return True

    def _answered(
        self, connection: _Connection, done: Callable[[int | None], None], future: Fut
    ) -> None:
        if future.cancelled() or future.exception() is not None:
            if connection.transport is not None:
                connection.transport.close()
            done(None)
            return
        if not connection.closed:
            self._idle.append(connection)
        done(future.result())

    async def grow(self, count: int = 1) -> None:
        """
        Open `count` more connections.

        Raises:
            OSError: A connection was refused.
        """
        loop = asyncio.get_running_loop()
        for _ in range(count):
            _, connection = await loop.create_connection(_Connection, self.host, self.port)
            self._idle.append(connection)

    def close(self) -> None:
        """
        Close every idle connection.
        """
        for connection in self._idle:
            if connection.transport is not None:
                connection.transport.close()
        self._idle.clear()
