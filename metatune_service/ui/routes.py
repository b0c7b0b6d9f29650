"""``/ui``: the dashboard's pages, its JSON, its sign-in, and the files it loads (all served
here: nothing is fetched from outside the machine).

A page is signed in by the token entered once at ``/ui/login``, kept in an HttpOnly,
SameSite=Strict cookie (:data:`~metatune_service.api.deps.SESSION_COOKIE`) that the API also
accepts; another owner's job or comparison is a 404, as in the API.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from metatune import objectives
from metatune_service import comparisons, crud
from metatune_service.api.deps import SESSION_COOKIE, UI_HEADER, DatabaseDep, SettingsDep, owner_of
from metatune_service.schemas import METHODS
from metatune_service.status import JobStatus
from metatune_service.ui import views

HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")
router = APIRouter(prefix="/ui", include_in_schema=False)
COOKIE_DAYS = 30


def plotly_js() -> Path:
    """plotly.js as plotly's Python wheel ships it."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


async def page_owner(request: Request, db: DatabaseDep, settings: SettingsDep) -> str | None:
    """The owner of the dashboard's cookie, or None when signed out (or the token was revoked)."""
    token = request.cookies.get(SESSION_COOKIE)
    return await owner_of(db, settings, token) if token else None


def to_login(request: Request) -> RedirectResponse:
    return RedirectResponse(f"/ui/login?next={quote(request.url.path)}", status_code=303)


def page(request: Request, template: str, owner: str | None, status_code: int = 200, **context: object) -> HTMLResponse:
    return templates.TemplateResponse(request, template, {"owner": owner, "ui_header": UI_HEADER, **context},
                                      status_code=status_code)


def not_found(request: Request, owner: str, what: str) -> HTMLResponse:
    return page(request, "missing.html", owner, status_code=404, what=what)


@router.get("", response_class=HTMLResponse)
@router.get("/", response_class=HTMLResponse)
async def jobs_page(request: Request, db: DatabaseDep, settings: SettingsDep) -> Response:
    owner = await page_owner(request, db, settings)
    if owner is None:
        return to_login(request)
    return page(request, "jobs.html", owner, statuses=[s.value for s in JobStatus], methods=list(METHODS),
                objectives=[o["name"] for o in objectives.describe()])


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
async def job_page(job_id: str, request: Request, db: DatabaseDep, settings: SettingsDep) -> Response:
    owner = await page_owner(request, db, settings)
    if owner is None:
        return to_login(request)
    job = await run_in_threadpool(crud.get_job, db, job_id=job_id, owner=owner)
    if job is None:
        return not_found(request, owner, f"job {job_id}")
    return page(request, "job.html", owner, job_id=job.id, final=[s.value for s in JobStatus if s.final])


@router.get("/comparisons/{comparison_id}", response_class=HTMLResponse)
async def comparison_page(comparison_id: str, request: Request, db: DatabaseDep, settings: SettingsDep) -> Response:
    owner = await page_owner(request, db, settings)
    if owner is None:
        return to_login(request)
    found = await run_in_threadpool(crud.get_comparison, db, comparison_id=comparison_id, owner=owner)
    if found is None:
        return not_found(request, owner, f"comparison {comparison_id}")
    return page(request, "comparison.html", owner, comparison_id=comparison_id)


@router.get("/submit", response_class=HTMLResponse)
async def submit_page(request: Request, db: DatabaseDep, settings: SettingsDep) -> Response:
    owner = await page_owner(request, db, settings)
    if owner is None:
        return to_login(request)
    return page(request, "submit.html", owner, methods=list(METHODS), objectives=objectives.describe())


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, next: str = "/ui") -> Response:  # noqa: A002 - the usual name
    return page(request, "login.html", None, next=next if next.startswith("/ui") else "/ui")


class SignIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    token: str = Field(min_length=1, max_length=500)


@router.post("/session", status_code=204)
async def sign_in(body: SignIn, db: DatabaseDep, settings: SettingsDep) -> Response:
    """Check the token and keep it in the dashboard's cookie (HttpOnly: page scripts never
    see it; SameSite=Strict: other sites' requests never carry it)."""
    owner = await owner_of(db, settings, body.token)
    if owner is None:
        return JSONResponse({"detail": "invalid or revoked token"}, status_code=401)
    response = Response(status_code=204)
    response.set_cookie(SESSION_COOKIE, body.token, max_age=COOKIE_DAYS * 86400, httponly=True, samesite="strict",
                        path="/", secure=False)
    return response


@router.post("/logout")
async def sign_out() -> Response:
    """Clear the cookie and go to the sign-in page."""
    response = RedirectResponse("/ui/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


async def _data_owner(request: Request, db: DatabaseDep, settings: SettingsDep) -> str:
    owner = await page_owner(request, db, settings)
    if owner is None:
        raise HTTPException(401, "sign in at /ui/login")
    return owner


@router.get("/data/jobs/{job_id}")
async def job_data(job_id: str, request: Request, db: DatabaseDep, settings: SettingsDep) -> JSONResponse:
    """The job page's data (:func:`~metatune_service.ui.views.job_view`)."""
    owner = await _data_owner(request, db, settings)
    job = await run_in_threadpool(crud.get_job, db, job_id=job_id, owner=owner)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return JSONResponse(await run_in_threadpool(views.job_view, db, job))


@router.get("/data/comparisons/{comparison_id}")
async def comparison_data(comparison_id: str, request: Request, db: DatabaseDep, settings: SettingsDep) -> JSONResponse:
    """The comparison page's data (:func:`~metatune_service.ui.views.comparison_view`)."""
    owner = await _data_owner(request, db, settings)
    found = await run_in_threadpool(crud.get_comparison, db, comparison_id=comparison_id, owner=owner)
    if found is None:
        raise HTTPException(404, f"no comparison {comparison_id!r}")
    group, jobs = found
    plots = [f"/v1/comparisons/{group.id}/plots/{name}.png" for name in comparisons.plots_of(settings, group.id)]
    return JSONResponse(await run_in_threadpool(views.comparison_view, db, group, jobs, plots))


@router.get("/vendor/plotly.min.js")
async def plotly_script() -> FileResponse:
    return FileResponse(plotly_js(), media_type="text/javascript", headers={"Cache-Control": "max-age=86400"})


def install(app: FastAPI) -> None:
    """Add the dashboard to ``app``: its routes and its static files."""
    app.include_router(router)
    app.mount("/ui/static", StaticFiles(directory=HERE / "static"), name="ui-static")

