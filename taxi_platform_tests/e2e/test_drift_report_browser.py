"""The drift report's HTML in a real browser: headless Chromium (Playwright) opens ``report.html`` as written by
:func:`taxi_platform.monitoring.drift_report_files.write_report` and finds every section on screen (data drift with
its per-column table, regression quality, the test results), with no page errors. The HTML is self-contained: no
network."""

from __future__ import annotations

import pytest

from taxi_platform.lake.lake import Lake
from taxi_platform.monitoring import drift_checks, drift_evidently, drift_report_files
from taxi_platform_tests.monitoring.test_drift import STABLE, TRAIN, report_frames
from taxi_platform_tests.support.system_binaries import CHROMIUM, require

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]
CONFIG = drift_evidently.DriftConfig(reference_rows=1500, current_rows=1500)
METRIC_SECTIONS = (
    "Dataset Drift",
    "Data Drift Summary",
    "Share of Drifted Columns",
    "Predicted vs Actual in Time",
    "Error Distribution",
    "Absolute Percentage Error",
)
TEST_NAMES = ("Share of Drifted Columns", "Value Drift for column fare_amount", "Mean Absolute Error")


@pytest.fixture(scope="module")
def report_html(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser_lake")
    current, reference, validation_mae = report_frames(root, CONFIG)
    summary, snapshot = drift_evidently.run_drift_report(current, reference, STABLE, CONFIG, validation_mae)
    checks = [drift_checks.drift_check(summary, 0.5), drift_checks.mae_check(summary, validation_mae, 0.25)]
    doc = drift_report_files.report_document(
        summary, checks, {"version": "1"}, [f"{m}-01" for m in TRAIN], len(current), CONFIG, "synthetic", ""
    )
    html_path, _ = drift_report_files.write_report(Lake(str(root)), f"{STABLE}-01", snapshot, doc)
    return html_path, summary


@pytest.mark.e2e
def test_report_html_shows_every_section_in_chromium(report_html):
    chromium = require(CHROMIUM)
    html_path, summary = report_html
    share = f"{100 * summary.drift_share:.1f}%"
    from playwright.sync_api import expect, sync_playwright

    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.set_default_timeout(60_000)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.route("http*://**", lambda route: route.abort())  # self-contained: nothing from the network
            page.goto(f"file://{html_path}", wait_until="load")
            for text in METRIC_SECTIONS:
                expect(page.get_by_text(text, exact=True).first).to_be_visible()
            table = page.get_by_text("Data Drift Summary").first.locator("xpath=ancestor::div[.//table][1]")
            expect(
                table.get_by_text("fare_amount", exact=True)
            ).to_be_visible()  # the most-drifted column leads
            expect(page.get_by_text(f"Drift is detected for {share} of columns").first).to_be_visible()

            page.get_by_text("Tests", exact=True).first.click()
            for text in TEST_NAMES:
                expect(page.get_by_text(text).first).to_be_visible()
        finally:
            browser.close()
    assert not errors, errors
