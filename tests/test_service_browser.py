"""The web page in a real browser (Debian's Chromium through Playwright) against a real ``bigseg serve``.

The whole flow of a user: sign in with the token, fill the new-job form generated from the method's schema
(a refused value shows the server's one-line message on its field; the image is picked in the file browser),
validate (the plan's block count), submit, watch the job's progress reach 100 % (live events over SSE), see the
QC image, the object count and the table preview (sorted by clicking a header, checked against the job's parquet
file read by pandas), run the page's Python snippet; then submit a second job, cancel it, retry it, and sign out.
A wrong token shows the error, sets no session and shows no jobs.
Screenshots of each page go to ``$BIGSEG_TEST_ARTIFACTS/browser`` (default ``test-artifacts/browser``).
"""
from __future__ import annotations

import math
import os
import pathlib
import re
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from services.bigseg_server import Server, start_server  # noqa: F401
from services.chromium import browser  # noqa: F401

from bigseg.synthetic import nuclei, write_ome_zarr

pytestmark = pytest.mark.slow

IMAGE_SHAPE, CHUNKS = (16, 128, 128), (16, 64, 64)
JOB_TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def artifacts() -> pathlib.Path:
    folder = pathlib.Path(os.environ.get("BIGSEG_TEST_ARTIFACTS", "test-artifacts")) / "browser"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def served(start_server, tmp_path) -> Server:  # noqa: F811
    """A real ``bigseg serve`` on SQLite (the PostgreSQL variant is the API tests' business), root tmp_path/data."""
    return start_server(f"sqlite:///{tmp_path / 'service.db'}")


@pytest.fixture
def page(browser, served):  # noqa: F811
    """A fresh browser context (no cookies) on the server; page errors fail the test."""
    context = browser.new_context(base_url=served.url, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.set_default_timeout(15_000)
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def sign_in(page, token: str) -> None:
    page.goto("/")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Sign in").click()


def value_now(page, name: str) -> int:
    return int(page.get_by_role("progressbar", name=name, exact=True).get_attribute("aria-valuenow"))


def cell_values(page, column: int) -> list[float]:
    texts = page.get_by_role("table", name="Table preview").locator("tbody tr").evaluate_all(
        f"rows => rows.map(r => r.cells[{column}].textContent)")
    return [float(t) for t in texts]


def test_wrong_token_shows_the_error_and_no_jobs(page, served, artifacts):
    sign_in(page, "not-the-token")
    alert = page.get_by_role("alert")
    alert.filter(has_text="Sign-in failed").wait_for()
    assert "Sign-in failed" in alert.inner_text()
    assert page.request.get("/api/v1/jobs").status == 401  # no session cookie was set
    page.screenshot(path=artifacts / "signin-wrong-token.png")
    page.goto("/#/jobs")  # the jobs page is not reachable without a session
    page.get_by_role("button", name="Sign in").wait_for()
    assert page.get_by_role("table", name="Jobs").count() == 0
    assert page.get_by_role("navigation", name="Main").is_hidden()


def test_submit_watch_result_and_cancel(page, served, artifacts):
    image, _ = nuclei(IMAGE_SHAPE, seed=5)
    root = pathlib.Path(os.path.realpath(served.roots[0].rsplit(":", 1)[0]))
    folder = root / "browser"
    folder.mkdir(exist_ok=True)
    write_ome_zarr(folder / "cells.zarr", image, "zyx", CHUNKS, levels=2)
    expected_blocks = math.prod(math.ceil(s / c) for s, c in zip(IMAGE_SHAPE, CHUNKS))

    # Sign in: the jobs page.
    sign_in(page, served.token)
    page.get_by_role("table", name="Jobs").wait_for()
    assert page.get_by_role("navigation", name="Main").is_visible()
    page.screenshot(path=artifacts / "jobs-empty.png")

    # New job: the form comes from the method's schema; the image from the file picker.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="New job").click()
    page.get_by_label("Method", exact=True).select_option("watershed")
    page.get_by_role("group", name="Parameters of watershed").wait_for()
    diameter = page.get_by_label("Diameter", exact=True)
    diameter.fill("-3")  # refused by the server: one line naming the field, and the field marked
    page.get_by_role("button", name="Validate").click()
    page.get_by_role("alert").filter(has_text="method.diameter: ").wait_for()
    assert diameter.get_attribute("aria-invalid") == "true"
    page.screenshot(path=artifacts / "new-job-invalid.png", full_page=True)
    diameter.fill("10")
    page.get_by_role("button", name="Browse").click()
    picker = page.get_by_role("dialog", name="Choose an image")
    picker.get_by_role("button", name=f"{root}/", exact=True).click()
    picker.get_by_role("button", name="browser/").click()
    assert "zyx" in picker.get_by_role("listitem").filter(has_text="cells.zarr").inner_text()
    page.screenshot(path=artifacts / "new-job-picker.png")
    picker.get_by_role("button", name="cells.zarr").click()
    assert page.get_by_label("Image", exact=True).input_value() == str(folder / "cells.zarr")
    page.get_by_label("Label name").fill("cells")
    page.get_by_label("Block shape").fill(", ".join(map(str, CHUNKS)))
    page.get_by_label("Title").fill("browser job")
    page.get_by_label("Tags").fill("browser, demo")

    # Validate: the plan.
    page.get_by_role("button", name="Validate").click()
    plan = page.get_by_role("region", name="Plan")
    plan.wait_for()
    assert plan.get_by_test_id("plan-blocks").inner_text() == str(expected_blocks)
    assert "cells" in plan.inner_text()
    page.screenshot(path=artifacts / "new-job-plan.png", full_page=True)

    # Submit: the job page, watched until the bar reaches 100 %.
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r"#/jobs/.+"))
    job_id = page.url.rsplit("/", 1)[-1]
    status = page.get_by_test_id("job-status")
    seen: list[int] = []
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    shot = False
    while status.inner_text() not in ("succeeded", "failed", "canceled") and time.monotonic() < deadline:
        seen.append(value_now(page, "Overall progress"))
        if not shot and status.inner_text() == "running":
            page.screenshot(path=artifacts / "job-running.png", full_page=True)
            shot = True
        page.wait_for_timeout(300)
    assert status.inner_text() == "succeeded", page.get_by_label("Log").inner_text()[-2000:]
    assert seen == sorted(seen), f"overall progress went backwards: {seen}"
    assert value_now(page, "Overall progress") == 100
    segment = page.get_by_role("progressbar", name="segment progress", exact=True)
    assert segment.get_attribute("aria-valuenow") == "100"
    assert segment.get_attribute("aria-valuetext") == f"{expected_blocks}/{expected_blocks}"
    events = page.get_by_role("list", name="Events").get_by_role("listitem")
    assert events.filter(has_text="StageAdvanced").count() > 0
    assert page.locator("ol.events li[data-via=sse]").count() > 0, "no event came through the live stream"

    # The result: QC image, object count, table preview sorted by a clicked header.
    job = page.request.get(f"/api/v1/jobs/{job_id}").json()
    table = pd.read_parquet(job["result"]["table"])
    assert job["spec"]["method"] == {**job["spec"]["method"], "name": "watershed", "diameter": 10}
    assert (job["title"], job["tags"]) == ("browser job", ["browser", "demo"])
    qc = page.get_by_role("img", name="QC overlay")
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=qc.element_handle())
    page.get_by_test_id("objects").filter(has_text=str(len(table))).wait_for()
    assert page.get_by_test_id("objects").inner_text() == str(len(table)) == str(job["result"]["objects"])
    preview = page.get_by_role("table", name="Table preview")
    preview.locator(f"tbody tr:nth-child({min(50, len(table))})").wait_for()  # the rows arrive after the status
    assert preview.locator("tbody tr").count() == min(50, len(table))
    columns = preview.locator("thead th").all_inner_texts()
    assert columns == list(table.columns)
    column = next(c for c in table.columns if c != "label" and table[c].nunique() > 1
                  and np.issubdtype(table[c].dtype, np.number))
    index = columns.index(column)
    preview.get_by_role("button", name=column, exact=True).click()
    page.wait_for_function("c => document.querySelector('table.data')?.dataset.sort === c", arg=column)
    ascending = np.sort(table[column].to_numpy())[:50]
    np.testing.assert_allclose(cell_values(page, index), ascending, rtol=1e-5)
    page.get_by_role("table", name="Table preview").get_by_role("button", name=column).click()
    page.wait_for_selector("table.data[data-desc='true']")
    np.testing.assert_allclose(cell_values(page, index), np.sort(table[column].to_numpy())[::-1][:50], rtol=1e-5)
    assert page.get_by_role("link", name="table.parquet").get_attribute("href").endswith("/table.parquet")
    snippet = page.get_by_label("Python snippet").inner_text()
    opened = subprocess.run([sys.executable, "-c", snippet + "\nprint(labels.shape, len(levels), len(table))"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert opened.returncode == 0, opened.stderr[-2000:]
    shape_text, levels, rows = opened.stdout.strip().splitlines()[-1].rsplit(" ", 2)
    assert (shape_text, int(rows)) == (str(IMAGE_SHAPE), len(table)) and int(levels) >= 1
    page.get_by_role("button", name="Copy").click()
    page.get_by_role("status").filter(has_text="Copied").wait_for()
    page.screenshot(path=artifacts / "job-succeeded.png", full_page=True)

    # A second job, cancelled from its page.
    page.goto("/#/new")
    page.get_by_label("Image", exact=True).fill(str(folder / "cells.zarr"))
    page.get_by_label("Label name").fill("cells-2")
    page.get_by_label("Title").fill("to cancel")
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(re.compile(r"#/jobs/.+"))
    assert page.url.rsplit("/", 1)[-1] != job_id
    cancel = page.get_by_role("button", name="Cancel")
    page.wait_for_function("b => !b.disabled", arg=cancel.element_handle())
    cancel.click()
    page.wait_for_function("() => document.querySelector('[data-testid=job-status]')?.textContent === 'canceled'",
                           timeout=JOB_TIMEOUT_MS)
    assert page.get_by_role("button", name="Retry").is_enabled()
    assert page.get_by_role("button", name="Cancel").is_disabled()
    page.screenshot(path=artifacts / "job-canceled.png", full_page=True)
    page.get_by_role("button", name="Retry").click()  # a new attempt of the same job
    page.wait_for_function("() => document.querySelector('[data-testid=job-status]')?.textContent === 'succeeded'",
                           timeout=JOB_TIMEOUT_MS)
    assert page.get_by_text("2 of 3").is_visible()

    # The jobs page lists both, newest first, with their states.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs").click()
    rows = page.get_by_role("table", name="Jobs").locator("tbody tr")
    page.wait_for_function("() => document.querySelectorAll('table.jobs tbody tr[data-job]').length >= 2")
    assert rows.nth(0).get_by_test_id("status").inner_text() == "succeeded"
    assert rows.nth(0).get_by_role("link").inner_text() == "to cancel"
    assert rows.nth(1).get_by_test_id("status").inner_text() == "succeeded"
    assert rows.nth(1).get_by_role("progressbar").get_attribute("aria-valuenow") == "100"
    page.screenshot(path=artifacts / "jobs.png", full_page=True)

    # Sign out: the session cookie is gone, the jobs are not reachable.
    page.get_by_role("button", name="Sign out").click()
    page.get_by_role("button", name="Sign in").wait_for()
    page.goto("/#/jobs")
    page.reload()
    page.get_by_role("button", name="Sign in").wait_for()
    assert page.get_by_role("table", name="Jobs").count() == 0
