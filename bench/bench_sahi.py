"""4. Slicing against SAHI's `slice_image` on the same image: time and peak memory.

Both cut the same 10,000 x 10,000 4-band GeoTIFF into 512 px slices with
20 % overlap and hand every slice over as an array. SAHI (its own
virtualenv, without torch) decodes the whole image first (PIL cannot open
the 4-band TIFF, so SAHI falls back to scikit-image, as its docs say for
large TIFFs) and returns views into it. Ours reads each slice's window
with `TileReader` in its read order and drops it before the next, as the
pipeline does. Each side runs in a fresh process; peak RSS is measured
above the process's RSS after imports. The slices are checked to be the
same windows with the same pixels (a sample of them, outside the timing).
"""

from __future__ import annotations

import sys
import time
import zlib
from typing import Any

from bench.harness import (
    MB,
    Progress,
    Row,
    emit,
    ensure_sahi,
    peak,
    reset_peak,
    rss,
    run_side,
)

SIDE = 10_000
TILE = 512
OVERLAP = 0.2
RUNS = 2
SAMPLE_EVERY = 37
TARGET_SPEED = 2.0
TARGET_MEMORY = 0.25


def _digest(chw: Any) -> int:
    import numpy as np

    return zlib.crc32(np.ascontiguousarray(chw).tobytes())


def side_sahi(path: str) -> None:
    import numpy as np
    from sahi.slicing import slice_image

    base = rss()
    reset_peak()
    cpu = time.process_time()
    start = time.perf_counter()
    result = slice_image(
        path,
        slice_height=TILE,
        slice_width=TILE,
        overlap_height_ratio=OVERLAP,
        overlap_width_ratio=OVERLAP,
        auto_slice_resolution=False,
    )
    slices = result.sliced_image_list
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    growth = peak() - base
    boxes = [[*s.starting_pixel, s.image.shape[1], s.image.shape[0]] for s in slices]
    sample = {i: _digest(np.moveaxis(np.asarray(slices[i].image), -1, 0)) for i in range(0, len(slices), SAMPLE_EVERY)}
    emit({"seconds": seconds, "cpu": cpu, "growth": growth, "slices": len(slices), "boxes": boxes, "sample": sample})


def side_ours(path: str) -> None:
    from tile_assets.core.grid import plan_grid
    from tile_assets.core.raster import TileReader
    from tile_assets.core.store import LocalStore
    from tile_assets.core.types import GridSpec

    spec = GridSpec(TILE, OVERLAP)
    base = rss()
    reset_peak()
    cpu = time.process_time()
    start = time.perf_counter()
    with TileReader(LocalStore(), path) as reader:
        ds = reader.dataset
        windows = plan_grid(ds.width, ds.height, spec)
        for window in reader.in_read_order(windows):
            reader.read(window, spec)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    growth = peak() - base
    boxes = [[w.col_off, w.row_off, w.width, w.height] for w in windows]
    with TileReader(LocalStore(), path) as reader:
        sample = {
            i: _digest(reader.read(windows[i], spec).data.data) for i in range(0, len(windows), SAMPLE_EVERY)
        }
    emit({"seconds": seconds, "cpu": cpu, "growth": growth, "slices": len(windows), "boxes": boxes, "sample": sample})


def run(progress: Progress) -> list[Row]:
    from bench.scenes import mosaic  # rasterio: the project's interpreter only

    sahi_python = ensure_sahi(progress)
    path = str(mosaic(SIDE))
    ours: list[dict[str, Any]] = []
    sahi: list[dict[str, Any]] = []
    for attempt in range(RUNS):
        progress(f"slicing: run {attempt + 1}/{RUNS} (ours, SAHI slice_image)")
        ours.append(run_side("bench.bench_sahi", ["ours", path]))
        sahi.append(run_side("bench.bench_sahi", ["sahi", path], python=sahi_python))
    best, base = min(ours, key=lambda r: r["seconds"]), min(sahi, key=lambda r: r["seconds"])
    same_boxes = sorted(map(tuple, best["boxes"])) == sorted(map(tuple, base["boxes"]))
    same_pixels = best["sample"] == base["sample"]
    speed = base["seconds"] / best["seconds"]
    memory = max(r["growth"] for r in ours) / min(r["growth"] for r in sahi)
    same = f"same {best['slices']} windows: {same_boxes}, same pixels ({len(best['sample'])} sampled): {same_pixels}"
    return [
        Row(
            metric=f"4. slicing {SIDE:,}² x4 bands, {best['slices']} slices: time (s)",
            ours=f"{best['seconds']:.1f} s (CPU {best['cpu']:.1f})",
            baseline=f"{base['seconds']:.1f} s (CPU {base['cpu']:.1f})",
            ratio=speed,
            ratio_text=f"{speed:.1f}x faster",
            target=f">= {TARGET_SPEED:.0f}x faster",
            met=speed >= TARGET_SPEED and same_boxes and same_pixels,
            note=same,
        ),
        Row(
            metric="4. slicing: peak memory above baseline",
            ours=f"{max(r['growth'] for r in ours) / MB:.0f} MB",
            baseline=f"{min(r['growth'] for r in sahi) / MB:.0f} MB",
            ratio=memory,
            ratio_text=f"{memory:.3f}",
            target=f"<= {TARGET_MEMORY}",
            met=memory <= TARGET_MEMORY,
        ),
    ]


if __name__ == "__main__":
    {"ours": side_ours, "sahi": side_sahi}[sys.argv[1]](*sys.argv[2:])
