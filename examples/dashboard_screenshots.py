"""Screenshots of the dashboard for the docs: the jobs list, a metagrad job, a per-layer job and a
comparison of a running service (Debian's chromium through Playwright, as the browser tests).

    python examples/dashboard_screenshots.py --url http://127.0.0.1:8000 --token s3cret --out docs

It picks the newest succeeded metagrad job with one (η, β), the newest succeeded per-layer job
and the newest comparison among the token owner's jobs.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import httpx
from playwright.sync_api import sync_playwright

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def pick(jobs: list[dict]) -> dict[str, str]:
    """Which job or comparison each screenshot shows."""
    done = [j for j in jobs if j["status"] == "succeeded"]
    metagrad = next(j for j in done if j["method"] == "metagrad" and not j["groups"] and not j["comparison_id"])
    grouped = next(j for j in done if j["groups"] == "layers")
    comparison = next(j["comparison_id"] for j in jobs if j["comparison_id"])
    return {"dashboard-jobs": "/ui", "dashboard-metagrad-job": f"/ui/jobs/{metagrad['id']}",
            "dashboard-per-layer-job": f"/ui/jobs/{grouped['id']}",
            "dashboard-comparison": f"/ui/comparisons/{comparison}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--token", required=True)
    parser.add_argument("--out", default="docs")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    jobs = httpx.get(f"{args.url}/v1/jobs?limit=500", headers={"Authorization": f"Bearer {args.token}"}).json()["items"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{args.url}/ui/login")
        page.fill("#token", args.token)
        page.click("#login-form button[type=submit]")
        page.wait_for_selector("#owner")  # signed in
        for name, path in pick(jobs).items():
            page.goto(args.url + path)
            page.wait_for_function("document.body.dataset.status !== undefined || "
                                   "document.querySelector('#jobs tbody tr') !== null", timeout=60_000)
            page.wait_for_timeout(800)  # plotly's transitions
            page.screenshot(path=str(out / f"{name}.png"), full_page=name != "dashboard-jobs")
            print(f"wrote {out / name}.png")
        browser.close()


if __name__ == "__main__":
    main()
