"""The full-image pass: a bounded, decimated read of the whole scene, boxes scaled back to scene pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tile_assets.core.models.classical import ClassicalModel
from tile_assets.core.overview_pass import (
    OVERVIEW_TILE_ID,
    full_image_findings,
    read_overview,
    scene_scale,
)
from tile_assets.core.raster import open_raster
from tile_assets_tests.fixtures.rasters import RasterFactory, invalid_cols
from tile_assets_tests.models.pipeline import STORE, describe_scene, untiled_findings

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"
PHOTO = INBOX / "no_geo_photo.jpg"  # 2000 x 2000
DRONE = INBOX / "pix4d_drone_rgba.tif"  # 686 x 758, alpha


def test_the_read_is_bounded_by_max_side_and_keeps_the_aspect_ratio() -> None:
    with open_raster(STORE, str(DRONE)) as ds:
        overview = read_overview(ds, max_side=256)
    assert (overview.window.width, overview.window.height) == (231, 256)
    assert overview.window.tile_id == OVERVIEW_TILE_ID
    assert overview.data.shape == (3, 256, 231)
    assert overview.colorinterp == ("red", "green", "blue")
    assert overview.scale_max == 255.0


def brightness(rgb: np.ndarray) -> np.ndarray:
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def test_a_pixel_is_invalid_when_any_source_pixel_under_it_is() -> None:
    with open_raster(STORE, str(DRONE)) as ds:
        overview = read_overview(ds, max_side=128)
        full = ds.dataset_mask() > 0
        source = ds.read([1, 2, 3]).astype(np.float64)
    valid = overview.valid
    # Conservative: never more valid area than the source, and close to it.
    assert valid.mean() <= full.mean()
    assert valid.mean() > full.mean() - 0.05
    # No valid pixel averages in the transparent black: mean brightness matches the source's.
    seen = brightness(overview.data.data.astype(np.float64))[valid].mean()
    assert seen == pytest.approx(brightness(source)[full].mean(), rel=0.02)


@pytest.mark.parametrize(
    ("dtype", "nodata", "nan"), [("uint16", 0, False), ("float32", None, True)]
)
def test_nodata_and_nan_are_invalid_in_non_byte_data(
    raster_factory: RasterFactory, dtype: str, nodata: float | None, nan: bool
) -> None:
    path = raster_factory(
        f"{dtype}.tif", width=200, height=100, dtype=dtype, nodata=nodata, nan=nan
    )
    with open_raster(STORE, str(path)) as ds:
        overview = read_overview(ds, max_side=50)
    assert (overview.window.width, overview.window.height) == (50, 25)
    bad = (
        invalid_cols(200) // 4
    )  # source columns 0..49 -> overview columns 0..11 (and a mixed 12th)
    assert not overview.valid[:, :bad].any()
    assert overview.valid[:, bad + 1 :].all()
    if dtype == "uint16":
        values = overview.data.compressed()
        assert overview.scale_max == pytest.approx(np.percentile(values, 99))


def test_boxes_come_back_in_scene_pixels_scaled_by_the_decimation() -> None:
    scene = describe_scene(PHOTO)
    model = ClassicalModel()
    found = full_image_findings(STORE, scene, model, max_side=256)
    with open_raster(STORE, scene.uri) as ds:
        overview = read_overview(ds, max_side=256)
    sx, sy = scene_scale(scene, overview)
    assert (sx, sy) == (2000 / 256, 2000 / 256)
    (direct,) = model.predict([overview])
    assert len(found) == len(direct.findings) > 0
    for f, d in zip(found, direct.findings, strict=True):
        assert f.box == (d.box[0] * sx, d.box[1] * sy, d.box[2] * sx, d.box[3] * sy)
        assert f.area_px == pytest.approx(d.area_px * sx * sy)
        assert 0 <= f.box[0] < f.box[2] <= 2000 and 0 <= f.box[1] < f.box[3] <= 2000
        assert f.tile_id == OVERVIEW_TILE_ID
        assert (f.model, f.model_version) == ("classical", "1.0.0")
        assert f.attributes["overview_scale"] == 7.8125


def test_a_scene_within_max_side_is_seen_at_full_resolution() -> None:
    scene = describe_scene(DRONE)
    model = ClassicalModel()
    found = full_image_findings(STORE, scene, model, max_side=1024)
    reference = untiled_findings(DRONE, model)
    assert [(f.label, f.box, f.score) for f in found] == [
        (f.label, f.box, f.score) for f in reference
    ]


def test_max_side_must_be_sensible() -> None:
    with open_raster(STORE, str(DRONE)) as ds, pytest.raises(ValueError, match="max_side"):
        read_overview(ds, max_side=8)
