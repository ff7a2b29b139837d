"""
`ResilienceMiddleware`: resilience policies for every request of an aiohttp session.

    session = aiohttp.ClientSession(middlewares=[ResilienceMiddleware()])

Each request is run through a policy chosen by its key (the origin by default, so one
breaker per host), built once per key by a factory or looked up in a mapping. Outcomes
are classified the way a dependency's health should be judged:

- connection errors, timeouts, 5xx and 429 are failures: retried (for idempotent
  methods) and counted by breakers;
- any other status, 4xx included, is a success: the dependency answered, the caller
  asked for something wrong.

A failed *response* travels through the policies as `UnhealthyResponse` so retries and
breakers see it; when no attempt is left the caller gets the last response itself, as
without the middleware. Bodies of responses that are retried over are released, so no
connection leaks. Non-idempotent methods run once (`resilient.no_retries()`) unless
`retry_methods` says otherwise; breakers still count them. A ``Retry-After`` header
(seconds or an HTTP date) reaches `Retry` as the error's ``retry_after``, where it is
capped. Every attempt carries the remaining deadline and the trace context.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Callable, Collection, Mapping
from contextlib import nullcontext
from typing import Literal

from aiohttp import ClientError, ClientRequest, ClientResponse
from aiohttp.client_middlewares import ClientHandlerType
from aiohttp.payload import AsyncIterablePayload

from resilient import (
    CircuitBreaker,
    Policy,
    RejectedError,
    ResilienceError,
    Retry,
    RetryBudget,
    no_retries,
    pipeline,
)

from ._propagation import DEADLINE_HEADER, inject_trace_context, set_deadline_header

__all__ = [
    "IDEMPOTENT_METHODS",
    "ResilienceMiddleware",
    "UnhealthyResponse",
    "default_policy",
    "is_failure_status",
    "parse_retry_after",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
_TOO_MANY_REQUESTS = 429
_SERVER_ERROR = 500


def is_failure_status(status: int) -> bool:
    """
    The default classification: 5xx and 429 are the dependency's failures.
    """
    return status >= _SERVER_ERROR or status == _TOO_MANY_REQUESTS


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """
    Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date).

    Returns None when absent or malformed; a date in the past gives 0.
    """
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() also takes "²", which float() refuses
        seconds = float(value)
        return seconds if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            return None  # HTTP dates are GMT; a zone-less one is not well formed
        seconds = when.timestamp() - (time.time() if now is None else now)
    except (TypeError, ValueError, IndexError, OverflowError):  # a hostile year overflows
        return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


class UnhealthyResponse(Exception):
    """
    A response classified as a failure (5xx, 429), raised inside the policies.

    The middleware turns it back into the response for the caller; hooks, breakers and
    fallbacks see it as the failure it is.

    Attributes:
        response: The response (its body unread).
        status: Its HTTP status.
        retry_after: Seconds from its ``Retry-After`` header, or None.
    """

    def __init__(self, response: ClientResponse) -> None:
        self.response = response
        self.status = response.status
        self.retry_after = parse_retry_after(response.headers.get("Retry-After"))
        # No query string: it may carry tokens, and this text reaches logs and traces.
        where = response.url.with_query(None)
        super().__init__(f"{response.method} {where} answered {response.status}")


class _CannotResend(RejectedError):
    """
    The request's body was a one-shot stream, already sent.

    Another attempt would send an empty body; the caller gets the last attempt's
    outcome instead.
    """


def _one_shot_body(request: ClientRequest) -> bool:
    # An async iterable (a generator, a stream) can be read once; bytes, str, JSON and
    # seekable files are re-sent whole by aiohttp.
    return isinstance(request.body, AsyncIterablePayload)


def _body_spent(request: ClientRequest) -> bool:
    return bool(getattr(request.body, "consumed", False))


class _NotSent(RejectedError):
    """
    The request failed before reaching the dependency, by the caller's own error.

    Say a header aiohttp refuses to send. As a `RejectedError` it is neither retried
    nor counted by breakers, like a 4xx; the middleware re-raises the original
    exception to the caller.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error
        super().__init__(f"request not sent: {error!r}")


def default_policy(key: str) -> Policy:
    """
    The policy a key gets when no factory or mapping is given.

    Three attempts with full-jitter backoff and a retry budget of 10% of the key's
    traffic, then a breaker that opens after 5 consecutive failures for 30 s.
    """
    return pipeline(
        Retry(attempts=3, budget=RetryBudget(0.1), name=key),
        CircuitBreaker(name=key, failure_threshold=5, reset_timeout=30.0),
    )


def _origin(request: ClientRequest) -> str:
    return str(request.url.origin())


def _route(request: ClientRequest) -> str:
    return f"{request.method} {request.url.origin()}{request.url.path}"


class ResilienceMiddleware:
    """
    aiohttp client middleware applying a policy per host (or per route) to every request.

    Args:
        policies: A factory ``key -> Policy`` (called once per key), or a mapping from
            key to policy. Default: `default_policy`.
        default: With a mapping, the policy for keys not in it (None: no policy, the
            request goes straight through, still carrying deadline and trace headers).
        key: ``"origin"`` (scheme, host and port: one policy per host, the default),
            ``"route"`` (method, origin and path: beware of cardinality), or a function
            of the request returning the key.
        retry_methods: Methods that may be retried and hedged; others run once.
        failure_status: Which statuses are failures (default: 5xx and 429).
        propagate: Send the remaining deadline and the trace context with each attempt.
        deadline_header: The header carrying the remaining milliseconds.

    Raises:
        TypeError: `policies` is neither callable nor a mapping, or `key` is unknown.
    """

    def __init__(
        self,
        policies: Callable[[str], Policy] | Mapping[str, Policy] | None = None,
        *,
        default: Policy | None = None,
        key: Literal["origin", "route"] | Callable[[ClientRequest], str] = "origin",
        retry_methods: Collection[str] = IDEMPOTENT_METHODS,
        failure_status: Callable[[int], bool] = is_failure_status,
        propagate: bool = True,
        deadline_header: str = DEADLINE_HEADER,
    ) -> None:
        self._factory: Callable[[str], Policy] | None
        if isinstance(policies, Policy):
            raise TypeError(
                "ResilienceMiddleware(policies=...): got a policy; pass a factory such as"
                " `lambda key: pipeline(...)` (one policy per key) or a mapping"
            )
        if policies is None or callable(policies):
            self._factory, self._policies = policies or default_policy, {}
        elif isinstance(policies, Mapping):
            self._factory, self._policies = None, dict(policies)
        else:
            raise TypeError(
                "ResilienceMiddleware(policies=...): expected a factory or a mapping,"
                f" got {policies!r}"
            )
        self._default = default
        self._key = _key_function(key)
        self._retry_methods = frozenset(m.upper() for m in retry_methods)
        self._failure_status = failure_status
        self._propagate = propagate
        self._deadline_header = deadline_header

    def policy_for(self, key: str) -> Policy | None:
        """
        Return the policy used for `key`, building it on first use.
        """
        policy = self._policies.get(key)
        if policy is None and self._factory is not None:
            policy = self._policies[key] = self._factory(key)
        return policy if policy is not None else self._default

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """
        Run one request through its key's policy (aiohttp calls this).
        """
        policy = self.policy_for(self._key(request))
        if policy is None:
            self._stamp(request)
            return await handler(request)
        attempt = _Attempts(self, request, handler)
        once = (
            no_retries()
            if request.method not in self._retry_methods or _one_shot_body(request)
            else nullcontext()
        )
        try:
            with once:
                response = await policy.call(attempt.send)
        except UnhealthyResponse as failed:
            response = failed.response  # no attempt left: the caller gets the response
        except _CannotResend:
            response = attempt.last_outcome()
        except _NotSent as not_sent:
            attempt.release_all()
            raise not_sent.error from not_sent.error.__cause__  # as if no middleware
        except BaseException:
            attempt.release_all()
            raise
        attempt.keep(response)
        if not isinstance(response, ClientResponse):
            raise TypeError(
                f"ResilienceMiddleware: the policy for {request.url.origin()} returned"
                f" {type(response).__name__}, not a response; put Fallback around your"
                " request code, not in the middleware's policies"
            )
        return response

    def _stamp(self, request: ClientRequest) -> None:
        if self._propagate:
            set_deadline_header(request.headers, self._deadline_header)
            inject_trace_context(request.headers)


class _Attempts:
    """
    The attempts of one request: sends each, remembers responses to release.
    """

    __slots__ = ("_handler", "_kept", "_last_error", "_middleware", "_request", "_responses")

    def __init__(
        self, middleware: ResilienceMiddleware, request: ClientRequest, handler: ClientHandlerType
    ) -> None:
        self._middleware = middleware
        self._request = request
        self._handler = handler
        self._responses: list[ClientResponse] = []
        self._kept: ClientResponse | None = None
        self._last_error: BaseException | None = None

    async def send(self) -> ClientResponse:
        if (self._responses or self._last_error) and _body_spent(self._request):
            raise _CannotResend  # checked before releasing: the caller may get that response
        # Release the response of the failed attempt before sending again: its
        # connection goes back to the pool instead of waiting for garbage collection.
        self.release_discarded()
        self._middleware._stamp(self._request)  # noqa: SLF001  # a fresh deadline per attempt
        try:
            response = await self._handler(self._request)
        except (ClientError, OSError, ResilienceError) as error:
            self._last_error = error
            raise  # the network, the server, or an inner policy: judged by the policies
        except Exception as error:
            raise _NotSent(error) from error
        self._responses.append(response)
        if self._middleware._failure_status(response.status):  # noqa: SLF001
            raise UnhealthyResponse(response)
        return response

    def last_outcome(self) -> ClientResponse:
        """
        The last attempt's response, or raise its error (when it can't be resent).
        """
        if self._responses:
            return self._responses[-1]
        self.release_all()
        assert self._last_error is not None  # noqa: S101  # _CannotResend needs an attempt
        raise self._last_error

    def keep(self, response: object) -> None:
        """
        Hand `response` to the caller; release every other one.
        """
        self._kept = response if isinstance(response, ClientResponse) else None
        self.release_discarded()

    def release_all(self) -> None:
        """
        Release every response (the call failed with an exception).
        """
        self._kept = None
        self.release_discarded()

    def release_discarded(self) -> None:
        """
        Release the responses not handed to the caller.
        """
        for response in self._responses:
            if response is not self._kept:
                response.release()
        self._responses = [r for r in self._responses if r is self._kept]


def _key_function(key: object) -> Callable[[ClientRequest], str]:
    if key == "origin":
        return _origin
    if key == "route":
        return _route
    if callable(key):
        return key
    raise TypeError(f"ResilienceMiddleware(key={key!r}): expected 'origin', 'route' or a function")
