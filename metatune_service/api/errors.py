"""Every error the service answers, in one shape and one place.

An error body is ``{"detail": <message or FastAPI's list of field errors>, "code": <name>}``
(:class:`~metatune_service.schemas.Problem`); ``code`` is machine-readable and fixed per kind
of error (:data:`CODES`). The handlers here turn each exception a request can raise into that
body: HTTP errors raised by routes, request validation, the library's and the spec's
``ValueError`` (422), database outages (503 with ``Retry-After``) and values the database
refuses (422). :func:`responses` declares the same statuses in the OpenAPI document, so the
document lists every status a route can answer.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sql
from starlette.exceptions import HTTPException as StarletteHTTPException

from metatune.errors import InvalidArgumentError
from metatune_service.schemas import Problem
from metatune_service.validation import SpecError

log = logging.getLogger("metatune.service")

CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "body_too_large",
    422: "invalid_request",
    429: "rate_limited",
    500: "internal_error",
    503: "unavailable",
}
"""The ``code`` of each status's error body."""

DESCRIPTIONS: dict[int, str] = {
    400: "a cursor this server did not issue",
    401: "no token, or a token that is unknown or revoked",
    403: "signed in by the dashboard's cookie without the X-Requested-With header",
    404: "no such resource for this owner (another owner's resources are not shown)",
    409: "the resource is not in a state that allows this",
    411: "a chunked body without Content-Length",
    413: "the body is over the size limit, or nested too deeply",
    422: "a field, parameter or value the server refuses; detail says which and what to change",
    429: "over this token's request rate; retry after Retry-After seconds",
    503: "the database is unreachable, read-only or full; retry after Retry-After seconds",
}

RETRY_AFTER_SECONDS = 5
"""What a 503 asks a client to wait before retrying (a database restart takes seconds)."""

_RETRY = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_HEADERS = {401: {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
            429: _RETRY, 503: _RETRY}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of ``statuses``: each a :class:`Problem` with its description
    (and its ``Retry-After`` or ``WWW-Authenticate`` header)."""
    return {status: {"model": Problem, "description": DESCRIPTIONS[status],
                     **({"headers": _HEADERS[status]} if status in _HEADERS else {})} for status in statuses}


AUTHENTICATED = (401, 429, 503)
"""What any route behind a token can answer besides its own errors."""
WITH_BODY = (403, 411, 413, 422)
"""What a route that takes a request body (or changes state) can answer besides those."""


def problem(status: int, detail: Any, headers: dict[str, str] | None = None, code: str | None = None) -> JSONResponse:
    """The error response: ``{"detail": detail, "code": code or CODES[status]}``."""
    return JSONResponse({"detail": json_safe_errors(detail), "code": code or CODES.get(status, "error")},
                        status_code=status, headers=headers)


def unavailable(detail: str) -> JSONResponse:
    return problem(503, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def install(app: FastAPI) -> None:
    """The exception handlers of :mod:`this module <metatune_service.api.errors>` on ``app``."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return problem(error.status_code, error.detail, headers=getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's list of field errors, each input made JSON-safe: a NaN or ±Infinity a
        client sent (Python's parser reads them) would otherwise fail to encode."""
        return problem(422, error.errors())

    @app.exception_handler(SpecError)
    @app.exception_handler(InvalidArgumentError)
    async def invalid_argument(request: Request, error: ValueError) -> JSONResponse:
        return problem(422, str(error), code="invalid_spec")

    @app.exception_handler(sql.DataError)
    async def refused_value(request: Request, error: sql.DataError) -> JSONResponse:
        """A value the database cannot hold (a NUL in a string on PostgreSQL, a number past its
        range): the request's fault, and nothing was written (the transaction rolled back)."""
        return problem(422, f"a value the database cannot store: {type(error.orig).__name__}", code="invalid_value")

    @app.exception_handler(sql.OperationalError)
    @app.exception_handler(sql.InterfaceError)
    @app.exception_handler(sql.TimeoutError)
    async def database_down(request: Request, error: Exception) -> JSONResponse:
        """The database is unreachable (restarting, connections refused), read-only or out of
        space: nothing was written; the client retries later."""
        log.warning("database unavailable: %s", str(error).splitlines()[0][:200])
        return unavailable(f"the database is unavailable ({_reason(error)}): retry in {RETRY_AFTER_SECONDS} s")

    @app.exception_handler(Exception)
    async def internal(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(500, "internal error: the server logged it")


def _reason(error: Exception) -> str:
    text = str(getattr(error, "orig", None) or error).lower()
    for words, reason in ((("readonly", "read-only"), "read-only"), (("disk is full", "no space"), "disk full")):
        if any(w in text for w in words):
            return reason
    return "unreachable" if not isinstance(error, sql.TimeoutError) else "no free connection"


def json_safe_errors(value: Any) -> Any:
    """``value`` with every non-finite float as its name ("NaN", "Infinity", "-Infinity") and
    anything else JSON cannot hold as its ``repr``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {json_safe_errors(str(k)): json_safe_errors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe_errors(v) for v in value]
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")  # a lone surrogate a client sent
    if value is None or isinstance(value, (int, float, bool)):
        return value
    return repr(value)
