"""Every sample image through the core path with the default model: sensible findings, round-tripped outputs.

Each image in data/inbox is described, tiled with the automatic tile size,
analysed by the classical model, merged and synthesized exactly as the
assets do; findings are written as GeoParquet and the scene as a STAC Item,
then read back with geopandas and pystac. Per-image properties say what a
person looking at the image would expect. (Faces with `opencv` and text
with `ocr` are in test_opencv.py and test_ocr.py.)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio

from tile_assets.core.catalog import (
    read_geoparquet,
    scene_item,
    write_findings,
    write_stac_json,
)
from tile_assets.core.findings_table import findings_table, table_findings
from tile_assets.core.models.classical import ClassicalModel
from tile_assets.core.models.display import valid_share
from tile_assets.core.store import is_image_name
from tile_assets.core.tiling import resolve_spec
from tile_assets.core.types import GridSpec
from tile_assets_tests.models.pipeline import STORE, SceneRun, describe_scene, run_scene

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"
IMAGES = sorted(p.name for p in INBOX.iterdir() if is_image_name(p.name))
GEOREFERENCED = {"RGB.byte.tif", "colorado_aerial_cl1.tif", "naip_2018.tif",
                 "pix4d_drone_rgba.tif", "rgb-byte-tenth.tif"}  # fmt: skip


@pytest.fixture(scope="module")
def runs() -> dict[str, SceneRun]:
    """Every sample image, default model, automatic tile size, 20 % overlap."""
    model = ClassicalModel()
    out = {}
    for name in IMAGES:
        spec = resolve_spec(describe_scene(INBOX / name), 0, 0.2, "shift")
        out[name] = run_scene(INBOX / name, model, spec)
    return out


@pytest.fixture(scope="module")
def published(
    runs: dict[str, SceneRun], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[str, str, dict]]:
    """findings.parquet and item.json per scene, written through the store as the assets do."""
    root = tmp_path_factory.mktemp("catalog")
    out = {}
    for name, run in runs.items():
        key = run.scene.partition_key
        findings_uri = str(root / key / "findings.parquet")
        item_uri = str(root / key / "item.json")
        write_findings(STORE, findings_uri, run.scene, [findings_table(run.merged)])
        when = datetime(2024, 5, 1, tzinfo=UTC)
        item = scene_item(
            run.scene, run.synthesis, {"item": item_uri, "findings": findings_uri}, datetime=when
        )
        write_stac_json(STORE, item_uri, item)
        out[name] = (findings_uri, item_uri, json.loads(Path(item_uri).read_text()))
    return out


def test_the_inbox_holds_the_documented_samples() -> None:
    assert len(IMAGES) == 9 and GEOREFERENCED <= set(IMAGES)


@pytest.mark.parametrize("name", IMAGES)
def test_every_image_is_analysed_completely_with_findings_inside_it(
    runs: dict[str, SceneRun], name: str
) -> None:
    run = runs[name]
    s = run.synthesis
    assert s["status"] == "complete" and s["coverage"] == 1.0, s["failed_tiles"]
    assert run.merged, "a real image with no finding at all"
    assert len(run.merged) <= len(run.raw)
    for f in run.merged:
        assert 0 <= f.box[0] < f.box[2] <= run.scene.width
        assert 0 <= f.box[1] < f.box[3] <= run.scene.height
        assert (f.model, f.model_version) == ("classical", "1.0.0")
    assert sum(s["counts_by_label"].values()) == s["total_findings"] == len(run.merged)
    assert all(0.0 <= v <= 1.0 for v in s["cover"].values())
    assert s["georeferenced"] == (name in GEOREFERENCED)
    pixels_note = "Locations are in pixel coordinates (the image is not georeferenced)."
    assert s["description"].endswith(pixels_note) == (name not in GEOREFERENCED)


@pytest.mark.parametrize("name", IMAGES)
def test_findings_round_trip_through_geoparquet(
    runs: dict[str, SceneRun], published: dict[str, tuple[str, str, dict]], name: str
) -> None:
    run = runs[name]
    findings_uri, _, _ = published[name]
    frame = gpd.read_parquet(findings_uri)
    assert frame.equals(read_geoparquet(STORE, findings_uri))
    back = table_findings(pq.read_table(findings_uri))
    assert [(f.label, f.score, f.box, f.tile_id, f.area_px) for f in back] == [
        (f.label, f.score, f.box, f.tile_id, f.area_px) for f in run.merged
    ]
    assert [json.loads(a) for a in frame["attributes"]] == [
        json.loads(json.dumps(f.attributes)) for f in run.merged
    ]
    if name in GEOREFERENCED:
        assert frame.crs is not None and frame.crs == rasterio.crs.CRS.from_user_input(
            run.scene.crs
        )
        assert (frame["coord_space"] == "crs").all()
        assert run.scene.bounds_wgs84 is not None
        west, south, east, north = run.scene.bounds_wgs84
        tol = 1e-6
        assert (frame["lon_min"] >= west - tol).all() and (frame["lon_max"] <= east + tol).all()
        assert (frame["lat_min"] >= south - tol).all() and (frame["lat_max"] <= north + tol).all()
    else:
        assert frame.crs is None and (frame["coord_space"] == "pixel").all()
        assert frame["lon_min"].isna().all()
        # Pixel geometry is the box itself (y down).
        np.testing.assert_allclose(
            frame.geometry.bounds.to_numpy(), frame[["px_x0", "px_y0", "px_x1", "px_y1"]]
        )


@pytest.mark.parametrize("name", IMAGES)
def test_stac_items_round_trip_through_pystac(
    runs: dict[str, SceneRun], published: dict[str, tuple[str, str, dict]], name: str
) -> None:
    run = runs[name]
    _, item_uri, written = published[name]
    item = pystac.Item.from_file(item_uri)
    assert item.to_dict(include_self_link=True, transform_hrefs=False) == written
    assert item.properties["tile_assets:counts"] == run.synthesis["counts_by_label"]
    assert item.properties["tile_assets:georeferenced"] == (name in GEOREFERENCED)
    if name in GEOREFERENCED:
        assert item.geometry is not None
        assert item.bbox is not None and run.scene.bounds_wgs84 is not None
        np.testing.assert_allclose(item.bbox, run.scene.bounds_wgs84)
    else:
        # Plainly stated: no footprint, no projection; findings stay in pixels.
        assert item.geometry is None and item.bbox is None
        assert item.properties["proj:code"] is None


# --- what each image should show -----------------------------------------------------


def test_naip_is_mostly_vegetation_seen_through_its_nir_band(runs: dict[str, SceneRun]) -> None:
    run = runs["naip_2018.tif"]
    assert run.scene.colorinterp == ("red", "green", "blue", "nir")
    assert run.synthesis["cover"]["vegetation"] > 0.5
    assert run.synthesis["cover"]["vegetation"] > 2 * run.synthesis["cover"]["water"]


def valid_mask(name: str) -> np.ndarray:
    with rasterio.open(INBOX / name) as ds:
        return ds.dataset_mask() > 0


@pytest.mark.parametrize("name", ["RGB.byte.tif", "pix4d_drone_rgba.tif"])
def test_the_nodata_collar_and_transparent_area_are_never_reported(
    runs: dict[str, SceneRun], name: str
) -> None:
    run = runs[name]
    valid = valid_mask(name)
    assert valid.mean() < 0.9  # a real collar / transparent area
    for f in run.merged:
        assert valid_share(valid, f.box) >= 0.5, f
    # Cover is over valid pixels only: the black collar would otherwise count as "dark".
    with rasterio.open(INBOX / name) as ds:
        rgb = ds.read([1, 2, 3]).astype(np.float32) / 255.0
    brightness = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    dark_valid = float((brightness[valid] < 0.15).mean())
    dark_all = float((brightness < 0.15).mean())
    assert run.synthesis["cover"]["dark"] == pytest.approx(dark_valid, abs=0.02)
    assert abs(run.synthesis["cover"]["dark"] - dark_all) > 0.1


# Small tiles, so that some fall wholly in the collar (RGB.byte's corners, the drone's wedges).
@pytest.mark.parametrize(
    ("name", "tile_size"), [("RGB.byte.tif", 128), ("pix4d_drone_rgba.tif", 64)]
)
def test_tiles_wholly_in_the_collar_are_pruned_before_inference(name: str, tile_size: int) -> None:
    run = run_scene(INBOX / name, ClassicalModel(), GridSpec(tile_size=tile_size, overlap=0.2))
    assert run.pruned > 0
    assert (run.manifest["valid_fraction"] > 0).all()
    assert len(run.results) == len(run.manifest)
    with rasterio.open(INBOX / name) as ds:
        valid = ds.dataset_mask() > 0
    for w in run.windows.values():
        assert valid[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width].any()


def test_aerial_photo_shows_vehicles_and_roofs_as_contrast_objects(
    runs: dict[str, SceneRun],
) -> None:
    run = runs["colorado_aerial_cl1.tif"]
    counts = run.synthesis["counts_by_label"]
    assert counts["bright_object"] >= 10 and counts["dark_object"] >= 10
    # At 15 cm a car is about 30 x 12 px: many objects are car-sized, none is the whole scene.
    areas = [f.area_px for f in run.merged if f.label != "vegetation_patch"]
    assert sum(100 <= a <= 2000 for a in areas) >= 10
    assert max(areas) < 0.1 * run.scene.width * run.scene.height


def test_the_page_is_bright_paper_with_dark_text_marks(runs: dict[str, SceneRun]) -> None:
    run = runs["page_text.png"]
    assert set(run.synthesis["cover"]) == {"bright", "dark"}  # gray: no colour classes
    counts = run.synthesis["counts_by_label"]
    assert counts["dark_object"] > counts.get("bright_object", 0)
    # Text marks sit on the text lines, which start at the top-left of the page.
    marks = [f for f in run.merged if f.label == "dark_object"]
    assert min(f.box[1] for f in marks) < 20 and min(f.box[0] for f in marks) < 20


def test_notable_objects_carry_lon_lat_only_when_georeferenced(runs: dict[str, SceneRun]) -> None:
    for name, run in runs.items():
        notable = run.synthesis["notable"]
        assert notable
        has_lonlat = all("centre_lonlat" in n for n in notable)
        assert has_lonlat == (name in GEOREFERENCED), name
        if has_lonlat:
            assert run.scene.bounds_wgs84 is not None
            west, south, east, north = run.scene.bounds_wgs84
            for n in notable:
                lon, lat = n["centre_lonlat"]
                assert west <= lon <= east and south <= lat <= north
