"""
The attempts of one request through `ResilienceMiddleware`, and what they raise.

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
from collections.abc import Callable

from aiohttp import ClientError, ClientRequest, ClientResponse
from aiohttp.client_middlewares import ClientHandlerType
from aiohttp.payload import AsyncIterablePayload

from resilient import RejectedError, ResilienceError

__all__ = ["Attempts", "CannotResend", "NotSent", "UnhealthyResponse", "parse_retry_after"]


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
    The request's body was a one-shot stream, already sent.

    Another attempt would send an empty body; the caller gets the last attempt's
    outcome instead.
    """


class NotSent(RejectedError):
    """
    The request failed before reaching the dependency, by the caller's own error.

    Say a header aiohttp refuses to send, or a trace propagator that raises. As a
    `RejectedError` it is neither retried nor counted by breakers, like a 4xx; the
    middleware re-raises the original exception to the caller.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error
        super().__init__(f"request not sent: {error!r}")


def one_shot_body(request: ClientRequest) -> bool:
    """
    Whether the request's body can be read only once.
    """
    # An async iterable (a generator, a stream) can be read once; bytes, str, JSON and
    # seekable files are re-sent whole by aiohttp.
    return isinstance(request.body, AsyncIterablePayload)


def _body_spent(request: ClientRequest) -> bool:
    return bool(getattr(request.body, "consumed", False))


class Attempts:
    """
    The attempts of one request: sends each, releases every response but the caller's.

    Args:
        request: The request, sent once per attempt.
        handler: aiohttp's next handler.
        stamp: Writes the per-attempt headers (deadline, trace context).
        failure_status: Which statuses are failures.
    """

    __slots__ = (
        "_failed",
        "_failure_status",
        "_handler",
        "_held",
        "_last_error",
        "_request",
        "_sent",
        "_stamp",
    )

    def __init__(
        self,
        request: ClientRequest,
        handler: ClientHandlerType,
        *,
        stamp: Callable[[ClientRequest], None],
        failure_status: Callable[[int], bool],
    ) -> None:
        self._request = request
        self._handler = handler
        self._stamp = stamp
        self._failure_status = failure_status
        self._held: list[ClientResponse] = []  # received, not released yet
        self._failed: list[ClientResponse] = []  # the held ones that failed
        self._last_error: BaseException | None = None
        self._sent = 0

    async def send(self) -> ClientResponse:
        """
        Send one attempt (the policies call this); raise `UnhealthyResponse` on a failure.
        """
        if self._sent and _body_spent(self._request):
            raise CannotResend  # checked before releasing: the caller may get that response
        if self._failed:
            self._release(self._failed)
        self._sent += 1
        try:
            # Stamped inside the try: a header that can't be written is the caller's
            # error (NotSent), never an attempt that failed.
            self._stamp(self._request)
            response = await self._handler(self._request)
        except (ClientError, OSError, ResilienceError) as error:
            self._last_error = error
            raise  # the network, the server, or an inner policy: judged by the policies
        except Exception as error:
            # Kept too: when this was the last attempt and an earlier one's failed
            # response is already released, the caller gets this, its own error.
            self._last_error = error
            raise NotSent(error) from error
        self._held.append(response)
        if self._failure_status(response.status):
            self._failed.append(response)
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

    def keep(self, response: object) -> None:
        """
        Hand `response` to the caller; release every other one.
        """
        doomed = [held for held in self._held if held is not response]
        if doomed:
            self._release(doomed)

    def release_all(self) -> None:
        """
        Release every response (the call failed with an exception).
        """
        self._release(list(self._held))

    def _release(self, doomed: list[ClientResponse]) -> None:
        for response in doomed:
            response.release()
        self._held = [response for response in self._held if response not in doomed]
        self._failed = [response for response in self._failed if response not in doomed]
