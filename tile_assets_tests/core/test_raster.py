"""Raster reader on real sample images, factory-made rasters and broken files."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.windows import Window

from tile_assets.core import raster
from tile_assets.core.errors import (
    InvalidSourceError,
    RasterReadError,
    StoreError,
    UnsupportedRasterError,
)
from tile_assets.core.grid import plan_grid
from tile_assets.core.raster import (
    GDAL_CACHE_BYTES,
    MAX_PIXELS,
    MAX_UNTILED_PIXELS,
    TileReader,
    describe,
    gdal_env_options,
    mask_summary,
    never_holds,
    open_raster,
    read_tile,
    valid_fraction,
)
from tile_assets.core.store import LocalStore
from tile_assets.core.types import GridSpec, SceneInfo, TileWindow
from tile_assets_tests.fixtures.rasters import RasterFactory, invalid_cols

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"
BAD = Path(__file__).resolve().parents[1] / "data" / "bad"
STORE = LocalStore()


def _describe(path: Path) -> SceneInfo:
    with open_raster(STORE, str(path)) as ds:
        return describe(ds, str(path), "key", "sha256:x", path.stat().st_size)


def _window(col_off: int, row_off: int, width: int, height: int) -> TileWindow:
    return TileWindow("t", 0, 0, col_off, row_off, width, height)


@pytest.fixture
def rgb_byte() -> Iterator[rasterio.io.DatasetReader]:
    with open_raster(STORE, str(INBOX / "RGB.byte.tif")) as ds:
        yield ds


# --- describe on the real samples ---------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "size", "count", "colorinterp", "crs"),
    [
        ("RGB.byte.tif", (791, 718), 3, ("red", "green", "blue"), "EPSG:32618"),
        ("naip_2018.tif", (934, 724), 4, ("red", "green", "blue", "nir"), "EPSG:26914"),
        ("pix4d_drone_rgba.tif", (686, 758), 3, ("red", "green", "blue"), "EPSG:32750"),
        ("colorado_aerial_cl1.tif", (383, 232), 3, ("red", "green", "blue"), "EPSG:26913"),
        ("no_geo_photo.jpg", (2000, 2000), 3, ("red", "green", "blue"), None),
        ("389225main_sw_1965_1024.jpg", (1024, 768), 3, ("red", "green", "blue"), None),
        ("astronaut.png", (512, 512), 3, ("red", "green", "blue"), None),
        ("page_text.png", (384, 191), 1, ("gray",), None),
    ],
)
def test_describe_samples(
    name: str, size: tuple[int, int], count: int, colorinterp: tuple[str, ...], crs: str | None
) -> None:
    info = _describe(INBOX / name)
    assert (info.width, info.height) == size
    assert info.count == count and info.dtype == "uint8"
    assert info.colorinterp == colorinterp
    assert info.crs == crs
    assert info.georeferenced is (crs is not None)
    assert SceneInfo.from_dict(info.to_dict()) == info
    if crs is None:
        assert info.bounds_wgs84 is None and info.resolution is None and info.transform is None
    else:
        west, south, east, north = info.bounds_wgs84  # type: ignore[misc]
        assert -180 <= west < east <= 180 and -90 <= south < north <= 90


def test_describe_rgb_byte_georeferencing() -> None:
    info = _describe(INBOX / "RGB.byte.tif")
    assert info.nodata == 0.0
    assert info.transform == pytest.approx(
        (300.0379, 0.0, 101985.0, 0.0, -300.0418, 2826915.0), rel=1e-6
    )
    assert info.bounds == pytest.approx((101985.0, 2611485.0, 339315.0, 2826915.0), abs=1)
    west, south, east, north = info.bounds_wgs84  # type: ignore[misc]
    assert -79.1 < west < east < -76.4 and 23.4 < south < north < 25.7  # the Bahamas
    assert info.resolution == pytest.approx((300.04, 300.04), abs=0.01)
    assert not info.has_alpha and not info.has_internal_mask


def test_describe_pix4d_alpha_and_naip_nir() -> None:
    pix4d = _describe(INBOX / "pix4d_drone_rgba.tif")
    assert pix4d.has_alpha and pix4d.count == 3 and not pix4d.has_internal_mask
    naip = _describe(INBOX / "naip_2018.tif")
    assert naip.colorinterp[3] == "nir" and naip.block_shape == (512, 512)
    assert naip.resolution == (5.0, 5.0)


def test_describe_internal_mask(raster_factory: RasterFactory) -> None:
    info = _describe(raster_factory(internal_mask=True))
    assert info.has_internal_mask and not info.has_alpha and info.nodata is None


@pytest.mark.parametrize(
    ("count", "colorinterp", "expected"),
    [
        (4, None, ("red", "green", "blue", "nir")),  # unlabeled 4 x uint8: NAIP layout
        (
            4,
            (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.undefined),
            ("red", "green", "blue", "nir"),
        ),
        (
            4,
            (ColorInterp.blue, ColorInterp.green, ColorInterp.red, ColorInterp.undefined),
            ("blue", "green", "red", "nir"),
        ),
        (2, None, ("gray", "undefined")),
        (1, (ColorInterp.undefined,), ("gray",)),
    ],
)
def test_band_names(
    raster_factory: RasterFactory,
    count: int,
    colorinterp: tuple[ColorInterp, ...] | None,
    expected: tuple[str, ...],
) -> None:
    assert _describe(raster_factory(count=count, colorinterp=colorinterp)).colorinterp == expected


def test_unlabeled_uint16_bands_stay_undefined(raster_factory: RasterFactory) -> None:
    info = _describe(raster_factory(count=4, dtype="uint16"))
    assert info.colorinterp == ("gray", "undefined", "undefined", "undefined")


def test_describe_without_crs_keeps_transform(tmp_path: Path) -> None:
    path = tmp_path / "nocrs.tif"
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=32,
        height=16,
        count=1,
        dtype="uint8",
        transform=from_origin(10.0, 20.0, 0.5, 0.5),
    ) as dst:
        dst.write(np.ones((1, 16, 32), dtype="uint8"))
    info = _describe(path)
    assert info.crs is None and info.bounds_wgs84 is None and info.resolution is None
    assert info.transform == (0.5, 0.0, 10.0, 0.0, -0.5, 20.0)
    assert info.bounds == (10.0, 12.0, 26.0, 20.0)


def test_describe_rotated_transform(tmp_path: Path) -> None:
    path = tmp_path / "rotated.tif"
    transform = from_origin(500_000.0, 4_000_000.0, 10.0, 10.0) @ Affine.rotation(30)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=40,
        height=20,
        count=1,
        dtype="uint8",
        crs="EPSG:32618",
        transform=transform,
    ) as dst:
        dst.write(np.ones((1, 20, 40), dtype="uint8"))
    info = _describe(path)
    assert info.transform == pytest.approx(tuple(transform)[:6])
    corners = [transform @ c for c in ((0, 0), (40, 0), (0, 20), (40, 20))]
    xs, ys = zip(*corners, strict=True)
    assert info.bounds == pytest.approx((min(xs), min(ys), max(xs), max(ys)))
    assert info.bounds_wgs84 is not None and info.resolution == pytest.approx((10.0, 10.0))


def test_describe_gcps_without_transform(tmp_path: Path) -> None:
    path = tmp_path / "gcps.tif"
    gcps = [
        GroundControlPoint(row=0, col=0, x=-78.0, y=25.0),
        GroundControlPoint(row=0, col=40, x=-77.0, y=25.0),
        GroundControlPoint(row=20, col=0, x=-78.0, y=24.5),
        GroundControlPoint(row=20, col=40, x=-77.0, y=24.5),
    ]
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=40,
        height=20,
        count=1,
        dtype="uint8",
        gcps=gcps,
        crs="EPSG:4326",
    ) as dst:
        dst.write(np.ones((1, 20, 40), dtype="uint8"))
    info = _describe(path)
    assert info.crs == "EPSG:4326" and info.transform is None and not info.georeferenced
    assert info.bounds == (-78.0, 24.5, -77.0, 25.0)
    assert info.bounds_wgs84 == pytest.approx((-78.0, 24.5, -77.0, 25.0))


# --- validation and guards ----------------------------------------------------------------


def test_unsupported_band_count(raster_factory: RasterFactory) -> None:
    with pytest.raises(UnsupportedRasterError, match="17 data bands"):
        _describe(raster_factory(count=17, block=None))


def test_unsupported_dtype(raster_factory: RasterFactory) -> None:
    with pytest.raises(UnsupportedRasterError, match="data type int8 not supported"):
        _describe(raster_factory(dtype="int8"))


def _sparse_tif(path: Path, width: int, height: int, *, tiled: bool, filled_rows: int = 0) -> Path:
    """A sparse GeoTIFF declaring width x height; only the first rows carry (random) data."""
    profile: dict[str, object] = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "uint8",
        "compress": "deflate",
        "sparse_ok": True,
        "crs": "EPSG:32618",
        "transform": from_origin(500_000.0, 4_000_000.0, 1.0, 1.0),
    }
    if tiled:
        profile.update(tiled=True, blockxsize=512, blockysize=512)
    with rasterio.open(path, "w", **profile) as dst:
        if filled_rows:
            noise = np.random.default_rng(1).integers(0, 256, (filled_rows, width), dtype=np.uint8)
            dst.write(noise, 1, window=Window(0, 0, width, filled_rows))
    return path


def test_decompression_bomb_rejected_with_declared_size(tmp_path: Path) -> None:
    path = _sparse_tif(tmp_path / "bomb.tif", 100_000, 100_000, tiled=True)
    assert path.stat().st_size < 1_000_000
    with pytest.raises(UnsupportedRasterError, match="decompression bomb") as exc:
        _describe(path)
    assert "100000x100000" in str(exc.value) and exc.value.obj == str(path)


def test_sparse_tiled_file_below_max_pixels_is_big_but_legitimate(tmp_path: Path) -> None:
    # Sparse blocks are never stored, so the file is tiny, but every read is one bounded block.
    path = _sparse_tif(tmp_path / "sparse.tif", 30_000, 30_000, tiled=True)
    assert 30_000 * 30_000 < MAX_PIXELS and path.stat().st_size < 1_000_000
    info = _describe(path)
    assert (info.width, info.height, info.block_shape) == (30_000, 30_000, (512, 512))


def test_tiny_striped_file_declaring_huge_dimensions_is_a_bomb(tmp_path: Path) -> None:
    path = _sparse_tif(tmp_path / "bomb.tif", 15_000, 15_000, tiled=False)
    assert 15_000 * 15_000 < MAX_UNTILED_PIXELS  # rejected for its ratio, not its size
    with pytest.raises(UnsupportedRasterError, match="decompression bomb.*15000x15000.*ratio"):
        _describe(path)


def test_tiled_file_with_absurd_blocks_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "huge-blocks.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=20_000, height=20_000, count=4, dtype="uint16",
        tiled=True, blockxsize=8192, blockysize=8192, compress="deflate", sparse_ok=True,
    ):
        pass
    with pytest.raises(UnsupportedRasterError, match="absurd block layout.*8192x8192 blocks"):
        _describe(path)


def test_big_tiled_file_that_carries_its_pixels_is_accepted(tmp_path: Path) -> None:
    path = _sparse_tif(tmp_path / "big.tif", 16_000, 16_000, tiled=True, filled_rows=512)
    assert MAX_UNTILED_PIXELS < 16_000 * 16_000 < MAX_PIXELS
    info = _describe(path)
    assert (info.width, info.height, info.block_shape) == (16_000, 16_000, (512, 512))


def test_big_untiled_file_is_rejected(tmp_path: Path) -> None:
    path = _sparse_tif(tmp_path / "striped.tif", 16_000, 16_000, tiled=False, filled_rows=64)
    with pytest.raises(UnsupportedRasterError, match="without internal tiling.*16000x16000"):
        _describe(path)


def test_gdal_cache_is_bounded_in_bytes() -> None:
    options = gdal_env_options()
    # inside rasterio.Env the value is bytes: a "32" here would mean 32 bytes
    assert options["GDAL_CACHEMAX"] == GDAL_CACHE_BYTES == 32 * 1024 * 1024
    with open_raster(STORE, str(INBOX / "rgb-byte-tenth.tif")):
        assert int(rasterio.env.getenv()["GDAL_CACHEMAX"]) == GDAL_CACHE_BYTES
        assert rasterio.env.getenv()["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
        assert "VSI_CACHE" not in rasterio.env.getenv()  # local files: no second copy of the bytes
    assert gdal_env_options("/vsis3/bucket/key.tif")["VSI_CACHE"] == "TRUE"


def test_reader_cache_grows_when_a_tile_column_spans_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    """naip_2018.tif has 1 MB blocks (512 x 512 x 4 bands): 3 MB makes bands one block row tall."""
    monkeypatch.setattr(raster, "GDAL_CACHE_BYTES", 3 * 2**20)
    spec = GridSpec(tile_size=128, overlap=0.2)
    windows = plan_grid(934, 724, spec)
    with TileReader(STORE, str(INBOX / "naip_2018.tif")) as reader:
        first_row = reader.in_read_order([w for w in windows if w.row == 0])
        assert int(rasterio.env.getenv()["GDAL_CACHEMAX"]) == 3 * 2**20  # one band: no growth
        ordered = reader.in_read_order(windows)
        # tops in 2 block rows, 1 more the tiles reach, 1 of room; 2 block columns a tile spans
        assert int(rasterio.env.getenv()["GDAL_CACHEMAX"]) == 2 * (2 + 1 + 1) * 2**20
        tiles = [reader.read(w, spec) for w in ordered]
    assert sorted(first_row, key=lambda w: w.col) == [w for w in windows if w.row == 0]
    assert sorted(ordered, key=lambda w: w.tile_id) == sorted(windows, key=lambda w: w.tile_id)
    assert [w.col_off for w in ordered] == sorted(w.col_off for w in windows)  # one band: column by column
    assert all(t.valid.all() for t in tiles)


# --- broken sources -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("empty.tif", b"", "empty file"),
        ("random.tif", os.urandom(4096), "not a recognized image format"),
        ("text.jpg", b"this is a text file, not a JPEG\n" * 10, "not a recognized image format"),
        ("truncated.tif", (INBOX / "RGB.byte.tif").read_bytes()[:1000], "truncated or damaged"),
    ],
)
def test_invalid_sources(tmp_path: Path, name: str, content: bytes, reason: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InvalidSourceError, match=reason) as exc:
        with open_raster(STORE, str(path)):
            pass
    assert exc.value.obj == str(path)


def test_missing_source_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such object"):
        with open_raster(STORE, str(tmp_path / "missing.tif")):
            pass


def test_truncated_jpeg_fails_in_describe(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    path.write_bytes((INBOX / "no_geo_photo.jpg").read_bytes()[:300_000])
    with pytest.raises(RasterReadError, match="Premature end of JPEG"):
        _describe(path)


def test_corrupt_tif_fails_in_describe_and_on_its_bad_block() -> None:
    path = BAD / "corrupt.tif"
    with pytest.raises(RasterReadError, match="IReadBlock failed"):
        _describe(path)
    spec = GridSpec(tile_size=512, overlap=0)
    with TileReader(STORE, str(path)) as reader:
        good = reader.read(_window(0, 0, 512, 512), spec)
        assert good.data.shape == (3, 512, 512) and good.valid.any()
        with pytest.raises(RasterReadError) as exc:
            reader.read(_window(512, 512, 512, 512), spec)
        assert "corrupt.tif" in exc.value.obj


# --- masks and pruning ----------------------------------------------------------------------


def test_rgb_byte_collar_corners_are_pruned(rgb_byte: rasterio.io.DatasetReader) -> None:
    summary = mask_summary(rgb_byte, max_side=128)
    assert summary.valid.shape[1] == 128 and summary.valid.shape[0] <= 128
    assert summary.valid[0, 0] == 0 and summary.valid[-1, -1] == 0
    assert summary.valid[summary.valid.shape[0] // 2, summary.valid.shape[1] // 2] == 1
    assert valid_fraction(summary, _window(0, 0, 64, 64)) == 0.0
    assert valid_fraction(summary, _window(791 - 64, 718 - 64, 64, 64)) == 0.0
    assert valid_fraction(summary, _window(350, 330, 64, 64)) == 1.0


@pytest.mark.parametrize("name", ["RGB.byte.tif", "pix4d_drone_rgba.tif"])
@pytest.mark.parametrize("max_side", [64, 1024])
def test_pruned_tiles_hold_no_valid_pixel(name: str, max_side: int) -> None:
    with open_raster(STORE, str(INBOX / name)) as ds:
        full = ds.dataset_mask() > 0
        summary = mask_summary(ds, max_side=max_side)
        tiles = plan_grid(ds.width, ds.height, GridSpec(tile_size=64, overlap=0))
    pruned = [t for t in tiles if valid_fraction(summary, t) == 0.0]
    assert pruned, "both scenes have empty corners"
    for t in pruned:
        assert not full[t.row_off : t.row_off + t.height, t.col_off : t.col_off + t.width].any()
    for t in tiles:
        share = full[t.row_off : t.row_off + t.height, t.col_off : t.col_off + t.width].mean()
        assert abs(valid_fraction(summary, t) - share) < 0.35


def test_pix4d_transparent_area_is_invalid() -> None:
    with open_raster(STORE, str(INBOX / "pix4d_drone_rgba.tif")) as ds:
        alpha = ds.read(4)
        summary = mask_summary(ds)
        tile = read_tile(ds, _window(0, 0, 128, 128), GridSpec(tile_size=128, overlap=0))
    assert summary.valid.shape == alpha.shape  # small scene: full resolution
    assert np.array_equal(summary.valid > 0, alpha > 0)
    assert np.array_equal(tile.valid, alpha[:128, :128] > 0)
    assert (~tile.valid).any() and tile.valid.any()


def test_all_nodata_scene_prunes_every_tile() -> None:
    with open_raster(STORE, str(BAD / "all-nodata.tif")) as ds:
        summary = mask_summary(ds)
        tiles = plan_grid(ds.width, ds.height, GridSpec(tile_size=256, overlap=0.2))
    assert len(tiles) > 5
    assert all(valid_fraction(summary, t) == 0.0 for t in tiles)


def test_float_nan_is_invalid_in_summary(raster_factory: RasterFactory) -> None:
    path = raster_factory(dtype="float32", nan=True, width=64, height=32)
    with open_raster(STORE, str(path)) as ds:
        summary = mask_summary(ds)
    assert not summary.valid[:, : invalid_cols(64)].any()
    assert summary.valid[:, invalid_cols(64) :].all()


# --- tile reads -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "kwargs"),
    [
        ("uint8", {"nodata": 0}),
        ("uint8", {"alpha": True}),
        ("uint8", {"internal_mask": True}),
        ("float32", {"nan": True}),
        ("float64", {"nodata": -9999.0}),
        ("int16", {"nodata": -9999}),
        ("uint16", {"nodata": 0}),
        ("uint16", {"alpha": True}),
    ],
)
def test_read_tile_masks_invalid_pixels(
    raster_factory: RasterFactory, dtype: str, kwargs: dict[str, object]
) -> None:
    width, height = 64, 48
    path = raster_factory(dtype=dtype, width=width, height=height, **kwargs)  # type: ignore[arg-type]
    window = _window(8, 4, 32, 32)
    with TileReader(STORE, str(path)) as reader:
        tile = reader.read(window, GridSpec(tile_size=32, overlap=0))
        expected = reader.dataset.read([1, 2, 3], window=Window(8, 4, 32, 32))
    assert tile.data.shape == (3, 32, 32) and tile.data.dtype == np.dtype(dtype)
    assert tile.colorinterp == ("red", "green", "blue")
    bad = invalid_cols(width) - 8  # columns of the window inside the invalid stripe
    assert not tile.valid[:, :bad].any() and tile.valid[:, bad:].all()
    assert tile.valid_pixels == 32 * (32 - bad)
    assert np.array_equal(tile.data[:, :, bad:].filled(0), expected[:, :, bad:])
    if dtype == "uint8":
        assert tile.scale_max == 255.0
    else:
        valid_values = expected[:, :, bad:]
        assert tile.scale_max == pytest.approx(max(float(np.percentile(valid_values, 99)), 1.0))


def test_int16_negative_values_scale_at_least_one(raster_factory: RasterFactory) -> None:
    path = raster_factory(dtype="int16", width=32, height=32)
    with TileReader(STORE, str(path)) as reader:
        tile = reader.read(_window(0, 0, 16, 16), GridSpec(tile_size=16, overlap=0))
    assert tile.data.min() < 0
    assert tile.scale_max == 1.0  # 99th percentile is negative here


def test_pad_mode_pads_edge_tiles_with_masked_pixels(raster_factory: RasterFactory) -> None:
    path = raster_factory(width=100, height=70, pattern="noise")
    spec = GridSpec(tile_size=64, overlap=0, edge="pad")
    tiles = plan_grid(100, 70, spec)
    corner = tiles[-1]
    assert (corner.col_off, corner.row_off, corner.width, corner.height) == (64, 64, 36, 6)
    with TileReader(STORE, str(path)) as reader:
        tile = reader.read(corner, spec)
        expected = reader.dataset.read(window=Window(64, 64, 36, 6))
    assert tile.data.shape == (3, 64, 64) and tile.window == corner
    assert (
        tile.valid[:6, :36].all() and not tile.valid[6:, :].any() and not tile.valid[:, 36:].any()
    )
    assert tile.valid_pixels == 6 * 36
    assert np.array_equal(tile.data[:, :6, :36], expected)


def test_shift_mode_small_image_is_not_padded() -> None:
    with TileReader(STORE, str(INBOX / "rgb-byte-tenth.tif")) as reader:
        window = plan_grid(79, 71, GridSpec(tile_size=256))[0]
        tile = reader.read(window, GridSpec(tile_size=256))
    assert tile.data.shape == (3, 71, 79)
    assert 0.3 < tile.valid.mean() < 0.9  # black collar masked by nodata 0
    assert tile.valid_pixels == int(tile.valid.sum())


def test_a_tile_without_invalid_pixels_has_no_mask_and_counts_every_pixel(raster_factory: RasterFactory) -> None:
    path = raster_factory(width=64, height=64, pattern="noise")
    with TileReader(STORE, str(path)) as reader:
        tile = reader.read(_window(0, 0, 48, 40), GridSpec(tile_size=48, overlap=0))
    assert np.ma.getmask(tile.data) is np.ma.nomask
    assert tile.valid_pixels == 48 * 40 == int(tile.valid.sum())


def test_window_outside_the_image_is_masked_not_read(raster_factory: RasterFactory) -> None:
    path = raster_factory(width=32, height=32)
    with TileReader(STORE, str(path)) as reader:
        tile = reader.read(_window(16, -8, 32, 32), GridSpec(tile_size=32, overlap=0))
        far = reader.read(_window(100, 100, 16, 16), GridSpec(tile_size=16, overlap=0))
        expected = reader.dataset.read(window=Window(16, 0, 16, 24))
    assert tile.data.shape == (3, 32, 32)
    assert tile.valid[8:, :16].all() and not tile.valid[:8].any() and not tile.valid[:, 16:].any()
    assert np.array_equal(tile.data[:, 8:, :16], expected)
    assert not far.valid.any() and far.scale_max == 255.0


def test_naip_tile_has_nir_band_scaled() -> None:
    spec = GridSpec(tile_size=256, overlap=0.2)
    with TileReader(STORE, str(INBOX / "naip_2018.tif")) as reader:
        tile = reader.read(plan_grid(934, 724, spec)[0], spec)
    nir = tile.band("nir")
    assert tile.data.shape == (4, 256, 256) and nir is not None
    assert 0.0 <= float(nir.min()) and float(nir.max()) <= 1.0 and tile.valid.all()
    assert np.ma.getmask(tile.data) is np.ma.nomask  # no invalid pixel: no mask array


def test_tile_reader_closes_dataset() -> None:
    with TileReader(STORE, str(INBOX / "rgb-byte-tenth.tif")) as reader:
        ds = reader.dataset
        assert not ds.closed
    assert ds.closed
    with pytest.raises(RuntimeError):
        _ = reader.dataset


@pytest.mark.parametrize(
    ("values", "dtype", "nodata", "expected"),
    [
        ([1, 2, 255], "uint8", 0, True),
        ([0, 2, 255], "uint8", 0, False),
        ([1, 2, 65534], "uint16", 65535, True),
        ([1, 65535], "uint16", 65535, False),
        ([-32768, 5], "int16", -32768, False),
        ([-32767, 5], "int16", -32768, True),
        ([1, 2, 3], "int16", -9999, False),  # not an extreme of the dtype: unknown, compared pixel by pixel
    ],
)
def test_never_holds_is_sure_only_at_the_dtype_extremes(
    values: list[int], dtype: str, nodata: int, expected: bool
) -> None:
    band = np.array(values, dtype=dtype).reshape(1, -1)
    assert never_holds(band, nodata) is expected
    if expected:
        assert not (band == nodata).any()
