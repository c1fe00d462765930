"""Large benchmark inputs built from the sample imagery: mirrored mosaics of naip_2018.tif.

The sample NAIP tile (934 x 724, 4 bands, 5 m) is repeated with alternate
copies mirrored, so there are no seams and the content compresses like the
original, into a square tiled (512 x 512 blocks), DEFLATE-compressed GeoTIFF
with the source's CRS, pixel size and nodata, and internal overviews (as
NAIP and most large imagery ship, as COGs): the pipeline's decimated reads
(empty-tile mask, preview) use them. Scenes are cached under
bench/.work/scenes/ and rebuilt only when missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio.enums import Resampling
from rasterio.windows import Window

from bench.harness import REPO, WORK

SOURCE = REPO / "data" / "inbox" / "naip_2018.tif"
SCENES = WORK / "scenes"
BLOCK = 512


def _mirrored(length: int, period: int) -> np.ndarray:
    """Source index for each output index: 0..p-1, p-1..0, 0..p-1, ..."""
    m = np.arange(length) % (2 * period)
    return np.where(m < period, m, 2 * period - 1 - m)


def scene_path(side: int) -> Path:
    return SCENES / f"naip_mosaic_{side}.tif"


def mosaic(side: int) -> Path:
    """A `side` x `side` mosaic of the NAIP sample (built once, then reused)."""
    path = scene_path(side)
    if path.exists():
        return path
    SCENES.mkdir(parents=True, exist_ok=True)
    with rasterio.open(SOURCE) as src:
        pixels = src.read()
        profile = src.profile
    cols = _mirrored(side, pixels.shape[2])
    profile.update(
        width=side,
        height=side,
        tiled=True,
        blockxsize=BLOCK,
        blockysize=BLOCK,
        compress="deflate",
        interleave="pixel",
        photometric="MINISBLACK",  # as the source: four data bands (R, G, B, NIR), no alpha
        alpha="UNSPECIFIED",
        BIGTIFF="IF_SAFER",
        num_threads="all_cpus",
        transform=Affine(*profile["transform"][:6]),
    )
    partial = path.with_suffix(".partial.tif")
    env = rasterio.Env(
        GDAL_CACHEMAX=256 * 1024 * 1024, GDAL_NUM_THREADS="ALL_CPUS", COMPRESS_OVERVIEW="DEFLATE"
    )
    with env:
        with rasterio.open(partial, "w", **profile) as dst:
            for row in range(0, side, BLOCK):
                height = min(BLOCK, side - row)
                rows = _mirrored(row + height, pixels.shape[1])[row:]
                dst.write(pixels[:, rows][:, :, cols], window=Window(0, row, side, height))
        with rasterio.open(partial, "r+") as dst:
            factors = [2**k for k in range(1, 12) if side // 2**k >= BLOCK // 2]
            dst.build_overviews(factors, Resampling.average)
    partial.rename(path)
    return path


def decoded_bytes(path: Path) -> int:
    """Bytes the scene takes decoded in memory (width x height x bands x itemsize)."""
    with rasterio.open(path) as ds:
        return ds.width * ds.height * ds.count * np.dtype(ds.dtypes[0]).itemsize


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(mosaic(int(arg)))
