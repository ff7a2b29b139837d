"""
The attempts of one request, and what they raise: one routine for both clients.

`ResilienceMiddleware` re-sends one aiohttp request through its policies;
`DiscoveryClient` sends one aiohttp request per instance it fails over to. Both send,
classify and release through `Attempts`, and both follow one rule for the body:

- a body is sent again only while aiohttp can send it whole: not once its payload says
  it is ``consumed`` (a stream or generator that was read, a file that can't seek back,
  a file aiohttp closed at the end of an earlier request), checked before each attempt
  but the first; the caller then gets the last attempt's outcome;
- a streamed body (an async iterable) runs once from the start (`no_retries`): a
  retry would find it consumed, and a hedge would read it twice at once.

Bytes, text, forms and JSON are in memory: sent again whole by both. A seekable file is
rewound by aiohttp within one request, so the middleware re-sends it; `DiscoveryClient`
does not, since aiohttp closes it when a request ends (and sends each instance a copy of
a multipart body, which aiohttp marks consumed when a request ends).

A file-like body (a file, a ``BytesIO``) has one read position that every attempt moves:
two attempts sending it at once (a `Hedge`) would each send parts of it, cut short of
their Content-Length, and hang. An attempt that would overlap one still sending such a
body is refused (`CannotResend`, a rejection: no breaker counts it, the hedge waits for
the attempt in flight). It is refused rather than made to wait: waiting, it would hold
what the policies inside the hedge gave it (a half-open breaker's probe, a timeout's
budget) for a request not sent.

Attempts may overlap: a `Hedge` runs them as concurrent tasks and settles on a winner
only once its task has finished, so another attempt may start in between. Hence the
rule for releasing responses (each holds a pooled connection until released):

- a *failed* response (5xx, 429) is released when the next attempt is sent, so its
  connection is back in the pool before a retry instead of waiting out the backoff;
- a *successful* response is never released before the call ends: the policy may still
  return it;
- when the call ends, every response but the caller's is released, and all of them
  when it ends in an exception (cancellation included).
"""

from __future__ import annotations

import email.utils
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiohttp import ClientError, ClientResponse, FormData, payload
from aiohttp.payload import AsyncIterablePayload, IOBasePayload, Payload

from resilient import RejectedError, ResilienceError, no_retries

__all__ = [
    "Attempts",
    "CannotResend",
    "NotSent",
    "UnhealthyResponse",
    "as_payload",
    "is_failure_status",
    "parse_retry_after",
    "resend_rules",
]


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


class CannotResend(RejectedError):
    """
    The request's body can't be sent by this attempt.

    It is a one-shot stream already sent, or a file-like body another attempt is sending
    now. The attempt would send an empty or interleaved body; the caller gets the last
    attempt's outcome instead.
    """


class NotSent(RejectedError):
    """
    The request failed by the caller's own error, not the dependency's.

    Say a header aiohttp refuses to send, a trace propagator that raises (the request
    never reached the dependency), or a ``failure_status`` that raises on the answer. As
    a `RejectedError` it is neither retried nor counted by breakers, like a 4xx; the
    middleware re-raises the original exception to the caller.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error
        super().__init__(f"request not sent: {error!r}")


def as_payload(data: Any) -> Payload | None:
    """
    The aiohttp payload that ``session.request(data=data)`` would send (None: no body).

    Built once, so every attempt sends the same payload and its ``consumed`` tells
    whether another attempt could send it whole. As aiohttp's own
    ``ClientRequest.update_body_from_data`` builds it, so nothing about the request
    changes (headers, form encoding).
    """
    if data is None:
        return None
    if isinstance(data, FormData):
        data = data()
    try:
        return payload.PAYLOAD_REGISTRY.get(data, disposition=None)
    except payload.LookupError:
        return FormData(data)()


def resend_rules(body: object) -> tuple[bool, bool]:
    """
    How the attempts may send `body`: (file-like, one-shot).

    A file-like body has one read position: its attempts must not overlap. A one-shot
    body (a stream) is sent by one attempt only.
    """
    return isinstance(body, IOBasePayload), isinstance(body, AsyncIterablePayload)


class Attempts(ABC):
    """
    The attempts of one request: sends each, releases every response but the caller's.

    A subclass says how one attempt is sent (`_attempt`); this class classifies it,
    keeps the rule for the body and turns the policies' outcome into the caller's.

    Args:
        body: The request's payload, sent by every attempt (None: no body).
        failure_status: Which statuses are failures.
    """

    __slots__ = (
        "_body",
        "_failed",
        "_failure_status",
        "_file_like",
        "_held",
        "_last_error",
        "_one_shot",
        "_sending",
        "_sent",
    )

    def __init__(self, body: object, failure_status: Callable[[int], bool]) -> None:
        self._body = body
        self._failure_status = failure_status
        self._held: list[ClientResponse] = []  # received, not released yet
        # The held ones that failed: a list once one does (most requests see none).
        self._failed: list[ClientResponse] | tuple[()] = ()
        self._last_error: BaseException | None = None
        self._sent = 0
        self._sending = False
        if body is None or type(body) is bytes:  # no body (aiohttp says b""; it wraps bytes)
            self._file_like = self._one_shot = False  # two ABC checks skipped per request
        else:
            self._file_like, self._one_shot = resend_rules(body)

    @abstractmethod
    def _attempt(self, *args: Any) -> Awaitable[ClientResponse]:
        """
        Send one attempt; what it raises before its awaitable is the caller's error too.
        """

    def _spent(self) -> bool:
        """
        Whether the body was consumed: another attempt would not send it whole.
        """
        return bool(getattr(self._body, "consumed", False))

    async def run(
        self, call: Callable[..., Awaitable[ClientResponse]], *args: Any, once: bool
    ) -> ClientResponse:
        """
        The response for the caller of ``call(*args)``, the policies calling `send`.

        Args:
            call: Runs the policies (`Policy.call`, `EndpointPool.call`).
            *args: Its arguments.
            once: Whether to run a single attempt (`resilient.no_retries`).

        Raises:
            Exception: What the policies raised, or what the request raised by the
                caller's own error (`NotSent`), as without the policies.
        """
        try:
            if once or self._one_shot:
                with no_retries():
                    response = await call(*args)
            else:
                response = await call(*args)
        except BaseException as error:
            settled = self.settle(error)
            if settled is None:
                raise
            response = settled
        self.hand(response)
        return response

    def settle(self, error: BaseException) -> ClientResponse | None:
        """
        What the caller gets when the policies raised `error` (None: re-raise it).

        A response when no attempt is left to make, else None with every response
        released.

        Raises:
            Exception: The caller's own error a `NotSent` carries, as without the policies.
        """
        if isinstance(error, UnhealthyResponse):
            return self.outcome_of(error)  # no attempt left: the caller gets it
        if isinstance(error, CannotResend):
            return self.last_outcome()
        self.release_all()
        if isinstance(error, NotSent):
            raise error.error from error.error.__cause__  # as if no policy
        return None

    def hand(self, response: object) -> None:
        """
        Hand `response` to the caller; release every other one.
        """
        held = self._held
        if not (len(held) == 1 and held[0] is response):  # most: one attempt that answered
            self._release([other for other in held if other is not response])

    async def send(self, *args: Any) -> ClientResponse:
        """
        Send one attempt (the policies call this); raise `UnhealthyResponse` on a failure.

        One coroutine, not one per step: every I/O wait of the attempt resumes through
        each frame awaiting it.
        """
        alone = self._file_like
        if alone:
            if self._sending:  # a hedge, while another attempt sends the body
                raise CannotResend("another attempt is sending this file-like body")
            self._sending = True
        try:
            if self._sent and self._spent():
                raise CannotResend  # checked before releasing: the caller may get that response
            if self._failed:
                self._release(self._failed)
            self._sent += 1
            try:
                # Inside the try: a header that can't be written, a URL aiohttp refuses, is
                # the caller's error (NotSent), never an attempt that failed.
                response = await self._attempt(*args)
            except (ClientError, OSError, ResilienceError) as error:
                self._last_error = error
                raise  # the network, the server, or an inner policy: judged by the policies
            except Exception as error:
                # Kept too: when this was the last attempt and an earlier one's failed
                # response is already released, the caller gets this, its own error.
                self._last_error = error
                raise NotSent(error) from error
        finally:
            if alone:
                self._sending = False
        self._held.append(response)
        status, failure = response.status, self._failure_status
        if failure is is_failure_status:  # the default, written out: every response pays it
            failed = status >= _SERVER_ERROR or status == _TOO_MANY_REQUESTS
        else:
            try:
                failed = failure(status)
            except Exception as error:
                # The caller's classifier is broken, not the dependency: neither retried
                # nor counted by a breaker, raised as is (the response released with the rest).
                self._last_error = error
                raise NotSent(error) from error
        if failed:
            self._failed = [*self._failed, response]
            raise UnhealthyResponse(response)
        return response

    def outcome_of(self, failed: UnhealthyResponse) -> ClientResponse:
        """
        The response for the caller when the policy raised `failed` (no attempt left).

        It is `failed.response`, unless that one was released when a later attempt was
        sent (a `Hedge` whose ``on=`` makes the later attempt's error final raises the
        earlier failure): then the newest attempt's outcome.
        """
        if any(response is failed.response for response in self._held):
            return failed.response
        return self.last_outcome()

    def last_outcome(self) -> ClientResponse:
        """
        The newest response still held, or raise the last attempt's error.
        """
        if self._held:
            return self._held[-1]
        self.release_all()
        assert self._last_error is not None  # noqa: S101  # an attempt was made
        raise self._last_error

    def release_all(self) -> None:
        """
        Release every response (the call failed with an exception).
        """
        self._release(list(self._held))

    def _release(self, doomed: Sequence[ClientResponse]) -> None:
        for response in doomed:
            response.release()
        self._held = [response for response in self._held if response not in doomed]
        self._failed = [response for response in self._failed if response not in doomed]
