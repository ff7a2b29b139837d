"""
`ResilienceMiddleware`: resilience policies for every request of an aiohttp session.

    async with aiohttp.ClientSession(middlewares=[ResilienceMiddleware()]) as session: ...

Each request is run through a policy chosen by its key (the origin by default, so one
breaker per host), built on the key's first use by a factory (at most `max_keys` kept:
see `_policies`) or looked up in a mapping. The default policy has a total and a
per-attempt timeout, so a hung server is not waited on for aiohttp's 300 s. Outcomes
are classified the way a dependency's health should be judged:

- connection errors, timeouts, 5xx and 429 are failures: retried (for idempotent
  methods) and counted by breakers;
- any other status, 4xx included, is a success: the dependency answered, the caller
  asked for something wrong.

A failed *response* travels through the policies as `UnhealthyResponse` so retries and
breakers see it; when no attempt is left the caller gets the last response itself, as
without the middleware. Every response but the caller's is released, and never the
caller's, even when hedged attempts overlap (see `_attempts`), so no connection leaks.
Non-idempotent methods run once (`resilient.no_retries()`) unless `retry_methods` says
otherwise; breakers still count them. A ``Retry-After`` header (seconds or an HTTP
date) reaches `Retry` as the error's ``retry_after``, where it is capped. Every attempt
carries the remaining deadline and the trace context.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Literal

from aiohttp import ClientRequest, ClientResponse
from aiohttp.client_middlewares import ClientHandlerType
from multidict import istr
from yarl import URL

from resilient import CircuitBreaker, Policy, Retry, RetryBudget, Timeout, no_retries, pipeline
from resilient.validation import check_seconds

from ._attempts import (
    Attempts,
    UnhealthyResponse,
    is_failure_status,
    parse_retry_after,
    resend_rules,
)
from ._policies import DEFAULT_MAX_KEYS, PolicyCache
from ._propagation import DEADLINE_HEADER, PRIORITY_HEADER, stamp_headers

__all__ = [
    "DEFAULT_MAX_KEYS",
    "IDEMPOTENT_METHODS",
    "ResilienceMiddleware",
    "UnhealthyResponse",
    "default_policy",
    "is_failure_status",
    "parse_retry_after",
]

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})
# A header name is an RFC 9110 token: aiohttp sends any str as one, and a server answers
# a malformed request line with a 400 (a success to the middleware) at every request.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def default_policy(key: str, *, total: float = 30.0, per_attempt: float = 10.0) -> Policy:
    """
    The policy a key gets when no factory or mapping is given.

    A total timeout around three attempts with full-jitter backoff and a retry budget of
    10% of the key's traffic, a breaker that opens after 5 consecutive failures for
    30 s, and a timeout on each attempt (the standard HTTP pipeline of Polly v8, with
    its timeouts). A hung server costs `per_attempt` per attempt and `total` in all,
    not aiohttp's 300 s per request.

    Args:
        key: The key the policy serves (its policies are named after it).
        total: Seconds for the whole call, retries and backoff included.
        per_attempt: Seconds for each attempt (capped by what is left of `total`).

    Raises:
        TypeError: `key` is not a str.
        ValueError: `key` is empty (a key function returned ""), a timeout is not a
            finite number of seconds > 0, or `per_attempt` is longer than `total` (the
            attempt's timeout could never fire first: most likely the two swapped).
    """
    if not isinstance(key, str):
        raise TypeError(f"default_policy(key={key!r}): the request's key must be a str")
    if not key:
        raise ValueError(
            "default_policy(key=''): the request's key is empty; a key function must"
            " return a non-empty name (it names the key's policies in events and metrics)"
        )
    total = check_seconds("default_policy", "total", total)
    per_attempt = check_seconds("default_policy", "per_attempt", per_attempt)
    if per_attempt > total:
        raise ValueError(
            f"default_policy(total={total!r}, per_attempt={per_attempt!r}): per_attempt is"
            " longer than total, so it would never end an attempt; give each attempt less"
            " than the whole call (e.g. total=30, per_attempt=10)"
        )
    return pipeline(
        Timeout(total, name=key),
        Retry(attempts=3, budget=RetryBudget(0.1), name=key),
        CircuitBreaker(name=key, failure_threshold=5, reset_timeout=30.0),
        Timeout(per_attempt, name=key),
    )


# Origin strings by scheme, host and explicit port (the URL's own origin: default port
# left out). The host as aiohttp connects to it, a trailing dot kept: `a.test.` is resolved
# and pooled apart from `a.test` (another name under a search domain, or none at all), so
# its failures must not open `a.test`'s breaker. Built once per origin; cleared when full
# (a crawler's hosts).
_ORIGINS: dict[tuple[str, str | None, int | None], str] = {}
_MAX_ORIGINS = 1024


_IN_MEMORY = (False, False)  # `resend_rules` of bytes: not file-like, not one-shot


def _origin(request: ClientRequest) -> str:
    url = request.url
    key = (url.scheme, url.raw_host, url.explicit_port)
    origin = _ORIGINS.get(key)
    if origin is None:
        if len(_ORIGINS) >= _MAX_ORIGINS:
            _ORIGINS.clear()
        origin = _ORIGINS[key] = str(url.origin())
    return origin


def _spelled_origin(text: str) -> str | None:
    # The origin `_origin` gives a request for the URL `text` (None: `text` names none).
    try:
        url = URL(text)
        return str(url.origin()) if url.absolute and url.raw_host else None
    except ValueError:
        return None


def _check_origins(policies: Mapping[str, Policy]) -> None:
    # A mapping's key spelled otherwise than `_origin` spells origins matches no request,
    # and its host would go without a policy, silently.
    for key in policies:
        if not isinstance(key, str):
            raise TypeError(f"ResilienceMiddleware(policies=...): the key {key!r} is not a str")
        origin = _spelled_origin(key)
        if origin != key:
            fix = f"write {origin!r}" if origin else "expected 'scheme://host[:port]'"
            raise ValueError(
                f"ResilienceMiddleware(policies=...): the key {key!r} is no request's origin;"
                f" {fix} (lower case, no path, no default port)"
            )


def _default_without_mapping(no_policies: bool) -> str:
    # `default=` only serves a mapping's missing keys: say what to write instead, since
    # `ResilienceMiddleware(default=policy)` reads naturally and would be silently unused.
    instead = (
        "no mapping was given (without one each key gets default_policy(key))"
        if no_policies
        else "with a factory every key gets the factory's policy"
    )
    return (
        f"ResilienceMiddleware(default=...): default= serves the keys missing from a"
        f" mapping, and {instead}; for a policy of its own per key pass a factory"
        f" (`lambda key: pipeline(...)`), for one policy shared by every key"
        f" `ResilienceMiddleware({{}}, default=policy)`"
    )


def _route(request: ClientRequest) -> str:
    # The origin as `_origin` spells it (its cache saves building a URL per request).
    return f"{request.method} {_origin(request)}{request.url.path}"


def method_names(owner: str, retry_methods: Collection[str]) -> frozenset[str]:
    """
    The upper-cased `retry_methods`, checked.

    Raises:
        TypeError: A single string (``"GET"`` would be the methods G, E and T, and GET
            silently never retried), or a name that is not a str.
    """
    if isinstance(retry_methods, str) or not all(isinstance(m, str) for m in retry_methods):
        raise TypeError(
            f"{owner}(retry_methods={retry_methods!r}): expected a collection of"
            " method names, e.g. {'GET', 'PUT'}"
        )
    return frozenset(m.upper() for m in retry_methods)


class ResilienceMiddleware:
    """
    aiohttp client middleware applying a policy per host (or per route) to every request.

    Args:
        policies: A factory ``key -> Policy`` (called on a key's first use), or a mapping
            from key to policy. Default: `default_policy`.
        default: With a mapping, the policy for keys not in it (None: no policy, the
            request goes straight through, still carrying deadline and trace headers).
        key: ``"origin"`` (scheme, host and port: one policy per host, the default),
            ``"route"`` (method, origin and path: beware of cardinality), or a function
            of the request returning the key.
        retry_methods: Methods that may be retried and hedged; others run once.
        failure_status: Which statuses are failures (default: 5xx and 429). One that
            raises is the caller's error: raised as is, neither retried nor counted.
        propagate: Send the remaining deadline, the priority (when not the default) and
            the trace context with each attempt.
        deadline_header: The header carrying the remaining milliseconds.
        priority_header: The header carrying the priority's name.
        max_keys: Policies built by the factory kept at most (>= 1): beyond it the least
            recently used idle one (nothing in flight, no breaker open) is dropped, and
            built afresh if its key comes back.

    Raises:
        TypeError: `policies` is neither callable nor a mapping, a policy in it or
            `default` is not a `Policy` (nor one the factory returns, at the key's first
            request), `default` comes with a factory, `key` is unknown,
            `failure_status` is not callable, `max_keys` is not an int, or a header
            name or (with ``key="origin"``) a mapping's key is not a str.
        ValueError: `max_keys` < 1, a header name is not a valid HTTP header name
            or names the other header, or with ``key="origin"`` a mapping's key is not
            spelled as requests' origins are (``http://api``, not ``http://api:80/``).
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
        max_keys: int = DEFAULT_MAX_KEYS,
        priority_header: str = PRIORITY_HEADER,
    ) -> None:
        if isinstance(policies, Policy):
            raise TypeError(
                "ResilienceMiddleware(policies=...): got a policy; pass a factory such as"
                " `lambda key: pipeline(...)` (one policy per key) or a mapping"
            )
        if policies is None or callable(policies):
            if default is not None:  # else silently unused: every key gets the factory's
                raise TypeError(_default_without_mapping(policies is None))
            self._policies = PolicyCache(policies or default_policy, {}, None, max_keys)
        elif isinstance(policies, Mapping):
            if key == "origin":
                _check_origins(policies)
            self._policies = PolicyCache(None, policies, default, max_keys)
        else:
            raise TypeError(
                "ResilienceMiddleware(policies=...): expected a factory or a mapping,"
                f" got {policies!r}"
            )
        self._key_name = key if isinstance(key, str) else getattr(key, "__name__", "function")
        self._key = _key_function(key)
        self._retry_methods = method_names("ResilienceMiddleware", retry_methods)
        if not callable(failure_status):
            raise TypeError(
                f"ResilienceMiddleware(failure_status=...): expected a function of the"
                f" status, got {failure_status!r}"
            )
        self._failure_status = failure_status
        # multidict's case-insensitive str: the headers take it without folding its case
        # again on every attempt of every request.
        self._deadline_header = istr(_header_name("deadline_header", deadline_header))
        self._priority_header = istr(_header_name("priority_header", priority_header))
        if self._deadline_header.lower() == self._priority_header.lower():
            raise ValueError(
                f"ResilienceMiddleware(deadline_header={deadline_header!r},"
                f" priority_header={priority_header!r}): one header can't carry both"
            )
        self._propagate = propagate

    @property
    def max_keys(self) -> int:
        """
        How many policies built by the factory are kept at most (idle ones).
        """
        return self._policies.max_keys

    def policy_for(self, key: str) -> Policy | None:
        """
        Return the policy used for `key`, building it on first use.

        A built policy dropped from the cache (see `max_keys`) is built again.
        """
        return self._policies.get(key)

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """
        Run one request through its key's policy (aiohttp awaits this).

        The request's whole run, written out in one frame: every I/O wait of the
        request resumes through each frame awaiting it, and every request pays each
        call made here.

        Raises:
            TypeError: The policy returned something else than a response.
        """
        key_of, url = self._key, request.url
        # The default key's cache hit written out (every request pays it), else the call.
        origin = (url.scheme, url.raw_host, url.explicit_port) if key_of is _origin else None
        key = _ORIGINS.get(origin) or key_of(request)  # type: ignore[arg-type]  # None: a miss
        cache = self._policies
        entry = cache.last
        if entry is None or entry.key != key:  # most requests: the key of the one before
            entry = cache.get_entry(key)
            if entry is None:
                if self._propagate:
                    stamp_headers(request.headers, self._deadline_header, self._priority_header)
                return await handler(request)
        # `Attempts.__init__`'s fields set here, one by one: calling a class's Python
        # `__init__` costs more than all of them, and every request builds one.
        attempts = _RequestAttempts.__new__(_RequestAttempts)
        attempts._failure_status = self._failure_status  # noqa: SLF001
        attempts._held = []  # noqa: SLF001
        attempts._failed = ()  # noqa: SLF001
        attempts._last_error = None  # noqa: SLF001
        attempts._sent = 0  # noqa: SLF001
        attempts._sending = False  # noqa: SLF001
        body = request.body  # aiohttp's b"" when there is none
        rules = _IN_MEMORY if type(body) is bytes else resend_rules(body)
        attempts._file_like, attempts._one_shot = rules  # noqa: SLF001
        attempts.request = request
        attempts.handler = handler
        attempts.middleware = self
        # In flight, the cache won't drop the key's policy: counted with nothing awaited
        # since the lookup, so the entry is still the key's.
        entry.in_flight += 1
        # The unbound `send`, run through the key's policy by a function made once per
        # key (a fused pipeline's own: no `.call` frame per request).
        run = entry.run
        if run is None:
            run = entry.run = entry.policy.runner(_RequestAttempts.send)
        try:
            if request.method not in self._retry_methods or attempts._one_shot:  # noqa: SLF001
                with no_retries():
                    response = await run(attempts)
            else:
                response = await run(attempts)
        except BaseException as error:
            settled = attempts.settle(error)
            if settled is None:
                raise
            response = settled
        finally:
            entry.in_flight -= 1
            if cache.overfull:
                cache.shrink()  # keys busy when the cache filled up may be idle now
        held = attempts._held  # noqa: SLF001  # `hand`'s test, inlined: most requests
        if len(held) != 1 or held[0] is not response:  # made one attempt that answered
            attempts.hand(response)
        if not isinstance(response, ClientResponse):
            raise TypeError(
                f"ResilienceMiddleware: the policy for {request.url.origin()} returned"
                f" {type(response).__name__}, not a response; put Fallback around your"
                " request code, not in the middleware's policies"
            )
        return response

    def __repr__(self) -> str:
        policies = self._policies
        return (
            f"<ResilienceMiddleware key={self._key_name!r} keys={len(policies)}"
            f"/{policies.max_keys} in_flight={policies.in_flight()}>"
        )


class _RequestAttempts(Attempts):
    """
    The attempts of one request through the middleware: the same request, re-sent.
    """

    # Built by the middleware field by field, with these three, and no ``_body``: the
    # body is the request's own, read anew before each re-send (`_spent`).
    __slots__ = ("handler", "middleware", "request")

    handler: ClientHandlerType
    middleware: ResilienceMiddleware
    request: ClientRequest

    def _spent(self) -> bool:
        # The request's body as it is now: a middleware inside ours may have replaced it.
        return bool(getattr(self.request.body, "consumed", False))

    def _attempt(self) -> Awaitable[ClientResponse]:
        request, middleware = self.request, self.middleware
        if middleware._propagate:  # noqa: SLF001  # its own module's
            # Per attempt: the deadline left shrinks.
            stamp_headers(
                request.headers,
                middleware._deadline_header,  # noqa: SLF001  # its own module's
                middleware._priority_header,  # noqa: SLF001
            )
        return self.handler(request)


def _header_name(param: str, name: object) -> str:
    # Checked here, not left to the wire: istr() turns None or bytes into their repr.
    if not isinstance(name, str):
        raise TypeError(f"ResilienceMiddleware({param}=...): expected a str, got {name!r}")
    if not _TOKEN.fullmatch(name):
        raise ValueError(f"ResilienceMiddleware({param}={name!r}): not a valid HTTP header name")
    return name


def _key_function(key: object) -> Callable[[ClientRequest], str]:
    if key == "origin":
        return _origin
    if key == "route":
        return _route
    if callable(key):
        return key
    raise TypeError(f"ResilienceMiddleware(key={key!r}): expected 'origin', 'route' or a function")
