"""
A minimal asyncio client for etcd's v3 JSON gateway (grpc-gateway over HTTP/1.1).

Only what discovery needs: range over a prefix, put, delete, lease grant / keepalive /
revoke, and a prefix watch. The wire format and the errors are in `._etcd_wire`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import aiohttp
from yarl import URL

from resilient import RegistryStatus

from ._etcd_wire import (
    GRPC_NOT_FOUND,
    EtcdResponseError,
    EtcdUnavailableError,
    Json,
    KeyValue,
    WatchBatch,
    decode_answer,
    encode,
    key_value,
    prefix_end,
    revision_of,
    watch_batch,
)

__all__ = ["EtcdGateway", "WatchStream"]

_log = logging.getLogger("resilient.discovery.etcd")


class WatchStream:
    """
    An open ``/v3/watch`` response, read one message at a time.
    """

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._content = response.content
        self._buffer = bytearray()
        self._pending: WatchBatch | None = None

    async def confirm(self) -> None:
        """
        Wait for etcd's first message, which confirms the watch; `next` returns it.

        Raises:
            EtcdUnavailableError: The stream ended or broke.
            EtcdResponseError: etcd sent an error on the stream.
        """
        self._pending = watch_batch(await self._message())

    async def next(self, *, idle: float) -> WatchBatch | None:
        """
        Return the next message, or None if none arrived within `idle` seconds.

        Raises:
            EtcdUnavailableError: The stream ended or broke.
            EtcdResponseError: etcd sent an error on the stream.
        """
        if self._pending is not None:
            batch, self._pending = self._pending, None
            return batch
        try:
            async with asyncio.timeout(idle):
                message = await self._message()
        except TimeoutError:
            # Only the wait for bytes was interrupted: the buffer is intact and the
            # stream can be read again (aiohttp's StreamReader is cancellation-safe).
            return None
        return watch_batch(message)

    async def _message(self) -> object:
        try:
            line = await self._line()
        except (aiohttp.ClientError, RuntimeError) as error:
            # aiohttp raises RuntimeError("Connection closed.") when asked to wait on a
            # connection already gone; the other errors are ClientError subclasses.
            raise EtcdUnavailableError(f"etcd watch stream broke: {error!r}") from error
        try:
            return json.loads(line)
        except ValueError as error:
            raise EtcdUnavailableError("etcd sent a watch message that is not JSON") from error

    async def _line(self) -> bytes:
        while (end := self._buffer.find(b"\n")) < 0:
            chunk = await self._content.readany()
            if not chunk:
                raise EtcdUnavailableError("etcd closed the watch stream")
            self._buffer += chunk
        line = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return line if line.strip() else await self._line()


class EtcdGateway:
    """
    Calls to one etcd endpoint's JSON gateway, remembering whether the last one worked.

    Args:
        endpoint: Base URL, e.g. ``http://127.0.0.1:2379``.
        session: An aiohttp session to use (not closed here); None creates one on first
            use and closes it in `close`.
        request_timeout: Seconds a unary call may take.
    """

    def __init__(
        self, endpoint: URL, *, session: aiohttp.ClientSession | None, request_timeout: float
    ) -> None:
        self._endpoint = endpoint
        self._session = session
        self._owns_session = session is None
        self._closed = False
        self.request_timeout = request_timeout
        self._status = RegistryStatus(connected=False, detail="etcd not contacted yet")

    def status(self) -> RegistryStatus:
        """
        Whether the last call reached etcd.
        """
        return self._status

    async def close(self) -> None:
        """
        Close the session if this gateway created it.
        """
        self._closed = True
        if self._owns_session and self._session is not None:
            await self._session.close()

    def _session_now(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the etcd registry is closed")
        # Created lazily: an aiohttp session belongs to the running event loop.
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    def _ok(self) -> None:
        if not self._status.connected:
            _log.info("etcd at %s reachable", self._endpoint.host)
            self._status = RegistryStatus(connected=True)

    def _failed(self, method: str, error: BaseException) -> None:
        if self._status.connected:
            # The type and method: a timeout's text is empty, and others may carry URLs.
            kind = type(error).__name__
            _log.warning("etcd at %s unreachable (%s on %s)", self._endpoint.host, kind, method)
        since = self._status.stale_since
        if since is None:
            since = asyncio.get_running_loop().time()
        # The exception's type only: its text may carry URLs, headers or a traceback.
        detail = f"etcd unreachable: {type(error).__name__} on {method}"
        self._status = RegistryStatus(connected=False, detail=detail, stale_since=since)

    async def _call(self, method: str, body: Json, *, within: float | None = None) -> Json:
        url = self._endpoint / "v3" / method
        limit = aiohttp.ClientTimeout(total=within or self.request_timeout)
        try:
            async with self._session_now().post(url, json=body, timeout=limit) as response:
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as error:
            self._failed(method, error)
            raise EtcdUnavailableError(f"etcd {method} failed: {error!r}") from error
        self._ok()
        return decode_answer(method, status, raw)

    async def range_prefix(
        self, prefix: str, *, keys_only: bool = False
    ) -> tuple[int, list[KeyValue]]:
        """
        Return the store revision and every key starting with `prefix`, in key order.

        Args:
            prefix: The key prefix.
            keys_only: Leave the values out (each `KeyValue.value` is empty).
        """
        body: Json = {"key": encode(prefix), "range_end": prefix_end(prefix)}
        if keys_only:
            body["keys_only"] = True
        answer = await self._call("kv/range", body)
        return revision_of(answer), [key_value(raw) for raw in answer.get("kvs", ())]

    async def put(self, key: str, value: bytes, *, lease: int) -> None:
        """
        Set `key` to `value`, attached to `lease`.
        """
        value_b64 = base64.b64encode(value).decode("ascii")
        await self._call("kv/put", {"key": encode(key), "value": value_b64, "lease": str(lease)})

    async def delete(self, key: str) -> None:
        """
        Delete `key` (a no-op when absent).
        """
        await self._call("kv/deleterange", {"key": encode(key)})

    async def grant(self, ttl: int) -> tuple[int, int]:
        """
        Grant a lease of `ttl` seconds; return its ID and the TTL etcd granted.
        """
        answer = await self._call("lease/grant", {"TTL": str(ttl)})
        return int(answer["ID"]), int(answer.get("TTL", ttl))

    async def keepalive(self, lease: int, *, within: float) -> int:
        """
        Refresh `lease`; return its new TTL, 0 when etcd no longer has it.

        Args:
            lease: The lease ID.
            within: Seconds to wait for the answer.
        """
        answer = await self._call("lease/keepalive", {"ID": str(lease)}, within=within)
        # One request, one streamed answer: {"result": {"ID": ..., "TTL": ...}}. An
        # unknown lease answers with no TTL (zero is omitted), not with an error.
        return int(answer.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        """
        Revoke `lease`, deleting its keys at once; a no-op when it is already gone.
        """
        try:
            await self._call("lease/revoke", {"ID": str(lease)})
        except EtcdResponseError as error:
            if error.code != GRPC_NOT_FOUND:
                raise

    @asynccontextmanager
    async def watch(self, prefix: str, *, start_revision: int) -> AsyncIterator[WatchStream]:
        """
        Open a watch on every key starting with `prefix`, from `start_revision` on.

        The watch is open once etcd confirmed it (its first message), within
        `request_timeout` seconds.

        Raises:
            EtcdUnavailableError: etcd could not be reached, or did not confirm in time.
            EtcdResponseError: etcd refused the watch.
        """
        create = {
            "key": encode(prefix),
            "range_end": prefix_end(prefix),
            "start_revision": str(start_revision),
            # Idle watches get a message now and then (every 10 min by default, set by
            # etcd's --experimental-watch-progress-notify-interval): each one proves the
            # stream alive and spares the reader a probe.
            "progress_notify": True,
        }
        # Once open, no total or read timeout: a quiet watch is normal, and the reader
        # probes etcd when the stream has been idle for a while instead.
        limit = aiohttp.ClientTimeout(total=None, sock_connect=self.request_timeout)
        url = self._endpoint / "v3" / "watch"
        try:
            async with AsyncExitStack() as stack:
                # Opening is bounded as a whole: a frozen etcd (SIGSTOP, a hung gateway)
                # accepts the connection in its kernel backlog and never answers, and
                # sock_connect alone would wait for the headers forever.
                async with asyncio.timeout(self.request_timeout):
                    request = self._session_now().post(
                        url, json={"create_request": create}, timeout=limit
                    )
                    response = await stack.enter_async_context(request)
                    if response.status != 200:  # noqa: PLR2004  # HTTP OK
                        decode_answer("watch", response.status, await response.read())
                    stream = WatchStream(response)
                    await stream.confirm()
                self._ok()
                yield stream
        except (aiohttp.ClientError, TimeoutError) as error:
            self._failed("watch", error)
            raise EtcdUnavailableError(f"etcd watch failed: {error!r}") from error
        except EtcdUnavailableError as error:
            if self._status.connected:  # else keep the first, more precise, reason
                self._failed("watch", error)
            raise
