"""The Dagster web UI (1.13) as a user walks it, in headless Chromium against a real `dagster dev`.

Pages used: /asset-groups/imagery (lineage graph), /assets/<key> (overview:
columns, kinds), /assets/scene_synthesis?view=partitions&partition=<key>
(one scene's metadata and preview), /assets/tile_findings?view=checks,
/automation and the sensor page it links to, /runs and /runs/<id>.
"""

from __future__ import annotations

import io
import json
import re
import time

import dagster as dg
import pandas as pd
import pytest
from dagster_graphql import DagsterGraphQLClient
from PIL import Image
from playwright.sync_api import BrowserContext, Locator, Page, ViewportSize, expect

from tile_assets.assets import GROUP
from tile_assets.assets.catalog import imagery_catalog
from tile_assets.assets.findings import FINDINGS_SCHEMA, tile_findings
from tile_assets.assets.scenes import source_images
from tile_assets.assets.synthesis import THUMBNAIL_SIDE, scene_synthesis
from tile_assets.assets.tiles import TILES_SCHEMA, tiles
from tile_assets.checks import findings_schema, tile_coverage
from tile_assets.jobs import process_scene
from tile_assets.schedules import retry_incomplete_scenes
from tile_assets.sensors import new_images_sensor
from tile_assets_tests.ui.conftest import DagsterUi, UiCatalog, screenshot

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

ASSETS = (source_images, tiles, tile_findings, scene_synthesis, imagery_catalog)
NAIP = "naip_2018.tif"
SMALL = "rgb-byte-tenth.tif"
RUN_TIMEOUT_S = 240.0
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
SENSOR_TICK_TIMEOUT_MS = 90_000
GRAPH_VIEWPORT: ViewportSize = {"width": 1800, "height": 800}
SCREENSHOT_MARGIN = 24.0
NODE_EDGE_TOLERANCE = 20.0
"""Graph units between an edge's end and the node side it attaches to."""


@pytest.fixture(scope="module", autouse=True)
def graphql_run(browser_context: BrowserContext, dagster_ui: DagsterUi, ui_catalog: UiCatalog) -> str:
    """One scene partition launched through the GraphQL API, first, so it runs while pages are checked.

    Asks for the browser first, so that without Chromium the module skips before starting anything.
    """
    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_ui.port)
    return client.submit_job_execution(
        process_scene.name,
        run_config={"execution": {"config": {"in_process": {}}}},
        tags={"dagster/partition": ui_catalog.keys[SMALL], "tile_assets/trigger": "graphql"},
    )


def asset_name(asset: dg.AssetsDefinition) -> str:
    return asset.key.to_user_string()


def metadata_value(page: Page, label: str) -> Locator:
    """The value cell of a metadata table row, found by its exact label."""
    row = page.locator("tr").filter(has=page.get_by_text(label, exact=True))
    return row.locator("td").nth(1)


def test_table_schemas_name_the_columns_written(ui_catalog: UiCatalog) -> None:
    """The Columns panel must describe tiles.parquet and findings.parquet as the pipeline writes them."""
    scene = ui_catalog.scene_dir(NAIP)
    written_tiles = pd.read_parquet(scene / "tiles.parquet")
    written_findings = pd.read_parquet(scene / "findings.parquet")
    assert [c.name for c in TILES_SCHEMA.columns] == list(written_tiles.columns)
    assert [c.name for c in FINDINGS_SCHEMA.columns] == list(written_findings.columns)
    assert len(written_findings) > 0
    assert all(c.description for c in (*TILES_SCHEMA.columns, *FINDINGS_SCHEMA.columns))


def test_asset_graph_shows_the_five_assets_and_their_lineage(page: Page, dagster_ui: DagsterUi) -> None:
    # Wide enough that the graph fits with full nodes (status, checks, kinds) rather than name-only boxes.
    page.set_viewport_size(GRAPH_VIEWPORT)
    page.goto(f"{dagster_ui.url}/asset-groups/{GROUP}")
    graph = page.locator("svg").filter(has=page.locator("foreignObject"))
    for asset in ASSETS:
        graph.get_by_text(asset_name(asset), exact=True).wait_for()
    layout = graph.evaluate(
        """svg => ({
            nodes: Array.from(svg.querySelectorAll('foreignObject')).map(f => ({
                text: f.textContent,
                x: +f.getAttribute('x'), y: +f.getAttribute('y'),
                w: +f.getAttribute('width'), h: +f.getAttribute('height'),
            })),
            edges: Array.from(svg.querySelectorAll('path[marker-end]')).map(p => p.getAttribute('d')),
        })"""
    )
    names = [asset_name(a) for a in ASSETS]
    nodes = {}
    for node in layout["nodes"]:
        matching = [n for n in names if node["text"].startswith(n)]
        assert len(matching) == 1, f"graph node {node['text']!r} is not one of the assets"
        nodes[matching[0]] = node
    assert set(nodes) == set(names)

    def attached(x: float, y: float, side: str) -> str:
        """The node whose left or right side, at mid height, this edge end touches."""
        def distance(n: dict) -> float:
            node_x = n["x"] + n["w"] if side == "right" else n["x"]
            return abs(node_x - x) + abs(n["y"] + n["h"] / 2 - y)

        name = min(nodes, key=lambda k: distance(nodes[k]))
        assert distance(nodes[name]) <= NODE_EDGE_TOLERANCE, f"edge end ({x}, {y}) touches no node"
        return name

    shown = set()
    for d in layout["edges"]:
        numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", d)]
        shown.add((attached(numbers[0], numbers[1], "right"), attached(numbers[-2], numbers[-1], "left")))
    expected = {(dep.to_user_string(), asset_name(a)) for a in ASSETS for dep in a.dependency_keys}
    assert ("scene_synthesis", "imagery_catalog") in expected
    assert shown == expected
    # Each node's status rows load after the layout; the screenshot waits for them.
    expect(graph.get_by_text(re.compile(r"^Loading"))).to_have_count(0)
    boxes = [graph.locator("foreignObject").nth(i).bounding_box() for i in range(len(layout["nodes"]))]
    left = min(b["x"] for b in boxes if b) - SCREENSHOT_MARGIN
    top = min(b["y"] for b in boxes if b) - SCREENSHOT_MARGIN
    right = max(b["x"] + b["width"] for b in boxes if b) + SCREENSHOT_MARGIN
    bottom = max(b["y"] + b["height"] for b in boxes if b) + SCREENSHOT_MARGIN
    screenshot(
        page,
        "asset-graph",
        clip={"x": left, "y": top, "width": right - left, "height": bottom - top},
        style="#zoom-slider-container { visibility: hidden; }",
    )


def test_asset_pages_show_columns_kinds_and_owners(page: Page, dagster_ui: DagsterUi) -> None:
    for asset, schema in ((tiles, TILES_SCHEMA), (tile_findings, FINDINGS_SCHEMA)):
        page.goto(f"{dagster_ui.url}/assets/{asset_name(asset)}")
        for column in schema.columns:
            page.get_by_text(column.name, exact=True).first.wait_for()
        page.get_by_text(schema.columns[0].description or "", exact=True).first.wait_for()
        spec = asset.specs_by_key[asset.key]
        for kind in spec.kinds:  # shown with their display names: "parquet" as "Parquet"
            page.get_by_text(re.compile(f"^{re.escape(kind)}$", re.IGNORECASE)).first.wait_for()
        page.get_by_text("imagery", exact=True).first.wait_for()
    screenshot(page, "tile-findings-columns", full_page=True)


def test_scene_partition_page_shows_metadata_and_renders_the_preview(
    page: Page, dagster_ui: DagsterUi, ui_catalog: UiCatalog
) -> None:
    key = ui_catalog.keys[NAIP]
    page.goto(f"{dagster_ui.url}/assets/{asset_name(scene_synthesis)}?view=partitions&partition={key}")
    counts_cell = metadata_value(page, "counts_by_label")
    counts_cell.wait_for()
    synthesis = json.loads((ui_catalog.scene_dir(NAIP) / "synthesis.json").read_text())
    assert json.loads(counts_cell.inner_text()) == synthesis["counts_by_label"]
    assert float(metadata_value(page, "coverage").inner_text()) == round(synthesis["coverage"], 4)
    assert metadata_value(page, "stac_item").inner_text().strip().endswith(f"{key}/item.json")
    screenshot(page, "scene-partition")

    # Markdown metadata with an image opens in a dialog; the data: URI must decode to the thumbnail.
    metadata_value(page, "preview").get_by_text("Show Markdown").click()
    image = page.get_by_role("dialog").locator("img")
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert (image.get_attribute("src") or "").startswith("data:image/png;base64,")
    expected = Image.open(io.BytesIO((ui_catalog.scene_dir(NAIP) / "preview.png").read_bytes()))
    expected.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    assert (width, height) == expected.size
    screenshot(page, "scene-partition-preview")


def test_checks_of_tile_findings_show_their_results(
    page: Page, dagster_ui: DagsterUi, ui_catalog: UiCatalog
) -> None:
    key = ui_catalog.keys[NAIP]
    page.goto(f"{dagster_ui.url}/assets/{asset_name(tile_findings)}?view=checks")
    for check in (findings_schema, tile_coverage):
        spec = next(iter(check.check_specs))
        page.get_by_text(spec.name, exact=True).first.click()
        page.get_by_text(spec.description or "", exact=True).wait_for()
        page.get_by_text("Execution history", exact=True).click()
        page.locator("tr").filter(has_text=key).filter(has_text="Passed").first.wait_for()
        screenshot(page, f"check-{spec.name}")
        page.get_by_text("Overview", exact=True).last.click()


def test_automation_lists_the_sensor_with_ticks_and_the_schedule(page: Page, dagster_ui: DagsterUi) -> None:
    page.goto(f"{dagster_ui.url}/automation")
    page.get_by_text(retry_incomplete_scenes.name, exact=True).wait_for()
    page.get_by_text("Every 15 minutes").first.wait_for()
    page.get_by_role("link").filter(has_text=new_images_sensor.name).click()
    page.get_by_text(new_images_sensor.description or "", exact=True).wait_for()
    page.get_by_text(re.compile(r"^\d+ runs? requested$|^Skipped$")).first.wait_for(
        timeout=SENSOR_TICK_TIMEOUT_MS
    )
    screenshot(page, "sensor-ticks")


def test_run_launched_through_graphql_completes_and_is_listed(
    page: Page, dagster_ui: DagsterUi, ui_catalog: UiCatalog, graphql_run: str
) -> None:
    client = DagsterGraphQLClient("127.0.0.1", port_number=dagster_ui.port)
    deadline = time.monotonic() + RUN_TIMEOUT_S
    status = client.get_run_status(graphql_run)
    while status not in FINISHED and time.monotonic() < deadline:
        time.sleep(1.0)
        status = client.get_run_status(graphql_run)
    assert status == dg.DagsterRunStatus.SUCCESS

    page.goto(f"{dagster_ui.url}/runs")
    run_link = page.get_by_text(graphql_run[:8], exact=True)
    row = page.locator("[class*='RunsFeedRow_rowGrid']").filter(has=run_link)
    row.wait_for()
    assert f"partition: {ui_catalog.keys[SMALL]}" in row.inner_text()
    screenshot(page, "runs")
    run_link.click()
    page.get_by_text("Success", exact=True).first.wait_for()
