"""The FastAPI app: routers combined, settings and database opened at start-up (the schema
migrated when the database is new, refused when it is outdated), an embedded worker when
asked, requests limited in rate, size and depth (:mod:`~metatune_service.api.limits`), every
error answered in one shape (:mod:`~metatune_service.api.errors`), ``/docs`` served without
a CDN, and the registered objectives named in the OpenAPI document."""

from __future__ import annotations

import gc
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from metatune_service.api import errors
from metatune_service.api.deps import SESSION_COOKIE
from metatune_service.api.limits import Limits
from metatune_service.api.routes import comparisons, jobs, objectives
from metatune_service.ui import routes as dashboard
from metatune_service.core.config import Settings
from metatune_service.core.db import Database
from metatune_service.core.migrations import prepare


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
        settle_heap()
        try:
            yield
        finally:
            if worker is not None:
                thread, stop = worker
                stop.set()
                thread.join(timeout=30)
            db.dispose()

    app = FastAPI(title="metatune", version="1", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Tune momentum SGD's learning rate and momentum by meta-gradients, against "
                              "Optuna's samplers at equal budget. Jobs run on Ray Tune.")

    app.add_middleware(Limits, max_body_bytes=settings.max_body_bytes, max_json_depth=settings.max_json_depth,
                       rate=settings.rate_limit, burst=settings.rate_burst, cookie_name=SESSION_COOKIE)
    errors.install(app)
    install_docs(app)

    @app.get("/healthz", tags=["health"], operation_id="health", responses=errors.responses(429))
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    for module in (jobs, comparisons, objectives):
        app.include_router(module.router)
    dashboard.install(app)
    name_objectives(app)
    return app


SUBMISSIONS = ("JobCreate", "ComparisonCreate")
"""The request bodies whose ``objective`` names a registered objective."""


def name_objectives(app: FastAPI) -> None:
    """The OpenAPI document lists the objectives this server knows as the ``enum`` of each
    submission's ``objective`` (the registry, entry points included, is read when the document
    is first built), so that clients and generated code offer the names a submission can use."""
    from metatune import objectives as registry

    build = app.openapi

    def document() -> dict:
        if app.openapi_schema is None:
            schema = build()
            for body in SUBMISSIONS:
                schema["components"]["schemas"][body]["properties"]["objective"]["enum"] = registry.names()
        return app.openapi_schema

    app.openapi = document  # type: ignore[method-assign]


def app_from_environment() -> FastAPI:
    """The service without an embedded worker, from the ``METATUNE_*`` environment: each API
    process of ``metatune serve --processes N`` builds its app with this (the parent runs the
    worker and has already checked the database's revision)."""
    from metatune_service.core.config import load_settings

    return create_app(load_settings())


def settle_heap() -> None:
    """Move what start-up made (torch, Ray, SQLAlchemy, the app: some 300,000 objects) out of
    the collector's reach (:func:`gc.freeze`), so that a full collection under load walks
    only what requests made: one over the whole start-up heap takes 60-150 ms, and
    stopped every request in flight for that long."""
    gc.collect()
    gc.freeze()


def install_docs(app: FastAPI) -> None:
    """``/docs``: Swagger UI with its script and style sheet served here (from the
    ``fastapi-offline`` wheel), so the page loads on a machine without the internet."""
    import fastapi_offline

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="metatune API",
                                   swagger_js_url="/docs-assets/swagger-ui-bundle.js",
                                   swagger_css_url="/docs-assets/swagger-ui.css",
                                   swagger_favicon_url="/docs-assets/favicon.png")
