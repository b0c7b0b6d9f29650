"""Dependencies of the routes: the database, the settings and the caller's identity."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from metatune_service import crud
from metatune_service.core.config import Settings
from metatune_service.core.db import Database

bearer = HTTPBearer(auto_error=False, description="an API token: METATUNE_API_TOKENS or `metatune token create`")


async def get_db(request: Request) -> Database:  # async: no thread hop for an attribute read
    return request.app.state.db


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


DatabaseDep = Annotated[Database, Depends(get_db)]
SettingsDep = Annotated[Settings, Depends(get_settings)]


async def current_owner(db: DatabaseDep, settings: SettingsDep,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> str:
    """The owner of the bearer token (from the settings, compared in constant time, or from
    the tokens table by hash); 401 otherwise. The token itself is never logged."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise HTTPException(401, "missing bearer token: send `Authorization: Bearer <token>`",
                            headers={"WWW-Authenticate": "Bearer"})
    given = credentials.credentials.encode()
    owner = None
    for token, name in settings.tokens().items():
        if hmac.compare_digest(token.encode(), given):
            owner = name
    if owner is None:  # a stored token: a database read, off the event loop
        owner = await run_in_threadpool(crud.owner_of_token, db, token=credentials.credentials)
    if owner is None:
        raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})
    return owner


OwnerDep = Annotated[str, Depends(current_owner)]
