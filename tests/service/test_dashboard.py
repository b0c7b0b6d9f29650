"""The dashboard under /ui, in a real browser: Debian's chromium driven by Playwright, against
the app on a real server with a worker on the session's Ray. Each chart is checked against the
API's own numbers (trial counts, diverged trials, chains), not against what the page says."""

from __future__ import annotations

import math
import os
import threading
import time

import pytest

from metatune_service import crud
from metatune_service.core.config import Settings
from metatune_service.status import JobStatus
from metatune_service.worker import Worker
from tests.service.conftest import TOKENS, Served, wait_for

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]
SMALL = {"dim": 8, "kappa": 100.0, "steps": 30}


def _missing_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not os.path.exists(CHROMIUM):
        return f"no browser at {CHROMIUM} (apt-get install -y chromium; .ci/run installs it)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_missing_browser() is not None, reason=_missing_browser() or "")]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, args=ARGS,
                                                                viewport={"width": 1400, "height": 1000})
        yield context
        context.close()


@pytest.fixture
def page(browser):
    browser.clear_cookies()
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.close()
    assert errors == [], f"the page raised: {errors}"


@pytest.fixture
def dashboard(tmp_path, ray_cluster):
    """The app on SQLite with a worker on the session's Ray."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'metatune.db'}", api_tokens=TOKENS,
                        output_dir=tmp_path / "out", lease_seconds=3, heartbeat_seconds=0.5, poll_seconds=0.1,
                        optuna_storage="off")
    served = Served(settings)
    stop = threading.Event()
    thread = threading.Thread(target=Worker(served.db, settings).run, args=(stop,), daemon=True)
    thread.start()
    yield served
    stop.set()
    thread.join(timeout=60)
    served.stop()


def sign_in(page, served, token: str = "token-alice") -> None:
    page.goto(f"{served.url}/ui")
    assert page.url.startswith(f"{served.url}/ui/login")  # signed out: sent to the sign-in page
    page.fill("#token", token)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#owner")  # the jobs page, signed in (its URL gains the list's query)


def traces(page, chart: str, meta: str) -> list[dict]:
    """The plotly traces of ``chart`` tagged ``meta``, as the browser holds them."""
    return page.evaluate(f"""() => (document.getElementById({chart!r}).data || [])
        .filter(t => t.meta === {meta!r}).map(t => ({{name: t.name, x: Array.from(t.x || []).filter(v => v !== null),
                                                       y: Array.from(t.y || [])}}))""")


def wait_rendered(page, status: str, timeout: float = 180_000) -> None:
    page.wait_for_function(f"document.body.dataset.status === {status!r}", timeout=timeout)


def test_a_job_submitted_from_the_form_runs_and_every_chart_matches_the_api(dashboard, page, tmp_path):
    """metagrad on a small quadratic through the form: the page follows it to ``succeeded``;
    the trial table has the API's trial count; the best-so-far line one step per trial; the
    plane one point per finite trial, one × per diverged one, the ρ = 1 boundary and one path
    per chain through exactly the trials that took a meta-gradient."""
    sign_in(page, dashboard)
    page.goto(f"{dashboard.url}/ui/submit")
    page.select_option("#objective", "quadratic")
    page.fill("#objective_params", '{"dim": 8, "kappa": 100.0, "steps": 30}')
    page.select_option("#method", "metagrad")
    page.fill("#gradient_evals", "1500")
    page.click("#submit")
    page.wait_for_url(f"{dashboard.url}/ui/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    wait_rendered(page, "succeeded")
    page.screenshot(path=str(tmp_path / "job.png"), full_page=True)

    client = dashboard.client()
    trials = client.get(f"/v1/jobs/{job_id}/trials").json()["items"]
    assert len(trials) >= 4
    assert page.locator("#trials tbody tr").count() == len(trials)
    assert page.get_attribute("body", "data-rendered") == str(len(trials))
    (best,) = traces(page, "chart-best", "best")
    assert len(best["x"]) == len(trials)
    finite = [t for t in trials if t["status"] == "completed"]
    assert sum(len(t["x"]) for t in traces(page, "chart-plane", "trials")) == len(finite)
    (diverged,) = traces(page, "chart-plane", "diverged")
    assert len(diverged["x"]) == len(trials) - len(finite)
    (boundary,) = traces(page, "chart-plane", "boundary")
    assert len(boundary["x"]) > 50  # the ρ = 1 curve across the β range
    stepped = [t["number"] for t in trials if t["meta_gradient"] is not None]
    paths = traces(page, "chart-plane", "path")
    assert paths and sum(len(p["x"]) for p in paths) == len(stepped)
    assert len(traces(page, "chart-outer", "lr")) == len(paths) and len(traces(page, "chart-grads", "dlr")) == len(paths)
    assert page.text_content("#status") == "succeeded" and page.is_hidden("#cancel")

    # sorting by ℓ_val puts the best trial first
    page.click("#trials th[data-key=value]")
    best_number = min(finite, key=lambda t: t["value"])["number"]
    assert page.get_attribute("#trials tbody tr:first-child", "data-number") == str(best_number)


def test_a_comparison_submitted_from_the_form_draws_one_line_per_method(dashboard, page, tmp_path):
    """random and tpe over 2 seeds: the page shows a median line and a band per method, the
    comparison's table once built (one row per method) and a link to each of its 4 jobs."""
    sign_in(page, dashboard)
    page.goto(f"{dashboard.url}/ui/submit")
    page.check("input[name=kind][value=comparison]")
    page.select_option("#objective", "quadratic")
    page.fill("#objective_params", '{"dim": 8, "kappa": 100.0, "steps": 30}')
    for method in ("metagrad", "tpe", "random"):
        (page.check if method != "metagrad" else page.uncheck)(f"input[name=methods][value={method}]")
    page.fill("#gradient_evals", "600")
    page.fill("#seeds", "2")
    page.click("#submit")
    page.wait_for_url(f"{dashboard.url}/ui/comparisons/*")
    comparison_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#summary-table tbody tr", timeout=180_000)
    page.screenshot(path=str(tmp_path / "comparison.png"), full_page=True)

    api = dashboard.client().get(f"/v1/comparisons/{comparison_id}").json()
    assert api["status"] == "succeeded" and len(api["jobs"]) == 4
    medians = traces(page, "chart-convergence", "median")
    assert sorted(t["name"].split(" ")[0] for t in medians) == ["random", "tpe"]
    assert len(traces(page, "chart-convergence", "band")) == 4  # low and high edge per method
    assert page.locator("#summary-table tbody tr").count() == 2
    links = page.eval_on_selector_all("#comparison-jobs a", "as => as.map(a => a.getAttribute('href'))")
    assert sorted(links) == sorted(f"/ui/jobs/{job['id']}" for job in api["jobs"])


def test_the_form_shows_the_apis_own_validation_messages(dashboard, page):
    """A budget of −5 and a momentum space the API refuses: the page lists the 422's messages."""
    sign_in(page, dashboard)
    page.goto(f"{dashboard.url}/ui/submit")
    page.select_option("#objective", "quadratic")
    page.fill("#gradient_evals", "-5")
    page.click("#submit")
    page.wait_for_selector("#submit-errors li")
    shown = page.text_content("#submit-errors")
    body = {"objective": "quadratic", "objective_params": {}, "space": {}, "budget": {"gradient_evals": -5},
            "concurrency": 1, "method": "metagrad", "seed": 0}
    detail = dashboard.client().post("/v1/jobs", json=body).json()["detail"]
    assert detail and all(error["msg"] in shown for error in detail)
    assert page.url == f"{dashboard.url}/ui/submit"


def test_a_running_job_is_cancelled_from_its_page(dashboard, page):
    sign_in(page, dashboard)
    client = dashboard.client()
    job = client.post("/v1/jobs", json={"objective": "quadratic", "objective_params": SMALL, "method": "random",
                                        "budget": {"gradient_evals": 200_000}}).json()
    page.goto(f"{dashboard.url}/ui/jobs/{job['id']}")
    wait_rendered(page, "running", timeout=60_000)
    page.click("#cancel")
    wait_rendered(page, "cancelled", timeout=60_000)
    assert wait_for(client, job["id"])["status"] == "cancelled" and page.is_hidden("#cancel")


def test_pages_keep_to_their_owner_and_sign_out_clears_the_cookie(dashboard, page, browser):
    """bob's session gets a 404 for alice's job and comparison pages and their data; the
    cookie is HttpOnly and SameSite=Strict; a request it signs that changes something needs
    the dashboard's header; signing out clears it."""
    alice = dashboard.client()
    job = alice.post("/v1/jobs", json={"objective": "quadratic", "objective_params": SMALL, "method": "random",
                                       "budget": {"trials": 2}}).json()
    sign_in(page, dashboard, "token-bob")
    (cookie,) = browser.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    response = page.goto(f"{dashboard.url}/ui/jobs/{job['id']}")
    assert response.status == 404 and "There is no job" in page.text_content("#missing")
    assert page.request.get(f"{dashboard.url}/ui/data/jobs/{job['id']}").status == 404
    assert page.request.get(f"{dashboard.url}/v1/jobs/{job['id']}").status == 404
    forged = page.request.post(f"{dashboard.url}/v1/jobs/{job['id']}/cancel")  # the cookie without the header
    assert forged.status == 403
    page.goto(f"{dashboard.url}/ui")
    page.click("#logout")
    page.wait_for_url(f"{dashboard.url}/ui/login")
    assert browser.cookies() == []
    page.goto(f"{dashboard.url}/ui")
    assert page.url.startswith(f"{dashboard.url}/ui/login")


def test_a_job_of_a_thousand_trials_renders_with_every_row(dashboard, page, capsys):
    """1,000 recorded trials (written as a worker writes them): the page shows 1,000 rows and
    1,000 points; the time from navigation to the drawn page is printed (BENCHMARKS.md)."""
    from metatune.point import Point
    from metatune.tuners.records import Trial

    db = dashboard.db
    [job] = crud.create_jobs(db, owner="alice", specs=[_spec()]).jobs
    crud.claim_job(db, worker="w", lease_seconds=60, max_attempts=3)
    trials = [Trial(i, Point.scalar(10 ** (-5 + 4 * (i % 97) / 97), (i % 89) / 90), 1.0 / (i + 1), False, 31.0,
                    31.0 * (i + 1), 0.01, 0.5, True) for i in range(1000)]
    assert crud.write_trials(db, job_id=job.id, worker="w", trials=trials, lambda_max=None)
    crud.finish_job(db, job_id=job.id, worker="w", status=JobStatus.SUCCEEDED)
    sign_in(page, dashboard)
    page.goto(f"{dashboard.url}/ui/jobs/{job.id}")  # once: the curvature at θ₀ is estimated and cached
    wait_rendered(page, "succeeded")
    times = []
    for _ in range(3):
        started = time.perf_counter()
        page.goto(f"{dashboard.url}/ui/jobs/{job.id}")
        page.wait_for_function("document.body.dataset.rendered === '1000'", timeout=30_000)
        times.append(time.perf_counter() - started)
    assert page.locator("#trials tbody tr").count() == 1000
    assert sum(len(t["x"]) for t in traces(page, "chart-plane", "trials")) == 1000
    with capsys.disabled():
        print(f"\n1,000-trial job page: navigation to drawn page {', '.join(f'{t:.3f}' for t in times)} s "
              f"(median {sorted(times)[1]:.3f} s)")
    assert all(math.isfinite(t) for t in times)


def _spec():  # noqa: ANN202
    from metatune.job import TuningJob

    return TuningJob(objective="quadratic", objective_params=SMALL, method="random", budget=31_000.0, backend="ray")


def test_the_dashboard_loads_nothing_from_outside(dashboard, page):
    """Every request a page makes goes to the service itself."""
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    sign_in(page, dashboard)
    page.goto(f"{dashboard.url}/ui/submit")
    page.wait_for_load_state("networkidle")
    assert requested and all(url.startswith(dashboard.url) or url.startswith("data:") for url in requested)
    assert any(url.endswith("/ui/vendor/plotly.min.js") for url in requested)
