"""Huge scenes: processed with bounded memory, and the bomb guard's line between big and absurd.

A 60,000 x 60,000 VRT mosaic of RGB.byte.tif (10.8 GB decoded, 3 bands)
and a sparse 60,000 x 60,000 tiled GeoTIFF go through the core as the
pipeline drives it: `describe` (bomb guard), `build_manifest` (decimated
mask summary, pruning) and `run_batch` over a few batches of windows, while
the process's peak RSS stays far below the decoded size. Absurd scenes are
rejected by `describe` with a reason naming what is wrong.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.windows import Window

from tile_assets.core.batches import plan_batches
from tile_assets.core.errors import UnsupportedRasterError
from tile_assets.core.grid import plan_grid
from tile_assets.core.inference import run_batch
from tile_assets.core.models.classical import ClassicalModel
from tile_assets.core.raster import MAX_PIXELS, describe, open_raster
from tile_assets.core.read_order import band_height, cache_bytes_for, read_order
from tile_assets.core.store import LocalStore
from tile_assets.core.tiling import build_manifest, manifest_windows
from tile_assets.core.types import GridSpec, SceneInfo, TileWindow

RGB_BYTE = Path(__file__).resolve().parents[2] / "data" / "inbox" / "RGB.byte.tif"
SIDE = 60_000
STORED_BLOCKS = ((0, 0), (30_208, 30_208), (59_392, 0), (59_392, 59_392))
STORE = LocalStore()
SPEC = GridSpec(512, 0.2)
MAX_GROWTH = 500 * 1024 * 1024
"""Peak RSS growth allowed while a 10.8 GB scene is described, tiled and partly inferred."""


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


@dataclass
class Growth:
    bytes: int = 0


@contextmanager
def peak_growth() -> Iterator[Growth]:
    """Peak RSS above the RSS at entry (Linux: clear_refs resets the peak, VmHWM reads it)."""
    Path("/proc/self/clear_refs").write_text("5")
    base = _status("VmRSS")
    growth = Growth()
    yield growth
    growth.bytes = _status("VmHWM") - base


def _simple_source(path: Path, band: int, size: tuple[int, int], block: tuple[int, int], at: tuple[int, int]) -> str:
    (w, h), (bx, by), (x, y) = size, block, at
    return (
        f'<SimpleSource><SourceFilename relativeToVRT="0">{path}</SourceFilename><SourceBand>{band}</SourceBand>'
        f'<SourceProperties RasterXSize="{w}" RasterYSize="{h}" DataType="Byte" BlockXSize="{bx}" BlockYSize="{by}"/>'
        f'<SrcRect xOff="0" yOff="0" xSize="{w}" ySize="{h}"/><DstRect xOff="{x}" yOff="{y}" xSize="{w}" ySize="{h}"/>'
        "</SimpleSource>"
    )


def write_mosaic_vrt(
    path: Path, width: int, height: int, source: Path, source_size: tuple[int, int],
    source_block: tuple[int, int], with_sources: bool = True,
) -> Path:
    """A VRT of `source` (3 bands, nodata 0) repeated edge to edge over width x height."""
    sw, sh = source_size
    bands = []
    for band, colour in enumerate(("Red", "Green", "Blue"), start=1):
        sources = "".join(
            _simple_source(source, band, source_size, source_block, (x, y))
            for y in range(0, height, sh)
            for x in range(0, width, sw)
        ) if with_sources else ""
        bands.append(
            f'<VRTRasterBand dataType="Byte" band="{band}"><NoDataValue>0</NoDataValue>'
            f"<ColorInterp>{colour}</ColorInterp>{sources}</VRTRasterBand>"
        )
    path.write_text(
        f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}"><SRS>EPSG:32618</SRS>'
        f"<GeoTransform>500000, 1, 0, 4000000, 0, -1</GeoTransform>{''.join(bands)}</VRTDataset>"
    )
    return path


@pytest.fixture(scope="module")
def huge_vrt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60,000 x 60,000 x 3 bands: a VRT of 8 x 8 RGB.byte.tif copies, itself repeated 10 x 11 times."""
    folder = tmp_path_factory.mktemp("huge")
    with rasterio.open(RGB_BYTE) as ds:
        size, block = (ds.width, ds.height), ds.block_shapes[0][::-1]
    inner = write_mosaic_vrt(folder / "inner.vrt", size[0] * 8, size[1] * 8, RGB_BYTE, size, block)
    inner_size = (size[0] * 8, size[1] * 8)
    return write_mosaic_vrt(folder / "huge.vrt", SIDE, SIDE, inner, inner_size, (128, 128))


@pytest.fixture(scope="module")
def sparse_huge_tif(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60,000 x 60,000 tiled GeoTIFF (nodata 0) that stores only four blocks of RGB.byte.tif pixels."""
    path = tmp_path_factory.mktemp("sparse") / "sparse.tif"
    with rasterio.open(RGB_BYTE) as src:
        pixels = src.read(window=Window(200, 200, 512, 512))
    profile = {
        "driver": "GTiff", "width": SIDE, "height": SIDE, "count": 3, "dtype": "uint8", "nodata": 0,
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "deflate", "sparse_ok": True,
        "crs": "EPSG:32618", "transform": from_origin(500_000.0, 4_000_000.0, 1.0, 1.0), "BIGTIFF": "YES",
    }
    with rasterio.open(path, "w", **profile) as dst:
        for x, y in STORED_BLOCKS:
            dst.write(pixels, window=Window(x, y, 512, 512))
    return path


def _describe(path: Path) -> SceneInfo:
    with open_raster(STORE, str(path)) as ds:
        return describe(ds, str(path), "huge", "sha256:x", path.stat().st_size)


def _spread_batches(windows: list[TileWindow], per_batch: int = 16) -> list[list[TileWindow]]:
    """Three batches of neighbouring windows: the first ones, the middle ones, the last ones."""
    middle = len(windows) // 2
    return [windows[:per_batch], windows[middle : middle + per_batch], windows[-per_batch:]]


def test_huge_vrt_mosaic_is_processed_with_bounded_memory(huge_vrt: Path) -> None:
    model = ClassicalModel()
    with peak_growth() as growth:
        scene = _describe(huge_vrt)
        with open_raster(STORE, str(huge_vrt)) as ds:
            manifest, pruned = build_manifest(ds, scene, SPEC)
        windows = manifest_windows(manifest)
        reports = []
        for i, chunk in enumerate(_spread_batches(windows)):
            (plan,) = plan_batches(chunk, target_steps=1)
            reports.append(run_batch(STORE, scene, plan, SPEC, model))
    decoded = scene.width * scene.height * scene.count
    assert (scene.width, scene.height, scene.count, scene.driver) == (SIDE, SIDE, 3, "VRT")
    assert decoded == 10_800_000_000
    assert len(manifest) + pruned == len(plan_grid(SIDE, SIDE, SPEC)) == 147 * 147
    assert manifest["valid_fraction"].between(0, 1, inclusive="right").all()
    results = [r for report in reports for r in report.results]
    assert len(results) == 48 and all(r.status == "ok" for r in results)
    assert sum(len(r.findings) for r in results) > 0
    assert growth.bytes < MAX_GROWTH, f"peak RSS grew {growth.bytes / 2**20:.0f} MB on a 10.8 GB scene"


def test_sparse_huge_geotiff_is_big_but_legitimate_and_prunes_to_its_stored_blocks(sparse_huge_tif: Path) -> None:
    assert sparse_huge_tif.stat().st_size < 5_000_000  # 10.8 GB declared: far beyond any compression ratio
    with peak_growth() as growth:
        scene = _describe(sparse_huge_tif)
        with open_raster(STORE, str(sparse_huge_tif)) as ds:
            manifest, pruned = build_manifest(ds, scene, SPEC)
        (plan,) = plan_batches(manifest_windows(manifest), target_steps=1)
        report = run_batch(STORE, scene, plan, SPEC, ClassicalModel())
    assert (scene.width, scene.height, scene.block_shape) == (SIDE, SIDE, (512, 512))
    # Only tiles at the four stored blocks are kept (the summary's cells may keep a neighbour
    # or two that holds none of their pixels); the other 21,500-odd are pruned.
    assert 4 <= len(manifest) <= 4 * 9 and pruned == 147 * 147 - len(manifest)
    for x, y in STORED_BLOCKS:
        assert any(
            w.col_off <= x + 256 < w.col_off + w.width and w.row_off <= y + 256 < w.row_off + w.height
            for w in plan.windows
        )
    assert all(r.status == "ok" for r in report.results)
    assert sum(r.valid_pixels > 0 for r in report.results) >= len(report.results) - 4
    assert growth.bytes < MAX_GROWTH


def test_absurd_vrts_are_rejected_with_a_reason(tmp_path: Path) -> None:
    with rasterio.open(RGB_BYTE) as ds:
        size, block = (ds.width, ds.height), ds.block_shapes[0][::-1]
    over = write_mosaic_vrt(tmp_path / "over.vrt", 100_000, 100_000, RGB_BYTE, size, block, with_sources=False)
    assert 100_000 * 100_000 > MAX_PIXELS
    with pytest.raises(UnsupportedRasterError, match=r"100000x100000 \(10,000,000,000 pixels\)") as exc:
        _describe(over)
    assert "limit" in exc.value.reason
    empty = write_mosaic_vrt(tmp_path / "empty.vrt", SIDE, SIDE, RGB_BYTE, size, block, with_sources=False)
    with pytest.raises(UnsupportedRasterError, match="VRT declares 60000x60000.*reads no source file"):
        _describe(empty)


def test_tiled_file_with_a_bomb_of_a_block_index_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "tiny-blocks.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=20_000, height=20_000, count=1, dtype="uint8",
        tiled=True, blockxsize=16, blockysize=16, sparse_ok=True,
    ):
        pass
    with pytest.raises(UnsupportedRasterError, match="absurd block layout.*1,562,500 blocks of 16x16"):
        _describe(path)


def test_read_order_keeps_the_windows_and_walks_bands_column_by_column() -> None:
    windows = plan_grid(20_000, 20_000, SPEC)
    ordered = read_order(windows, (512, 512), 4 * 512 * 512, 32 * 2**20)
    assert sorted(ordered, key=lambda w: w.tile_id) == sorted(windows, key=lambda w: w.tile_id)
    tops = np.array([w.row_off for w in ordered])
    lefts = np.array([w.col_off for w in ordered])
    # 32 MB of 1 MB blocks: 16 block rows for each of the 2 block columns a tile spans,
    # less a block row the tiles reach below their tops and one of room
    bands = tops // 7168
    assert (np.diff(bands) >= 0).all()
    same_band = np.diff(bands) == 0
    assert (np.diff(lefts)[same_band] >= 0).all()  # within a band: column by column, left to right
    assert len(set(bands.tolist())) == 3


@pytest.mark.parametrize(
    ("tile", "overlap", "block", "cache_blocks"),
    [
        (512, 0.2, 512, 32),
        (512, 0.2, 512, 96),
        (1024, 0.2, 256, 200),
        (256, 0.5, 512, 20),
        (300, 0.3, 256, 40),
    ],
)
def test_read_order_decodes_each_block_once_per_band(
    tile: int, overlap: float, block: int, cache_blocks: int
) -> None:
    """An LRU cache one block smaller than the nominal size (GDAL counts a little more than a
    block's pixels) decodes every block once, and the block rows neighbouring bands share
    (one, two where the tiles' overlap straddles a block edge) twice: no thrashing."""
    windows = plan_grid(12_000, 12_000, GridSpec(tile, overlap))
    ordered = read_order(windows, (block, block), 1, cache_blocks)
    lru: OrderedDict[tuple[int, int], None] = OrderedDict()
    decoded = 0
    for w in ordered:
        for key in _blocks(w, block):
            if key in lru:
                lru.move_to_end(key)
                continue
            decoded += 1
            lru[key] = None
            if len(lru) > cache_blocks - 1:
                lru.popitem(last=False)
    bands = len({w.row_off // band_height((block, block), (tile, tile), 1, cache_blocks) for w in windows})
    unique = len({key for w in windows for key in _blocks(w, block)})
    assert decoded <= unique + 2 * (bands - 1) * -(-12_000 // block)


def _blocks(w: TileWindow, block: int) -> list[tuple[int, int]]:
    return [
        (r, c)
        for r in range(w.row_off // block, (w.row_off + w.height - 1) // block + 1)
        for c in range(w.col_off // block, (w.col_off + w.width - 1) // block + 1)
    ]


def test_cache_grows_for_a_whole_scene_not_for_batches_cut_along_the_read_order() -> None:
    windows = plan_grid(20_000, 20_000, SPEC)
    least, most = 32 * 2**20, 128 * 2**20
    for batch in plan_batches(read_order(windows, (512, 512), 2**20, least), 8, 256):
        assert cache_bytes_for(batch.windows, (512, 512), 2**20, least, most) == least
    # tops in 39 block rows, 1 more the tiles reach, 1 of room; 2 block columns a tile spans
    whole = cache_bytes_for(windows, (512, 512), 2**20, least, most)
    assert whole == 2 * (39 + 1 + 1) * 2**20
    assert len({w.row_off // band_height((512, 512), (512, 512), 2**20, whole) for w in windows}) == 1
    assert cache_bytes_for(plan_grid(60_000, 60_000, SPEC), (512, 512), 2**20, least, most) == most
