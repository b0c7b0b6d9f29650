"""Dependencies of the routes: the database, the settings and the caller's identity."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from metatune_service import crud
from metatune_service.api.errors import responses
from metatune_service.core.config import Settings
from metatune_service.core.db import Database

bearer = HTTPBearer(auto_error=False, description="an API token: METATUNE_API_TOKENS or `metatune token create`")


async def get_db(request: Request) -> Database:  # async: no thread hop for an attribute read
    return request.app.state.db


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


DatabaseDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


SESSION_COOKIE = "metatune_token"
"""The dashboard's cookie: the token entered once at ``/ui/login`` (HttpOnly, SameSite=Strict)."""
UI_HEADER = "X-Requested-With"
"""A request authenticated by the cookie that changes something (not GET or HEAD) must carry
this header: a cross-site form cannot set it (SameSite=Strict already keeps the cookie from
other sites; the header also holds where a browser ignores SameSite)."""


def token_of(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str:
    """The caller's token: the bearer header, else the dashboard's cookie; 401 without either
    (or for a cookie on a state-changing request without :data:`UI_HEADER`)."""
    if credentials is not None and credentials.scheme.lower() == "bearer" and credentials.credentials:
        return credentials.credentials
    cookie = request.cookies.get(SESSION_COOKIE)
    if cookie:
        if request.method not in ("GET", "HEAD") and not request.headers.get(UI_HEADER):
            raise HTTPException(403, f"a request signed in by the dashboard's cookie must send {UI_HEADER}")
        return cookie
    raise HTTPException(401, "missing bearer token: send `Authorization: Bearer <token>`",
                        headers={"WWW-Authenticate": "Bearer"})


async def owner_of(db: Database, settings: Settings, token: str) -> str | None:
    """The owner of ``token`` (from the settings, compared in constant time, or from the
    tokens table by hash), or None. The token itself is never logged."""
    given = token.encode()
    owner = None
    for known, name in settings.tokens().items():
        if hmac.compare_digest(known.encode(), given):
            owner = name
    if owner is None:  # a stored token: a database read, off the event loop
        owner = await run_in_threadpool(crud.owner_of_token, db, token=token)
    return owner


async def current_owner(request: Request, db: DatabaseDep, settings: SettingsDep,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The owner of the bearer token or of the dashboard's cookie; 401 otherwise."""
    owner = await owner_of(db, settings, token_of(request, credentials))
    if owner is None:
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return owner


OwnerDep = Annotated[str, Depends(current_owner)]


IdempotencyKey = Annotated[str | None, Header(
    alias="Idempotency-Key", min_length=1, max_length=200, pattern=r"^[\x21-\x7e]+$",
    description="any string of 1-200 visible ASCII characters, new for each new request: the same request "
                "sent again with the same key (a retry) returns what the first one made instead of making it "
                "again; a different request with a key already used gets a 409")]
"""A submission's ``Idempotency-Key`` header (per owner; :func:`metatune_service.crud.create_jobs`)."""


REUSED_KEY = {409: {**responses(409)[409],
                     "description": "the Idempotency-Key was used by this owner for another request"}}
"""The OpenAPI entry of the 409 a submission answers when its key was used for another request."""
