"""
`KVClient`: talk to a KV cluster through any of its nodes.

    async with KVClient(["127.0.0.1:7001", "127.0.0.1:7002"]) as kv:
        version = await kv.put("greeting", b"hello")
        assert await kv.get("greeting") == b"hello"

Requests go through `DiscoveryClient` over a `StaticRegistry` of the nodes given:
balanced round robin, a node whose breaker opens (3 consecutive failures: refused
connections, timeouts, 5xx but 503) is ejected for 2 s, and a failed request fails over
to the next node, all within the call's deadline (`timeout`, sent to the node as
``X-Request-Timeout-Ms`` so it answers in time).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from types import TracebackType
from urllib.parse import quote

import aiohttp
from yarl import URL

from resilient import (
    CircuitBreaker,
    Hook,
    Instance,
    PoolStatistics,
    Registry,
    StaticRegistry,
    Timeout,
)
from resilient.integrations.aiohttp import (
    DiscoveryClient,
    ResilienceMiddleware,
    is_failure_status,
)

from .config import KEY_NOT_FOUND, parse_address

__all__ = ["SERVICE", "KVClient", "KVError"]

SERVICE = "kv"
_VERSION = "X-KV-Version"


class KVError(Exception):
    """
    A node refused the request; `status` and the node's JSON `detail` say why.

    Attributes:
        status: The HTTP status (400, 413, 503, ...).
        detail: The node's JSON answer (``{"error": ..., "acked": ..., ...}``).
    """

    def __init__(self, status: int, detail: dict[str, object]) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"{status}: {detail.get('error', detail)}")


class KVClient:
    """
    An async client of the KV service.

    Args:
        nodes: ``host:port`` of the nodes to use (any node coordinates any request).
        timeout: Seconds each call may take, failovers included.
        token: The client token (``KV_CLIENT_TOKEN``), when the nodes require one.
        registry: Find nodes through this registry (service ``"kv"``) instead of `nodes`.
        max_attempts: Nodes tried per call.
        hooks: Event hooks for this client's own policies: its timeout (``kv-client``)
            and each node's breaker (``kv-node-<host:port>``), and nothing else's.

    Raises:
        ValueError: No node given, an address is malformed, or `timeout` <= 0.
    """

    def __init__(
        self,
        nodes: Iterable[str] = (),
        *,
        timeout: float = 2.0,
        token: str | None = None,
        registry: Registry | None = None,
        max_attempts: int = 3,
        hooks: Iterable[Hook] = (),
    ) -> None:
        if registry is None:
            instances = [_instance(address) for address in nodes]
            if not instances:
                raise ValueError("KVClient(nodes=[]): give at least one host:port, or registry=")
            registry = StaticRegistry(instances)
        hooks = tuple(hooks)
        self._timeout = Timeout(timeout, name="kv-client", hooks=hooks)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # No policy per host: the DiscoveryClient's pool does that per node; the
        # middleware only stamps the remaining deadline and the trace context.
        self._session = aiohttp.ClientSession(
            headers=headers, middlewares=[ResilienceMiddleware({}, default=None)]
        )
        self._client = DiscoveryClient(
            self._session, registry, max_attempts=max_attempts,
            breaker=functools.partial(_breaker, hooks=hooks), failure_status=_node_failed,
        )  # fmt: skip

    async def put(self, key: str | bytes, value: bytes, *, w: int | None = None) -> str:
        """
        Store `value` under `key`; the version the cluster gave it.

        Raises:
            KVError: The node refused (bad input, quorum not met: ``detail["acked"]``).
            resilient.ResilienceError: No node answered within the timeout.
        """
        return await self._timeout.call(self._write, "PUT", key, value, w)

    async def delete(self, key: str | bytes, *, w: int | None = None) -> str:
        """
        Delete `key` (a tombstone); the tombstone's version.

        Raises:
            KVError: The node refused.
            resilient.ResilienceError: No node answered within the timeout.
        """
        return await self._timeout.call(self._write, "DELETE", key, None, w)

    async def get(self, key: str | bytes, *, r: int | None = None) -> bytes | None:
        """
        The value of `key`, or None when it does not exist.

        Raises:
            KVError: The node refused (bad input, quorum not met), or the address answered
                a 404 that is not a node's "key not found" (not a KV node).
            resilient.ResilienceError: No node answered within the timeout.
        """
        found = await self.get_versioned(key, r=r)
        return None if found is None else found[0]

    async def get_versioned(
        self, key: str | bytes, *, r: int | None = None
    ) -> tuple[bytes, str] | None:
        """
        The value of `key` and its version, or None when it does not exist.

        Raises:
            KVError: The node refused.
            resilient.ResilienceError: No node answered within the timeout.
        """
        return await self._timeout.call(self._get, key, r)

    async def _write(
        self, method: str, key: str | bytes, value: bytes | None, w: int | None
    ) -> str:
        query = {} if w is None else {"w": str(w)}
        async with await self._client.request(
            method, SERVICE, _path(key, query), data=value
        ) as response:
            if response.status >= 300:  # noqa: PLR2004
                raise KVError(response.status, await _detail(response))
            return response.headers.get(_VERSION, "")

    async def _get(self, key: str | bytes, r: int | None) -> tuple[bytes, str] | None:
        query = {} if r is None else {"r": str(r)}
        async with await self._client.get(SERVICE, _path(key, query)) as response:
            if response.status == 404:  # noqa: PLR2004
                await _check_not_found(response)
                return None
            if response.status != 200:  # noqa: PLR2004
                raise KVError(response.status, await _detail(response))
            return await response.read(), response.headers.get(_VERSION, "")

    async def statistics(self) -> PoolStatistics:
        """
        The node pool's snapshot: nodes known, ejected ones, calls and failovers.
        """
        pool = await self._client.pool(SERVICE)
        return pool.statistics()

    async def close(self) -> None:
        """
        Stop following the registry and close the session.
        """
        await self._client.close()
        await self._session.close()

    async def __aenter__(self) -> KVClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


def _instance(address: str) -> Instance:
    host, port = parse_address(address, "KVClient node")
    return Instance(SERVICE, f"{host}:{port}", host, port)


def _node_failed(status: int) -> bool:
    # 503 is the node's answer that the *cluster* lacks replicas (quorum not met): the
    # node is fine and another coordinator would see the same replicas, so it neither
    # counts against the node's breaker nor fails over.
    return status != 503 and is_failure_status(status)  # noqa: PLR2004


def _breaker(instance: Instance, hooks: tuple[Hook, ...]) -> CircuitBreaker:
    return CircuitBreaker(
        name=f"kv-node-{instance.id}", failure_threshold=3, reset_timeout=2.0, hooks=hooks
    )


def _path(key: str | bytes, query: dict[str, str]) -> str:
    raw = key.encode() if isinstance(key, str) else key
    path = "/kv/" + quote(raw, safe="")
    return str(URL(path, encoded=True).with_query(query)) if query else path


async def _check_not_found(response: aiohttp.ClientResponse) -> None:
    # A node's 404 says "key not found"; another server's 404 (a wrong port, a proxy)
    # must not read as a missing key.
    detail = await _detail(response)
    if detail.get("error") != KEY_NOT_FOUND:
        where = f"{response.url.host}:{response.url.port}"
        message = f"{where} answered 404 without {KEY_NOT_FOUND!r}: is it a KV node?"
        raise KVError(404, {**detail, "error": message})


async def _detail(response: aiohttp.ClientResponse) -> dict[str, object]:
    text = await response.text(errors="replace")
    try:
        detail = json.loads(text)
    except ValueError:
        return {"error": text[:200]}
    return detail if isinstance(detail, dict) else {"error": detail}
