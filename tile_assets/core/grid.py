"""Tile grid math: where each tile of a scene lies, and how big tiles should be.

Pure and I/O free. The overlap slicing follows SAHI's `get_slice_bboxes`
(overlap validated up front, last row/column shifted inward so every tile is
full size) with an explicit "pad" alternative and stable tile ids.
"""

from __future__ import annotations

import math

from tile_assets.core.types import EdgeMode, GridSpec, TileWindow

MIN_TILE_SIZE = 16
MAX_TILE_SIZE = 8192
"""Largest tile side accepted: a tile is read into memory in one piece."""

AUTO_TILE_STEP = 256
AUTO_TILE_MIN = 256
AUTO_TILE_MAX = 1024
AUTO_TILE_GROUND_M = 300.0
"""Ground extent a tile should cover when the resolution is known (metres)."""
AUTO_TILES_PER_SIDE = 4
"""Without a resolution, aim for about this many tiles along the long side."""


def validate_grid(width: int, height: int, spec: GridSpec) -> int:
    """Check a scene size and grid spec; return the overlap in pixels.

    Raises `ValueError` naming the bad value, before any tile is planned.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be at least 1x1 pixel, got {width}x{height}")
    if not MIN_TILE_SIZE <= spec.tile_size <= MAX_TILE_SIZE:
        raise ValueError(
            f"tile_size must be between {MIN_TILE_SIZE} and {MAX_TILE_SIZE}, got {spec.tile_size}"
        )
    if spec.overlap < 0 or math.isnan(spec.overlap):
        raise ValueError(f"overlap must be >= 0, got {spec.overlap}")
    overlap = spec.overlap_pixels()
    if overlap >= spec.tile_size:
        raise ValueError(
            f"overlap of {overlap} px must be smaller than tile_size {spec.tile_size} "
            f"(overlap {spec.overlap}: below 1 is a ratio, 1 or more is pixels)"
        )
    if spec.edge not in ("shift", "pad"):
        raise ValueError(f"edge must be 'shift' or 'pad', got {spec.edge!r}")
    return overlap


def _axis_spans(length: int, tile: int, stride: int, edge: EdgeMode) -> list[tuple[int, int]]:
    """(offset, size) of each tile along one axis."""
    if length <= tile:
        return [(0, length)]
    spans: list[tuple[int, int]] = []
    offset = 0
    while offset + tile < length:
        spans.append((offset, tile))
        offset += stride
    if edge == "shift":
        # Moving the last tile back by at most one stride only increases its overlap.
        spans.append((length - tile, tile))
    else:
        spans.append((offset, length - offset))
    return spans


def plan_grid(width: int, height: int, spec: GridSpec) -> list[TileWindow]:
    """Cut a `width` x `height` scene into overlapping tiles, row-major.

    Neighbours overlap by at least `spec.overlap_pixels()`. With edge "shift"
    the last row and column are moved inward so every tile is full size and
    the last one ends exactly at the image edge; with "pad" they stay on the
    stride and are clipped to the image (the reader pads them to full size).
    An axis shorter than a tile gets one tile spanning the whole axis.
    Ids are `r{row}c{col}`, zero-padded to 3 digits (more for huge grids).
    """
    overlap = validate_grid(width, height, spec)
    stride = spec.tile_size - overlap
    rows = _axis_spans(height, spec.tile_size, stride, spec.edge)
    cols = _axis_spans(width, spec.tile_size, stride, spec.edge)
    digits = max(3, len(str(max(len(rows), len(cols)) - 1)))
    return [
        TileWindow(
            tile_id=f"r{r:0{digits}d}c{c:0{digits}d}",
            row=r,
            col=c,
            col_off=col_off,
            row_off=row_off,
            width=tile_w,
            height=tile_h,
        )
        for r, (row_off, tile_h) in enumerate(rows)
        for c, (col_off, tile_w) in enumerate(cols)
    ]


def _round_to_step(value: float) -> int:
    return max(AUTO_TILE_STEP, int(round(value / AUTO_TILE_STEP)) * AUTO_TILE_STEP)


def auto_tile_size(width: int, height: int, resolution: float | None) -> int:
    """A tile size for a scene whose user gave none.

    Rule: with a ground resolution (metres per pixel), tiles cover about
    `AUTO_TILE_GROUND_M` metres, so a model sees objects at a similar scale
    on every sensor (0.6 m NAIP -> 512, 0.15 m aerial -> 1024, 30 m Landsat
    -> 256). Without one, the long side is cut into about
    `AUTO_TILES_PER_SIDE` tiles (small images 256/512, big ones 1024). The
    result is a multiple of 256 (friendly to 256/512 internal blocks),
    clamped to [256, 1024], and never larger than the multiple of 256 that
    covers the image's long side.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be at least 1x1 pixel, got {width}x{height}")
    long_side = max(width, height)
    if resolution is not None and math.isfinite(resolution) and resolution > 0:
        size = _round_to_step(AUTO_TILE_GROUND_M / resolution)
    else:
        size = _round_to_step(long_side / AUTO_TILES_PER_SIDE)
    size = min(max(size, AUTO_TILE_MIN), AUTO_TILE_MAX)
    covering = math.ceil(long_side / AUTO_TILE_STEP) * AUTO_TILE_STEP
    return min(size, covering)
