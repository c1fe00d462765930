"""Preview PNGs from real and generated rasters: size, transparency, stretch, boxes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

from tile_assets.core.preview import PALETTE, render_preview
from tile_assets.core.types import Finding
from tile_assets_tests.fixtures.findings import arrow_findings

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"


def _decode(png: bytes) -> np.ndarray:
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.mode == "RGBA"
    return np.asarray(image)


def _write(path: Path, data: np.ndarray, nodata: float | None) -> Path:
    count, height, width = data.shape
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=data.dtype,
        crs="EPSG:32618",
        transform=from_origin(500_000, 4_000_000, 10, 10),
        nodata=nodata,
    ) as ds:
        ds.write(data)
    return path


def test_landsat_collar_is_transparent_and_size_bounded() -> None:
    with rasterio.open(INBOX / "RGB.byte.tif") as ds:
        px = _decode(render_preview(ds, [], {}, max_side=256))
    assert px.shape == (232, 256, 4)  # 718/791 * 256 rounded
    assert px[0, 0, 3] == 0 and px[-1, -1, 3] == 0  # nodata collar corners
    assert px[116, 128, 3] == 255 and px[116, 128, :3].any()


def test_boxes_are_drawn_in_label_colours() -> None:
    findings = [
        Finding("building", 0.9, (200.0, 200.0, 400.0, 400.0)),
        Finding("water", 0.8, (450.0, 300.0, 600.0, 500.0)),
    ]
    with rasterio.open(INBOX / "RGB.byte.tif") as ds:
        plain = _decode(render_preview(ds, [], {}, max_side=400))
        counts = {"building": 1, "water": 1}
        boxed = _decode(render_preview(ds, [arrow_findings(findings)], counts, max_side=400))
    scale = 400 / 791
    row, col = round(300 * scale), round(200 * scale)  # left edge of the building box
    assert not np.array_equal(boxed[row, col], plain[row, col])
    assert tuple(boxed[row, col]) == (*PALETTE[0], 255)
    row, col = round(400 * scale), round(600 * scale) - 1  # right edge of the water box
    assert tuple(boxed[row, col]) == (*PALETTE[1], 255)
    # Far from any box nothing changed.
    assert np.array_equal(boxed[20:60, 300:], plain[20:60, 300:])


def test_large_photo_is_downsampled_and_opaque() -> None:
    with rasterio.open(INBOX / "no_geo_photo.jpg") as ds:
        face = arrow_findings([Finding("face", 0.5, (100.0, 100.0, 300.0, 300.0))])
        px = _decode(render_preview(ds, [face], {"face": 1}))
    assert px.shape == (1024, 1024, 4)
    assert (px[..., 3] == 255).all()


def test_a_label_missing_from_the_counts_is_an_error() -> None:
    findings = arrow_findings([Finding("building", 0.9, (1.0, 1.0, 5.0, 5.0))])
    with rasterio.open(INBOX / "RGB.byte.tif") as ds, pytest.raises(ValueError, match="building"):
        render_preview(ds, [findings], {"water": 1}, max_side=64)


def test_alpha_band_becomes_transparency() -> None:
    with rasterio.open(INBOX / "pix4d_drone_rgba.tif") as ds:
        px = _decode(render_preview(ds, [], {}, max_side=100))
        alpha = ds.read(4, out_shape=(px.shape[0], px.shape[1]))
    assert np.array_equal(px[..., 3] == 0, alpha == 0)
    assert 0 < (alpha == 0).mean() < 0.5


def test_uint16_is_stretched_and_nodata_transparent(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    data = rng.integers(1000, 3000, size=(3, 60, 80), dtype=np.uint16)
    data[:, :10, :10] = 0
    with rasterio.open(_write(tmp_path / "u16.tif", data, nodata=0)) as ds:
        px = _decode(render_preview(ds, [], {}))
    assert px.shape == (60, 80, 4)
    assert (px[:10, :10, 3] == 0).all() and (px[10:, 10:, 3] == 255).all()
    valid = px[10:, 10:, :3]
    assert valid.min() == 0 and valid.max() == 255  # 2-98 % stretch clips both ends
    assert 0.01 < (valid == 255).mean() < 0.05


@pytest.mark.parametrize("count", [1, 2])
def test_float_gray_with_nan(tmp_path: Path, count: int) -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 50, dtype=np.float32), (40, 1))
    data = np.stack([ramp] * count)
    data[:, 20:, 40:] = np.nan
    with rasterio.open(_write(tmp_path / "f32.tif", data, nodata=None)) as ds:
        px = _decode(render_preview(ds, [], {}))
    assert (px[20:, 40:, 3] == 0).all() and (px[:20, :, 3] == 255).all()
    assert np.array_equal(px[..., 0], px[..., 1]) and np.array_equal(px[..., 1], px[..., 2])
    assert px[0, 0, 0] == 0 and px[0, 39, 0] > px[0, 10, 0]
