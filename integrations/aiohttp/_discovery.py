"""
A discovery-aware HTTP client: call a service by name, not by address.

    client = DiscoveryClient(session, registry)
    async with client:
        async with await client.get("inventory", "/items/42") as response: ...

For each service it follows the registry through a `ServiceView` and sends requests
through an `EndpointPool`: balanced across the healthy instances, with a breaker per
instance that ejects it while open, failing over to another instance within the
caller's deadline. Responses are classified as in `ResilienceMiddleware` (5xx and 429
fail over, other statuses are answers); when every attempt fails the caller gets the
last response. Non-idempotent methods are sent to one instance only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Collection
from contextlib import nullcontext
from typing import Any

from aiohttp import ClientError, ClientResponse, ClientSession

from resilient import (
    Balancer,
    CircuitBreaker,
    EndpointPool,
    Instance,
    Registry,
    ResilienceError,
    ServiceView,
    no_retries,
)

from ._attempts import NotSent as _NotSent
from ._client import IDEMPOTENT_METHODS, UnhealthyResponse, is_failure_status

__all__ = ["DiscoveryClient"]


def _resendable(kwargs: dict[str, Any]) -> bool:
    # A body that can be sent again whole: none, bytes, text, a form dict or JSON.
    # Anything else (a generator, a stream, a file) may be read only once.
    data = kwargs.get("data")
    return data is None or isinstance(data, bytes | bytearray | str | dict)


class DiscoveryClient:
    """
    Send HTTP requests to a service by name through a registry.

    Args:
        session: The aiohttp session to send with (its middlewares still apply).
        registry: Where instances are found.
        balancer: How an instance is chosen (default: round robin).
        breaker: Builds each instance's breaker (default: 5 consecutive failures open
            it for 10 s).
        max_attempts: Instances tried per request.
        retry_methods: Methods that may fail over to another instance.
        failure_status: Statuses that count as the instance's failure (5xx and 429).
    """

    def __init__(
        self,
        session: ClientSession,
        registry: Registry,
        *,
        balancer: Callable[[], Balancer] | None = None,
        breaker: Callable[[Instance], CircuitBreaker] | None = None,
        max_attempts: int = 3,
        retry_methods: Collection[str] = IDEMPOTENT_METHODS,
        failure_status: Callable[[int], bool] = is_failure_status,
    ) -> None:
        self._session = session
        self._registry = registry
        self._balancer = balancer
        self._breaker = breaker
        self._max_attempts = max_attempts
        self._retry_methods = frozenset(m.upper() for m in retry_methods)
        self._failure_status = failure_status
        self._views: dict[str, ServiceView] = {}
        self._pools: dict[str, EndpointPool] = {}
        self._starting: dict[str, asyncio.Future[ServiceView]] = {}

    async def pool(self, service: str) -> EndpointPool:
        """
        The endpoint pool of `service`, following the registry from first use.
        """
        pool = self._pools.get(service)
        if pool is None:
            # Built and stored before any await, so close() can always stop the view,
            # even when this first caller is cancelled while the view starts.
            view = self._views[service] = ServiceView(self._registry, service)
            pool = self._pools[service] = EndpointPool(
                view,
                balancer=self._balancer() if self._balancer else None,
                breaker=self._breaker,
                max_attempts=self._max_attempts,
                service=service,
            )
            self._starting[service] = asyncio.ensure_future(view.start())
        starting = self._starting.get(service)
        if starting is not None:
            # Shielded: a cancelled caller must not cancel the start the others await.
            await asyncio.shield(starting)
            self._starting.pop(service, None)
        return pool

    async def request(self, method: str, service: str, path: str, **kwargs: Any) -> ClientResponse:
        """
        Send `method path` to an instance of `service`; failing over when allowed.

        Raises:
            resilient.NoHealthyInstanceError: No instance known, or all ejected.
            aiohttp.ClientError: The last attempt's connection error.
        """
        if not path.startswith("/"):
            raise ValueError(f"DiscoveryClient.request(path={path!r}): must start with '/'")
        pool = await self.pool(service)
        method = method.upper()
        responses: list[ClientResponse] = []

        async def send(instance: Instance) -> ClientResponse:
            for earlier in responses:
                earlier.release()  # a failed attempt's connection goes back to the pool
            try:
                response = await self._session.request(method, instance.url + path, **kwargs)
            except (ClientError, OSError, ResilienceError):
                raise  # the network, the instance, or a policy: judged by the pool
            except Exception as error:
                raise _NotSent(error) from error  # the caller's mistake: no instance's fault
            responses.append(response)
            if self._failure_status(response.status):
                raise UnhealthyResponse(response)
            return response

        once = (
            no_retries()
            if method not in self._retry_methods or not _resendable(kwargs)
            else nullcontext()
        )
        kept: ClientResponse | None = None
        try:
            with once:
                kept = await pool.call(send)
        except UnhealthyResponse as failed:
            kept = failed.response
        except _NotSent as not_sent:
            raise not_sent.error from not_sent.error.__cause__
        finally:
            for response in responses:
                if response is not kept:
                    response.release()
        return kept

    async def get(self, service: str, path: str, **kwargs: Any) -> ClientResponse:
        """
        ``request("GET", service, path, ...)``.
        """
        return await self.request("GET", service, path, **kwargs)

    async def post(self, service: str, path: str, **kwargs: Any) -> ClientResponse:
        """
        ``request("POST", service, path, ...)``: sent to one instance only by default.
        """
        return await self.request("POST", service, path, **kwargs)

    async def close(self) -> None:
        """
        Stop following the registry (the session is the caller's to close).
        """
        for starting in self._starting.values():
            starting.cancel()
        self._starting.clear()
        for view in self._views.values():
            await view.stop()
        self._views.clear()
        self._pools.clear()

    async def __aenter__(self) -> DiscoveryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
