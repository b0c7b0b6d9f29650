"""What a request may cost before a route sees it: its rate per token, its body's size and its
JSON's depth. One ASGI middleware (no per-request thread hop, no body copy beyond the limit).

- **Rate**: a token bucket per token (the bearer header's or the dashboard cookie's, keyed by
  its SHA-256, never the token itself): ``rate`` requests per second on average, ``burst`` at
  once; past it a 429 with ``Retry-After`` (the seconds until a request is allowed again).
- **Size**: a body over ``max_body_bytes`` is a 413, whether its ``Content-Length`` says so or
  the bytes received do; a chunked body without a length is a 411 (a POST with no body and no
  length, as ``curl -X POST`` sends, is an empty body).
- **Depth**: a JSON body nested deeper than ``max_json_depth`` is a 422, checked on the raw
  bytes before any parser recurses into it; so is a body that is not UTF-8.
"""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
from typing import Any, Awaitable, Callable

from metatune_service.api.errors import problem

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in ``body`` (strings skipped), without parsing it.

    Example:
        >>> json_depth(b'{"a": [1, {"b": "]]]"}]}')
        3
    """
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b"", body)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


class TokenBuckets:
    """``rate`` requests per second per key on average, ``burst`` at once (``rate`` 0: no limit).

    ``take(key)`` is 0 when a request is allowed, else the seconds until one is."""

    MAX_KEYS = 100_000

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.clock = rate, max(burst, 1.0), clock
        self.buckets: dict[bytes, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, key: bytes) -> float:
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        with self.lock:
            tokens, then = self.buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens < 1:
                self.buckets[key] = (tokens, now)
                return (1 - tokens) / self.rate
            if len(self.buckets) >= self.MAX_KEYS and key not in self.buckets:
                self.buckets.clear()  # a flood of distinct tokens: start every bucket full again
            self.buckets[key] = (tokens - 1, now)
            return 0.0


def token_key(headers: list[tuple[bytes, bytes]], cookie_name: bytes) -> bytes | None:
    """The SHA-256 of the request's bearer token, else of its dashboard cookie, else None."""
    cookie = None
    for name, value in headers:
        if name == b"authorization" and value[:7].lower() == b"bearer " and value[7:].strip():
            return hashlib.sha256(value[7:].strip()).digest()
        if name == b"cookie":
            for part in value.split(b";"):
                key, _, token = part.strip().partition(b"=")
                if key == cookie_name and token:
                    cookie = token
    return None if cookie is None else hashlib.sha256(cookie).digest()


class Limits:
    """The ASGI middleware of this module's three limits."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_json_depth: int, rate: float, burst: float,
                 cookie_name: str) -> None:
        self.app, self.max_body_bytes, self.max_json_depth = app, max_body_bytes, max_json_depth
        self.buckets = TokenBuckets(rate, burst)
        self.cookie_name = cookie_name.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        key = token_key(headers, self.cookie_name)
        if key is not None:
            wait = self.buckets.take(key)
            if wait > 0:
                return await problem(429, f"over {self.buckets.rate:g} requests per second for this token: "
                                          f"retry after {math.ceil(wait)} s",
                                     headers={"Retry-After": str(math.ceil(wait))})(scope, receive, send)
        if scope["method"] not in WITH_BODY:
            return await self.app(scope, receive, send)
        refused = self.refused_length(headers)
        if refused is not None:
            return await refused(scope, receive, send)
        body, refused = await self.read_body(receive)
        if refused is not None:
            return await refused(scope, receive, send)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def refused_length(self, headers: list[tuple[bytes, bytes]]) -> Any:
        length = next((v for k, v in headers if k == b"content-length"), None)
        chunked = any(k == b"transfer-encoding" and b"chunked" in v.lower() for k, v in headers)
        if length is None and chunked:
            return problem(411, "send the body with a Content-Length header (no chunked bodies)")
        if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
            return problem(413, f"request body over {self.max_body_bytes} bytes")
        return None

    async def read_body(self, receive: Receive) -> tuple[bytes, Any]:
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return b"", problem(413, f"request body over {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as error:
            return b"", problem(422, f"the body is not UTF-8 (byte {error.start}): send JSON in UTF-8",
                                code="invalid_body")
        if body.lstrip()[:1] in (b"{", b"["):
            depth = json_depth(body)
            if depth > self.max_json_depth:
                return b"", problem(422, f"JSON nested {depth} deep: at most {self.max_json_depth} levels",
                                    code="too_deep")
        return body, None
