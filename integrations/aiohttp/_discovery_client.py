"""
A discovery-aware HTTP client: call a service by name, not by address.

    client = DiscoveryClient(session, registry)
    async with client:
        async with client.get("inventory", "/items/42") as response: ...

For each service it follows the registry through a `ServiceView` and sends requests
through an `EndpointPool`: balanced across the healthy instances, with a breaker per
instance that ejects it while open, failing over to another instance within the
caller's deadline. Attempts are sent, classified and released by the middleware's
routine (`_attempts`): 5xx and 429 fail over, other statuses are answers; when every
attempt fails the caller gets the last response. Non-idempotent methods, and streamed
bodies, are sent to one instance only; a file body too, as aiohttp closes it when the
first request ends.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Awaitable, Callable, Collection, Coroutine, Generator
from types import TracebackType
from typing import Any

from aiohttp import ClientResponse, ClientSession, MultipartWriter

from resilient import Balancer, CircuitBreaker, EndpointPool, Instance, Registry, ServiceView
from resilient.validation import check_int

from ._attempts import Attempts, as_payload
from ._client import IDEMPOTENT_METHODS, is_failure_status, method_names

__all__ = ["DiscoveryClient", "DiscoveryRequest"]


class DiscoveryRequest(Coroutine[Any, Any, ClientResponse]):
    """
    What `DiscoveryClient.request` returns: await it, or use it with ``async with``.

    As aiohttp's ``session.get(...)``: ``response = await client.get(...)`` hands the
    response over (the caller releases it), ``async with client.get(...) as response:``
    releases it on exit. It is a coroutine, so `asyncio.create_task` takes it too.
    """

    __slots__ = ("_coro", "_response")

    def __init__(self, coro: Coroutine[Any, Any, ClientResponse]) -> None:
        self._coro = coro
        self._response: ClientResponse | None = None

    def __await__(self) -> Generator[Any, None, ClientResponse]:
        return self._coro.__await__()

    # The coroutine protocol, delegated (aiohttp's request context manager does the same).

    def send(self, value: Any) -> Any:
        """
        Resume the request with `value`.
        """
        return self._coro.send(value)

    def throw(self, *args: Any) -> Any:
        """
        Raise an exception inside the request.
        """
        return self._coro.throw(*args)

    def close(self) -> None:
        """
        Close the request's coroutine.
        """
        self._coro.close()

    async def __aenter__(self) -> ClientResponse:
        self._response = await self._coro
        return await self._response.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._response is not None:
            await self._response.__aexit__(exc_type, exc, traceback)


class DiscoveryClient:
    """
    Send HTTP requests to a service by name through a registry.

    Args:
        session: The aiohttp session to send with (its middlewares still apply).
        registry: Where instances are found.
        balancer: How an instance is chosen (default: a `RoundRobin` per service). A
            `Balancer`, as `EndpointPool` takes it, is shared by every service this
            client calls; a class or factory (``balancer=PowerOfTwoChoices``) gives
            each service its own.
        breaker: Builds each instance's breaker (default: 5 consecutive failures open
            it for 10 s).
        max_attempts: Instances tried per request, >= 1.
        retry_methods: Methods that may fail over to another instance.
        failure_status: Statuses that count as the instance's failure (5xx and 429).

    Raises:
        TypeError: `session`, `registry`, `balancer`, `breaker` or `failure_status`
            is not what it should be (e.g. None).
        ValueError: `max_attempts` < 1.
    """

    def __init__(
        self,
        session: ClientSession,
        registry: Registry,
        *,
        balancer: Balancer | Callable[[], Balancer] | None = None,
        breaker: Callable[[Instance], CircuitBreaker] | None = None,
        max_attempts: int = 3,
        retry_methods: Collection[str] = IDEMPOTENT_METHODS,
        failure_status: Callable[[int], bool] = is_failure_status,
    ) -> None:
        owner = "DiscoveryClient"
        if not isinstance(session, ClientSession):
            raise TypeError(f"{owner}(session=...): expected a ClientSession, got {session!r}")
        if not isinstance(registry, Registry):
            raise TypeError(f"{owner}(registry=...): expected a Registry, got {registry!r}")
        for param, value in (("breaker", breaker), ("failure_status", failure_status)):
            if value is not None and not callable(value):
                raise TypeError(f"{owner}({param}=...): expected a callable, got {value!r}")
        self._session = session
        self._registry = registry
        self._balancer = _balancer_factory(balancer)
        self._breaker = breaker
        self._max_attempts = check_int(owner, "max_attempts", max_attempts, minimum=1)
        self._retry_methods = method_names(owner, retry_methods)
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
                balancer=self._balancer(),
                breaker=self._breaker,
                max_attempts=self._max_attempts,
                service=service,
            )
            self._starting[service] = asyncio.ensure_future(view.start())
        starting = self._starting.get(service)
        if starting is not None:
            try:
                # Shielded: a cancelled caller must not cancel the start the others await.
                await asyncio.shield(starting)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if starting.cancelled() and task is not None and not task.cancelling():
                    # close() stopped the start: this caller was not cancelled, and a
                    # CancelledError would end its task silently (a TaskGroup ignores it).
                    raise RuntimeError(
                        f"DiscoveryClient: closed while {service!r}'s instances were awaited"
                    ) from None
                raise
            self._starting.pop(service, None)
        return pool

    def request(self, method: str, service: str, path: str, **kwargs: Any) -> DiscoveryRequest:
        """
        Send `method path` to an instance of `service`; failing over when allowed.

        Returns:
            An awaitable of the response that is also an async context manager
            releasing it on exit, as aiohttp's ``session.request``.

        Raises:
            ValueError: `path` does not start with ``/`` (at once).
            resilient.NoHealthyInstanceError: No instance known, or all ejected.
            aiohttp.ClientError: The last attempt's connection error.
        """
        if not path.startswith("/"):
            raise ValueError(f"DiscoveryClient.request(path={path!r}): must start with '/'")
        return DiscoveryRequest(self._request(method, service, path, kwargs))

    async def _request(
        self, method: str, service: str, path: str, kwargs: dict[str, Any]
    ) -> ClientResponse:
        """
        The request itself.

        Raises:
            resilient.NoHealthyInstanceError: No instance known, or all ejected.
            aiohttp.ClientError: The last attempt's connection error.
        """
        pool = await self.pool(service)
        method = method.upper()
        attempts = _ServiceAttempts(
            self._session, method, path, kwargs, failure_status=self._failure_status
        )
        return await attempts.run(pool.call, attempts.send, once=method not in self._retry_methods)

    def get(self, service: str, path: str, **kwargs: Any) -> DiscoveryRequest:
        """
        ``request("GET", service, path, ...)``.
        """
        return self.request("GET", service, path, **kwargs)

    def post(self, service: str, path: str, **kwargs: Any) -> DiscoveryRequest:
        """
        ``request("POST", service, path, ...)``: sent to one instance only by default.
        """
        return self.request("POST", service, path, **kwargs)

    async def close(self) -> None:
        """
        Stop following the registry (the session is the caller's to close).
        """
        for starting in self._starting.values():
            starting.cancel()
        self._starting.clear()
        # A task per view, all started before any is awaited: a close() cancelled midway
        # (``async with client:`` left by a cancellation) still stops every view.
        stopping = [asyncio.ensure_future(view.stop()) for view in self._views.values()]
        self._views.clear()
        self._pools.clear()
        if stopping:
            await asyncio.wait(stopping)

    async def __aenter__(self) -> DiscoveryClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        services = ", ".join(
            f"{name}: {_plural(len(view.instances), 'instance')}"
            for name, view in self._views.items()
        )
        return (
            f"<DiscoveryClient {services or 'no service called yet'};"
            f" balancer={self._balancer.label} max_attempts={self._max_attempts}>"
        )


class _ServiceAttempts(Attempts):
    """
    The attempts of one request to a service: a request per instance tried.
    """

    __slots__ = ("_kwargs", "_method", "_path", "_session")

    def __init__(
        self,
        session: ClientSession,
        method: str,
        path: str,
        kwargs: dict[str, Any],
        *,
        failure_status: Callable[[int], bool],
    ) -> None:
        # One payload for every attempt: whether it can be sent again is its to say.
        super().__init__(as_payload(kwargs.pop("data", None)), failure_status)
        self._session = session
        self._method = method
        self._path = path
        self._kwargs = kwargs

    def _attempt(self, instance: Instance) -> Awaitable[ClientResponse]:
        url = instance.url + self._path
        body = self._body
        if isinstance(body, MultipartWriter):
            # aiohttp closes a request's body when the request ends, and a closed
            # multipart writer says it is consumed even when its parts are all in memory
            # (a form with bytes): each attempt sends a copy sharing the parts, whose
            # `consumed` still tells when one can't be sent again (a file part closed).
            body = copy.copy(body)
        return self._session.request(self._method, url, data=body, **self._kwargs)


class _Balancers:
    """
    Hands each service's pool its balancer: a shared one, or one from a factory.
    """

    __slots__ = ("_factory", "_shared", "label")

    def __init__(
        self, shared: Balancer | None, factory: Callable[[], Balancer] | None, label: str
    ) -> None:
        self._shared, self._factory, self.label = shared, factory, label

    def __call__(self) -> Balancer | None:
        return self._factory() if self._factory is not None else self._shared


def _balancer_factory(balancer: object) -> _Balancers:
    if balancer is None:
        return _Balancers(None, None, "RoundRobin")  # the pool's default, one per service
    # A class has a `pick` attribute too: tell it apart before the protocol check.
    if isinstance(balancer, Balancer) and not isinstance(balancer, type):
        return _Balancers(balancer, None, f"{type(balancer).__name__} (shared)")
    if callable(balancer):
        # Built once now, so a factory that doesn't make a Balancer fails here, not at
        # the first request.
        sample = balancer()
        if isinstance(sample, Balancer) and not isinstance(sample, type):
            label = getattr(balancer, "__name__", type(sample).__name__)
            return _Balancers(None, balancer, label)
    raise TypeError(
        "DiscoveryClient(balancer=...): expected a Balancer (e.g. RoundRobin()) or a"
        f" factory of one (e.g. PowerOfTwoChoices), got {balancer!r}"
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
