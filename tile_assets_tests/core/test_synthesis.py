"""Scene synthesis on constructed tiles: counts, cover weighting, grid, coverage, text."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tile_assets.core.synthesis import synthesize
from tile_assets.core.types import Finding, SceneInfo, TileResult
from tile_assets_tests.fixtures.findings import arrow_findings

# RGB.byte.tif's real georeferencing (EPSG:32618, ~300 m pixels, north-up).
GEO = SceneInfo(
    uri="/data/RGB.byte.tif",
    partition_key="RGB_byte-0000",
    fingerprint="sha256:x",
    driver="GTiff",
    width=300,
    height=300,
    count=3,
    dtype="uint8",
    size_bytes=1,
    crs="EPSG:32618",
    transform=(300.0379266750948, 0.0, 101985.0, 0.0, -300.041782729805, 2826915.0),
)
PLAIN = SceneInfo(
    uri="/data/photo.jpg",
    partition_key="photo-0000",
    fingerprint="sha256:y",
    driver="JPEG",
    width=300,
    height=300,
    count=3,
    dtype="uint8",
    size_bytes=1,
)


def _manifest(windows: list[tuple[str, int, int, int, int]]) -> pd.DataFrame:
    rows = [
        {"tile_id": t, "row": r, "col": c, "col_off": x, "row_off": y, "width": w, "height": h}
        for (t, x, y, w, h), (r, c) in zip(
            windows, [(i, i) for i in range(len(windows))], strict=True
        )
    ]
    return pd.DataFrame(rows)


def _grid_manifest() -> pd.DataFrame:
    """3x3 tiles of 100 px, no overlap."""
    return _manifest([(f"t{r}{c}", c * 100, r * 100, 100, 100) for r in range(3) for c in range(3)])


def _finding(label: str, x: float, y: float, score: float = 0.5, size: float = 10) -> Finding:
    return Finding(
        label=label,
        score=score,
        box=(x, y, x + size, y + size),
        tile_id="t00",
        area_px=size * size,
        model="classical",
        model_version="1.0",
    )


def test_counts_grid_coverage_and_description_name_the_failures() -> None:
    manifest = _grid_manifest()
    results = [
        TileResult(tile_id=t, status="ok", cover={"water": 0.5}, valid_pixels=10_000)
        for t in manifest["tile_id"]
        if t not in {"t11", "t22"}
    ]
    results.append(
        TileResult(
            tile_id="t11", status="failed", error_type="RasterReadError", error_message="bad block"
        )
    )
    # t22 has no result at all.
    merged = [
        _finding("building", 10, 10, 0.9),
        _finding("building", 20, 20, 0.8),
        _finding("building", 50, 30, 0.7),
        _finding("tree", 250, 250, 0.6, size=40),
    ]
    s = synthesize(GEO, manifest, results, [arrow_findings(merged)])

    assert s["counts_by_label"] == {"building": 3, "tree": 1}
    assert s["spatial_grid"] == [[3, 0, 0], [0, 0, 0], [0, 0, 1]]
    assert s["spatial_summary"] == "concentrated in the north-west"
    assert (s["tiles_planned"], s["tiles_ok"], s["tiles_failed"]) == (9, 7, 2)
    assert s["coverage"] == pytest.approx(7 / 9, abs=1e-4)
    assert s["status"] == "partial"
    assert s["failed_tiles"] == [
        {"tile_id": "t11", "error_type": "RasterReadError", "message": "bad block"},
        {"tile_id": "t22", "error_type": "NoResult", "message": "no result recorded"},
    ]
    assert s["model"] == {"name": "classical", "version": "1.0"}
    assert s["georeferenced"] is True
    assert s["cover"] == {"water": 0.5}

    top = s["notable"][0]
    assert top["box_px"] == [10.0, 10.0, 20.0, 20.0]
    lon, lat = top["centre_lonlat"]
    # RGB.byte.tif lies in the Bahamas/Florida area of UTM 18N.
    assert -80 < lon < -76 and 23 < lat < 26

    text = s["description"]
    assert "4 objects" in text and "3 building" in text and "1 tree" in text
    assert "north-west" in text
    assert "7 of 9 tiles" in text and "78% coverage" in text
    assert "t11 (RasterReadError)" in text and "t22 (NoResult)" in text
    assert 2 <= text.count(". ") + 1 <= 4
    assert json.loads(json.dumps(s)) == s
    assert synthesize(GEO, manifest, results, [arrow_findings(merged)]) == s


def test_cover_is_weighted_by_valid_pixels_and_overlap_counted_once() -> None:
    # Two 100 px tiles overlapping by 50 px: each owns 75 % of its window.
    manifest = _manifest([("a", 0, 0, 100, 100), ("b", 50, 0, 100, 100)])
    equal = [
        TileResult(tile_id="a", status="ok", cover={"water": 1.0}, valid_pixels=10_000),
        TileResult(tile_id="b", status="ok", cover={"water": 0.0, "veg": 1.0}, valid_pixels=10_000),
    ]
    assert synthesize(GEO, manifest, equal, [])["cover"] == {"veg": 0.5, "water": 0.5}

    # a has a quarter of b's valid pixels: water = 0.25 / (0.25 + 1).
    unequal = [
        TileResult(tile_id="a", status="ok", cover={"water": 1.0}, valid_pixels=2_500),
        equal[1],
    ]
    assert synthesize(GEO, manifest, unequal, [])["cover"]["water"] == pytest.approx(0.2, abs=1e-4)

    # When b failed, a's overlap strip is no longer shared; a alone makes the cover.
    failed_b = [equal[0], TileResult(tile_id="b", status="failed", error_type="ModelError")]
    assert synthesize(GEO, manifest, failed_b, [])["cover"] == {"water": 1.0}


def test_spread_evenly_and_pixel_place_names() -> None:
    merged = [_finding("car", c * 100 + 40, r * 100 + 40) for r in range(3) for c in range(3)]
    manifest = _grid_manifest()
    results = [TileResult(tile_id=t, status="ok", valid_pixels=1) for t in manifest["tile_id"]]
    s = synthesize(GEO, manifest, results, [arrow_findings(merged)])
    assert s["spatial_summary"] == "spread evenly"

    corner = [_finding("car", 280, 5), _finding("car", 285, 5), _finding("car", 5, 285)]
    s = synthesize(PLAIN, manifest, results, arrow_findings(corner).to_batches(max_chunksize=1))
    assert s["spatial_summary"] == "concentrated in the top-right"
    assert s["georeferenced"] is False
    assert all("centre_lonlat" not in n for n in s["notable"])
    assert "pixel coordinates" in s["description"]
    assert s["status"] == "complete" and s["coverage"] == 1.0

    two = synthesize(GEO, manifest, results, [arrow_findings(corner[:2])])
    assert two["spatial_summary"] == "too few to show a spatial pattern"


def test_zero_findings() -> None:
    manifest = _grid_manifest()
    results = [
        TileResult(tile_id=t, status="ok", cover={"water": 0.1}, valid_pixels=100)
        for t in manifest["tile_id"]
    ]
    s = synthesize(GEO, manifest, results, [], model_name="classical", model_version="2")
    assert s["counts_by_label"] == {} and s["total_findings"] == 0
    assert s["spatial_grid"] == [[0] * 3] * 3 and s["spatial_summary"] == "no findings"
    assert s["notable"] == []
    assert s["model"] == {"name": "classical", "version": "2"}
    assert "No objects were found." in s["description"]
    assert "9 of 9 tiles (100% coverage)" in s["description"]


def test_all_tiles_failed() -> None:
    manifest = _grid_manifest()
    results = [
        TileResult(tile_id=t, status="failed", error_type="ModelError", error_message="boom")
        for t in manifest["tile_id"]
    ]
    s = synthesize(PLAIN, manifest, results, [])
    assert s["coverage"] == 0.0 and s["tiles_ok"] == 0 and s["tiles_failed"] == 9
    assert s["status"] == "failed" and s["cover"] == {}
    assert len(s["failed_tiles"]) == 9
    text = s["description"]
    assert "No tile was analysed successfully" in text and "coverage 0%" in text
    assert "9 failed" in text and "and 6 more" in text
    assert "pixel coordinates" in text


def test_model_named_by_the_first_finding_that_names_one_across_batches() -> None:
    manifest = _grid_manifest()
    unnamed = Finding("car", 0.5, (1.0, 1.0, 2.0, 2.0), "t00", 1.0)
    named = [
        Finding("car", 0.4, (5.0, 5.0, 6.0, 6.0), "t00", 1.0, "first", "1"),
        Finding("car", 0.9, (9.0, 9.0, 10.0, 10.0), "t00", 1.0, "second", "2"),
    ]
    by_tile = Finding("car", 0.1, (0, 0, 1, 1), model="tile", model_version="3")
    tile = TileResult("t00", "ok", (by_tile,))
    batches = arrow_findings([unnamed, unnamed, *named]).to_batches(max_chunksize=2)
    assert len(batches) == 2
    s = synthesize(GEO, manifest, [tile], batches)
    assert s["model"] == {"name": "first", "version": "1"}
    assert s["total_findings"] == 4 and s["counts_by_label"] == {"car": 4}
    # No merged finding names its model: the tiles' findings do.
    s = synthesize(GEO, manifest, [tile], [arrow_findings([unnamed])])
    assert s["model"] == {"name": "tile", "version": "3"}
