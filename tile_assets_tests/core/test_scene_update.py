"""A rerun's merge (previous rows kept, only what new tiles reach merged again) equals merging the whole scene."""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tile_assets.core.borders import TileBoxes
from tile_assets.core.findings_table import findings_table, table_findings
from tile_assets.core.scene_merge import MergeOptions
from tile_assets.core.scene_update import MergeBasis, update_merge
from tile_assets.core.types import Finding
from tile_assets_tests.core.test_scene_merge import GRID, GRID_FINDINGS, SceneRun, canonical, naip, whole_scene

__all__ = ["naip"]  # the module fixture, shared with test_scene_merge


def updated(old: list[Finding], new: list[Finding], windows: dict, side: int, options: MergeOptions) -> list[Finding]:
    """Merge `old`, write it as findings.parquet would hold it (more columns), then update with `new`."""
    previous = findings_table(whole_scene(findings_table(old), windows, side, side, options))
    previous = previous.append_column("scene_key", pa.array(["s"] * len(previous)))
    kept, merged = update_merge(
        previous,
        findings_table(old + new),
        {f.tile_id for f in new},
        TileBoxes.of(windows, side, side),
        options,
    )
    return table_findings(kept) + table_findings(merged)


@settings(max_examples=200, deadline=None)
@given(
    GRID_FINDINGS,
    st.sets(st.sampled_from(sorted(GRID)), max_size=4),
    st.sampled_from(["greedy_nmm", "nms"]),
    st.sampled_from(["iou", "ios"]),
    st.booleans(),
    st.booleans(),
)
def test_random_updates_equal_the_whole_merge(
    items: list[Finding], new_tiles: set[str], strategy: str, metric: str, agnostic: bool, border_aware: bool
) -> None:
    options = MergeOptions(strategy, metric, 0.5, agnostic, border_aware)  # type: ignore[arg-type]
    old = [f for f in items if f.tile_id not in new_tiles]
    new = [f for f in items if f.tile_id in new_tiles]
    expected = whole_scene(findings_table(items), GRID, 300, 300, options)
    assert canonical(updated(old, new, GRID, 300, options)) == canonical(expected)


@pytest.mark.parametrize("strategy", ["greedy_nmm", "nms"])
def test_a_real_scene_updated_after_failed_tiles_equals_its_whole_merge(naip: SceneRun, strategy: str) -> None:
    """Every 5th tile of a NAIP scene comes back in a rerun: its findings join, most previous rows stay."""
    options = MergeOptions(strategy=strategy)  # type: ignore[arg-type]
    late = {tile for i, tile in enumerate(naip.windows) if i % 5 == 0}
    old = [f for f in naip.raw if f.tile_id not in late]
    new = [f for f in naip.raw if f.tile_id in late]
    side_w, side_h = naip.scene.width, naip.scene.height
    previous = findings_table(whole_scene(findings_table(old), naip.windows, side_w, side_h, options))
    kept, merged = update_merge(
        previous, findings_table(naip.raw), late, TileBoxes.of(naip.windows, side_w, side_h), options
    )
    expected = whole_scene(findings_table(naip.raw), naip.windows, side_w, side_h, options)
    assert len(new) > 20 and len(expected) > 100
    assert canonical(table_findings(kept) + table_findings(merged)) == canonical(expected)
    assert 0 < len(merged) < len(expected) and len(kept) > len(expected) // 3  # the update did not redo everything


def test_a_basis_tells_what_a_rerun_adds() -> None:
    options = {"strategy": "greedy_nmm"}
    tiles = {"a": "c1.parquet", "b": "c2.parquet"}

    def now(**changes: object) -> MergeBasis:
        return replace(MergeBasis("cache/m/f", "grid1", options, tiles, False), **changes)

    before = now()
    assert MergeBasis.from_json(before.to_json()) == before
    assert before.new_tiles(now(tiles={**tiles, "c": "c3.parquet"})) == {"c"}
    assert before.new_tiles(before) == frozenset()
    assert before.new_tiles(now(tiles={"a": "c1.parquet", "c": "c3.parquet"})) is None  # b gone
    assert before.new_tiles(now(tiles={**tiles, "b": "c3.parquet"})) is None  # b's findings came from another file
    assert before.new_tiles(now(cache="cache/m2/f")) is None
    assert before.new_tiles(now(grid="grid2")) is None
    assert before.new_tiles(now(options={"strategy": "nms"})) is None
    assert before.new_tiles(now(full_image_pass=True)) is None
