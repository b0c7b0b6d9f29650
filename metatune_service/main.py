"""The FastAPI app: routers combined, settings and database opened at start-up (the schema
migrated when the database is new, refused when it is outdated), an embedded worker when
asked, request bodies capped, library errors mapped to HTTP codes in one place."""

from __future__ import annotations

import math
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from metatune.errors import InvalidArgumentError
from metatune_service.api.routes import comparisons, jobs, objectives
from metatune_service.ui import routes as dashboard
from metatune_service.core.config import Settings
from metatune_service.core.db import Database
from metatune_service.core.migrations import prepare
from metatune_service.validation import SpecError


def create_app(settings: Settings | None = None, *, embedded_worker: bool = False) -> FastAPI:
    """The service. ``embedded_worker``: also run jobs in this process (``metatune serve``)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db = Database(settings.database_url)
        prepare(db.engine, db.url)
        app.state.db, app.state.settings = db, settings
        worker = None
        if embedded_worker:
            from metatune.distributed import ensure_ray
            from metatune_service.worker import start_embedded

            ensure_ray(settings.ray_address)  # from the main thread, where Ray can install its signal handlers
            worker = start_embedded(db, settings)
        try:
            yield
        finally:
            if worker is not None:
                thread, stop = worker
                stop.set()
                thread.join(timeout=30)
            db.dispose()

    app = FastAPI(title="metatune", version="1", lifespan=lifespan,
                  description="Tune momentum SGD's learning rate and momentum by meta-gradients, against "
                              "Optuna's samplers at equal budget. Jobs run on Ray Tune.")

    @app.middleware("http")
    async def limit_body(request: Request, call_next):  # noqa: ANN001, ANN202
        length = request.headers.get("content-length")
        chunked = "chunked" in request.headers.get("transfer-encoding", "").lower()
        if length is None and chunked:  # no length and no body (curl -X POST …/cancel) is an empty body
            return JSONResponse({"detail": "send the body with a Content-Length header (no chunked bodies)"},
                                status_code=411)
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            return JSONResponse({"detail": f"request body over {settings.max_body_bytes} bytes"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        """FastAPI's 422 body, with each error's input made JSON-safe: a NaN or ±Infinity a
        client sent (Python's parser reads them) would otherwise fail to encode, as a 500."""
        return JSONResponse({"detail": json_safe_errors(error.errors())}, status_code=422)

    @app.exception_handler(SpecError)
    @app.exception_handler(InvalidArgumentError)
    async def invalid_argument(request: Request, error: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=422)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    for module in (jobs, comparisons, objectives):
        app.include_router(module.router)
    dashboard.install(app)
    return app


def json_safe_errors(value: Any) -> Any:
    """``value`` with every non-finite float as its name ("NaN", "Infinity", "-Infinity") and
    anything else JSON cannot hold as its ``repr``."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {str(k): json_safe_errors(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe_errors(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)
