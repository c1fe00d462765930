"""1. Tile read throughput: the pipeline's reader against a plain rasterio windowed-read loop.

Both read every tile of the same grid (512 px, 20 % overlap) of the same
20,000 x 20,000 tiled DEFLATE GeoTIFF, each in a fresh process, twice,
alternating; the best run of each counts. Ours is `TileReader` as
`run_batch` uses it (its GDAL environment, its read order, masked tiles
with the dataset mask). The plain loop is `rasterio.open` + `read(window=)`
in grid order; it runs with GDAL's default cache and with the cache bounded
like ours (GDAL_CACHEMAX in MB), and its faster variant is the baseline.
The plain loop reads pixels only; ours also returns each tile's validity
mask. A plain loop with `read(masked=True)` (rasterio's per-band masks) is
measured too, for context.
"""

from __future__ import annotations

import sys

from bench.harness import (
    MB,
    Progress,
    Row,
    emit,
    peak,
    reset_peak,
    rss,
    run_side,
    timed,
)
from bench.scenes import mosaic

SIDE = 20_000
RUNS = 2
TARGET = 0.95


def _windows(path: str) -> list[tuple[int, int, int, int]]:
    """The grid ours reads: 512 px tiles, 20 % overlap, over the file's width and height."""
    import rasterio

    from tile_assets.core.grid import plan_grid
    from tile_assets.core.types import GridSpec

    with rasterio.open(path) as ds:
        width, height = ds.width, ds.height
    return [(w.col_off, w.row_off, w.width, w.height) for w in plan_grid(width, height, GridSpec(512, 0.2))]


def side_ours(path: str) -> None:
    import rasterio

    from tile_assets.core.grid import plan_grid
    from tile_assets.core.raster import TileReader
    from tile_assets.core.store import LocalStore
    from tile_assets.core.types import GridSpec

    with rasterio.open(path) as ds:
        width, height = ds.width, ds.height
    spec = GridSpec(512, 0.2)
    windows = plan_grid(width, height, spec)
    base = rss()
    reset_peak()

    def loop() -> int:
        with TileReader(LocalStore(), path) as reader:
            for window in reader.in_read_order(windows):
                reader.read(window, spec)
        return len(windows)

    seconds, tiles = timed(loop)
    emit({"seconds": seconds, "tiles": tiles, "tiles_per_s": tiles / seconds, "growth": peak() - base})


def side_plain(path: str, masked: str = "") -> None:
    import rasterio
    from rasterio.windows import Window

    windows = [Window(*w) for w in _windows(path)]
    base = rss()
    reset_peak()

    def loop() -> int:
        with rasterio.open(path) as ds:
            for window in windows:
                ds.read(window=window, masked=bool(masked))
        return len(windows)

    seconds, tiles = timed(loop)
    emit({"seconds": seconds, "tiles": tiles, "tiles_per_s": tiles / seconds, "growth": peak() - base})


def run(progress: Progress) -> list[Row]:
    path = str(mosaic(SIDE))
    ours: list[dict] = []
    plain: dict[str, list[dict]] = {"default cache": [], "GDAL_CACHEMAX=256": []}
    masked: list[dict] = []
    bounded = {"GDAL_CACHEMAX": "256"}
    for attempt in range(RUNS):
        progress(f"read: run {attempt + 1}/{RUNS} (ours, plain default cache, plain bounded cache, masked)")
        ours.append(run_side("bench.bench_read", ["ours", path]))
        plain["default cache"].append(run_side("bench.bench_read", ["plain", path]))
        plain["GDAL_CACHEMAX=256"].append(run_side("bench.bench_read", ["plain", path], env=bounded))
        masked.append(run_side("bench.bench_read", ["plain", path, "masked"], env=bounded))
    best = max(ours, key=lambda r: r["tiles_per_s"])
    variant, runs = max(plain.items(), key=lambda kv: max(r["tiles_per_s"] for r in kv[1]))
    base = max(runs, key=lambda r: r["tiles_per_s"])
    ratio = best["tiles_per_s"] / base["tiles_per_s"]
    others = ", ".join(
        f"{name}: {max(r['tiles_per_s'] for r in rs):.0f} tiles/s, +{max(r['growth'] for r in rs) / MB:.0f} MB"
        for name, rs in {**plain, "read(masked=True), GDAL_CACHEMAX=256": masked}.items()
    )
    return [
        Row(
            metric=f"1. tile reads, {SIDE:,}² scene, {best['tiles']} tiles (tiles/s)",
            ours=f"{best['tiles_per_s']:.0f} (+{best['growth'] / MB:.0f} MB)",
            baseline=f"{base['tiles_per_s']:.0f} (+{base['growth'] / MB:.0f} MB, {variant})",
            ratio=ratio,
            ratio_text=f"{ratio:.2f}",
            target=f">= {TARGET}",
            met=ratio >= TARGET,
            note=f"plain loop variants: {others}",
        )
    ]


if __name__ == "__main__":
    {"ours": side_ours, "plain": side_plain}[sys.argv[1]](*sys.argv[2:])
