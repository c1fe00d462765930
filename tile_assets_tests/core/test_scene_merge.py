"""Merging a scene band by band gives exactly the merge of the whole scene, holding only a band or so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tile_assets.core.borders import TileBoxes, prefer_whole_table
from tile_assets.core.findings_table import findings_table, table_findings
from tile_assets.core.grid import plan_grid
from tile_assets.core.merge import merge_table
from tile_assets.core.models.classical import ClassicalModel
from tile_assets.core.overview_pass import full_image_findings
from tile_assets.core import scene_merge
from tile_assets.core.scene_merge import MergeOptions, merge_scene
from tile_assets.core.types import Finding, GridSpec, TileWindow
from tile_assets_tests.models.pipeline import STORE, SceneRun, run_scene

NAIP = Path(__file__).resolve().parents[2] / "data" / "inbox" / "naip_2018.tif"
SPEC = GridSpec(tile_size=256, overlap=64)


def canonical(findings: list[Finding]) -> list[tuple]:
    return sorted((f.label, f.score, f.box, f.tile_id, f.area_px, sorted(f.attributes.items(), key=str)) for f in findings)


def by_tile_row(
    findings: list[Finding], windows: dict[str, TileWindow]
) -> list[tuple[pa.Table, float]]:
    """Parts a tile row each, top first, with the next row's top as frontier (as the cache's chunks come)."""
    rows = sorted({w.row_off for w in windows.values()})
    parts = []
    for i, row_off in enumerate(rows):
        found = [f for f in findings if windows[f.tile_id].row_off == row_off]
        frontier = float(rows[i + 1]) if i + 1 < len(rows) else float("inf")
        parts.append((findings_table(found), frontier))
    return parts


def whole_scene(table: pa.Table, windows: dict[str, TileWindow], width: int, height: int, options: MergeOptions) -> list[Finding]:
    if options.border_aware:
        tiles = TileBoxes.of(windows, width, height)
        table = prefer_whole_table(table, tiles, class_agnostic=options.class_agnostic)
    return table_findings(
        merge_table(table, options.strategy, options.metric, options.threshold, options.class_agnostic)
    )


@pytest.fixture(scope="module")
def naip() -> SceneRun:
    return run_scene(NAIP, ClassicalModel(), SPEC)


@pytest.mark.parametrize("merge_batch", [1, scene_merge.MERGE_BATCH])
@pytest.mark.parametrize("strategy", ["greedy_nmm", "nms"])
def test_a_real_scene_merged_by_tile_rows_equals_the_whole_scene_merge(
    naip: SceneRun, strategy: str, merge_batch: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Merged a settled part at a time or gathered, the scene comes out as one whole merge."""
    monkeypatch.setattr(scene_merge, "MERGE_BATCH", merge_batch)
    options = MergeOptions(strategy=strategy)  # type: ignore[arg-type]
    parts = by_tile_row(naip.raw, naip.windows)
    assert len(parts) >= 3
    width, height = naip.scene.width, naip.scene.height
    streamed = [f for t in merge_scene(parts, naip.windows, width, height, options) for f in table_findings(t)]
    expected = whole_scene(findings_table(naip.raw), naip.windows, width, height, options)
    assert len(expected) > 100
    assert canonical(streamed) == canonical(expected)
    if strategy == "greedy_nmm":
        assert canonical(streamed) == canonical(naip.merged)  # what the pipeline's core path gives


def test_full_image_findings_join_the_band_where_they_start(naip: SceneRun) -> None:
    model = ClassicalModel()
    extra = full_image_findings(STORE, naip.scene, model, 512)
    assert extra
    options = MergeOptions()
    width, height = naip.scene.width, naip.scene.height
    parts = by_tile_row(naip.raw, naip.windows)
    streamed = merge_scene(parts, naip.windows, width, height, options, findings_table(extra))
    expected = whole_scene(findings_table(naip.raw + extra), naip.windows, width, height, options)
    assert canonical([f for t in streamed for f in table_findings(t)]) == canonical(expected)


def test_settled_findings_leave_early_and_only_a_band_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Parts come out as soon as nothing later can touch them (and `MERGE_BATCH` of them are gathered):
    the last part does not hold the scene."""
    windows = {w.tile_id: w for w in plan_grid(1000, 2000, GridSpec(200, 0.0))}
    findings = [
        Finding("dot", 0.5, (w.col_off + 50.0, w.row_off + 50.0, w.col_off + 60.0, w.row_off + 60.0), w.tile_id, 100.0)
        for w in windows.values()
    ]
    gathered = list(merge_scene(by_tile_row(findings, windows), windows, 1000, 2000, MergeOptions()))
    assert [len(t) for t in gathered] == [50]  # under MERGE_BATCH: one merge
    monkeypatch.setattr(scene_merge, "MERGE_BATCH", 12)
    out = list(merge_scene(by_tile_row(findings, windows), windows, 1000, 2000, MergeOptions()))
    assert [len(t) for t in out] == [15, 15, 15, 5]  # rows of 5, merged once 12 or more are settled


GRID = {w.tile_id: w for w in plan_grid(300, 300, GridSpec(100, 0.3))}


def _finding(tile: str, x: int, y: int, w: int, h: int, label: str, score: float) -> Finding:
    window = GRID[tile]
    box = (float(window.col_off + x), float(window.row_off + y), float(window.col_off + x + w), float(window.row_off + y + h))
    return Finding(label, score, box, tile, float(w * h), "m", "1", {"k": x % 3})


GRID_FINDINGS = st.lists(
    st.builds(
        _finding,
        st.sampled_from(sorted(GRID)),
        st.integers(0, 95),
        st.integers(0, 95),
        st.integers(0, 60),
        st.integers(0, 60),
        st.sampled_from(["car", "truck"]),
        st.sampled_from([0.5, 0.7, 0.9]),
    ),
    max_size=60,
)
"""Up to 60 findings on the 3 x 3 grid, small enough to overlap across tile borders often."""


@settings(max_examples=150, deadline=None)
@given(
    GRID_FINDINGS,
    st.sampled_from(["greedy_nmm", "nms"]),
    st.sampled_from(["iou", "ios"]),
    st.booleans(),
    st.booleans(),
    st.sampled_from([1, 7, scene_merge.MERGE_BATCH]),
)
def test_random_findings_merge_the_same_band_by_band(
    items: list[Finding], strategy: str, metric: str, agnostic: bool, border_aware: bool, merge_batch: int
) -> None:
    options = MergeOptions(strategy, metric, 0.5, agnostic, border_aware)  # type: ignore[arg-type]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(scene_merge, "MERGE_BATCH", merge_batch)
        merged = list(merge_scene(by_tile_row(items, GRID), GRID, 300, 300, options))
    streamed = [f for t in merged for f in table_findings(t)]
    expected = whole_scene(findings_table(items), GRID, 300, 300, options)
    assert canonical(streamed) == canonical(expected)
    assert np.isfinite([f.score for f in streamed]).all()
