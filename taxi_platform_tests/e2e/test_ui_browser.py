"""The Dagster UI in a real browser: headless Chromium (Playwright) against a running dagster-webserver.

Two months are materialised into a temporary instance first (in process, from a loopback sample mirror), so
the pages show real state. The test opens the global asset graph and raw_trips' partitions page, checks the
asset names and partition keys are on screen, and saves the screenshots the README shows to
``docs/screenshots/``.
"""

from __future__ import annotations

import os
from datetime import date
from pathlib import Path

import dagster as dg
import pytest

from taxi_platform.devtools.instance import ensure_dagster_home
from taxi_platform.devtools.mirror import MirrorServer
from taxi_platform.devtools.sample import write_sample_mirror
from taxi_platform_tests.support.dagster_services import REPO_ROOT, DagsterServices
from taxi_platform_tests.support.system_binaries import CHROMIUM, require

CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
ASSET_NAMES = ["taxi_zones", "raw_trips", "cleaned_trips", "trip_features"]
MONTHS = ["2024-01-01", "2024-02-01"]


def materialize_months(home: Path, lake_root: Path, base_url: str) -> None:
    from taxi_platform.defs.ingest import assets as ingest
    from taxi_platform.defs.resources import LakeResource, TlcSourceResource
    from taxi_platform.defs.transform import assets as transform

    resources = {
        "lake": LakeResource(root=str(lake_root)),
        "tlc": TlcSourceResource(base_url=base_url, services=["yellow", "green"]),
    }
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        all_assets = [ingest.taxi_zones, ingest.raw_trips, transform.cleaned_trips, transform.trip_features]
        for i, month in enumerate(MONTHS):
            selection = ASSET_NAMES if i == 0 else ASSET_NAMES[1:]
            result = dg.materialize(
                all_assets, selection=selection, partition_key=month, instance=instance, resources=resources
            )
            assert result.success
    finally:
        instance.dispose()


@pytest.mark.e2e
def test_asset_graph_and_partitions_pages_render_in_chromium(tmp_path):
    chromium = require(CHROMIUM)
    from playwright.sync_api import expect, sync_playwright

    mirror_root = tmp_path / "mirror"
    write_sample_mirror(
        mirror_root,
        [date.fromisoformat(m) for m in MONTHS],
        rows_per_month={"yellow": 400, "green": 80},
        seed=5,
    )
    home = ensure_dagster_home(tmp_path / "data")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with MirrorServer(mirror_root) as mirror:
        materialize_months(home, tmp_path / "data" / "lake", mirror.url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DAGSTER_", "TAXI_", "TLC_"))}
        env.update(
            DAGSTER_HOME=str(home),
            TAXI_DATA_DIR=str(tmp_path / "data"),
            TAXI_LAKE_ROOT=str(tmp_path / "data" / "lake"),
            TLC_BASE_URL=mirror.url,
            TAXI_START_MONTH="2024-01",
        )
        with DagsterServices(env, tmp_path / "logs", daemon=False) as svc, sync_playwright() as pw:
            svc.wait_ready(daemons=False)
            browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(60_000)

                # The global lineage shows one box per group; "Expand all groups" (Alt+E) opens them.
                page.goto(f"{svc.url}/asset-groups", wait_until="networkidle")
                expect(page.get_by_text("transform", exact=True).last).to_be_visible()
                page.get_by_text("Hide navigation").click()
                page.mouse.click(900, 300)  # focus the graph canvas for the keyboard shortcut
                page.keyboard.press("Alt+e")
                for name in ASSET_NAMES:
                    expect(page.get_by_text(name, exact=True).first).to_be_visible()
                page.wait_for_timeout(1500)  # let the graph finish its layout animation
                graph_png = SCREENSHOTS / "asset_graph.png"
                page.screenshot(path=str(graph_png))

                # raw_trips' partitions, with the latest month's metadata (sha256, size, ETag per service).
                page.goto(
                    f"{svc.url}/assets/raw_trips?view=partitions&partition={MONTHS[-1]}",
                    wait_until="networkidle",
                )
                expect(page.get_by_text("raw_trips").first).to_be_visible()
                expect(page.get_by_text("Materialized (2)")).to_be_visible()
                expect(page.get_by_text("yellow_etag")).to_be_visible()
                page.wait_for_timeout(1000)
                partitions_png = SCREENSHOTS / "raw_trips_partitions.png"
                page.screenshot(path=str(partitions_png))
            finally:
                browser.close()
    for png in (graph_png, partitions_png):
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, png
