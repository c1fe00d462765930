"""The order a batch reads its tiles in, so blocks shared by neighbouring tiles are decoded once.

Overlapping tiles share blocks of the source, and GDAL keeps decoded blocks
in a bounded cache. Read in grid order, a tile row reuses the blocks of the
previous one only if a whole strip of blocks across the scene fits in the
cache, which a small cache cannot hold for a wide scene: every block is then
decoded twice or more. Read column by column within bands of tile rows whose
blocks fit in the cache, each block is decoded once per band, whatever the
scene's width, and the cache can stay small.
"""

from __future__ import annotations

from collections.abc import Sequence

from tile_assets.core.types import TileWindow


def _footprint(block_shape: tuple[int, int], tile_shape: tuple[int, int]) -> tuple[int, int]:
    """Block columns one tile spans at most, and block rows tiles reach below their tops' row."""
    (block_rows, block_cols), (tile_rows, tile_cols) = block_shape, tile_shape
    return -(-tile_cols // block_cols) + 1, -(-tile_rows // block_rows)


def band_height(
    block_shape: tuple[int, int], tile_shape: tuple[int, int], block_bytes: int, cache_bytes: int
) -> int:
    """Height in pixels of a band of tile tops whose blocks, one tile column's worth, fit the cache.

    Walking down a tile column, the cache must hold the block columns one
    tile spans for the whole band, no more: the blocks of the column just
    left behind are the least recently used and go first, while those the
    next tile column shares are touched again. Bands start on block rows,
    so neighbouring bands share one block row (two where the tiles' overlap
    straddles a block edge), decoded twice. One block row of room is kept:
    GDAL counts a little more than a block's pixels against the cache, and a
    band one block row taller than the cache holds decodes every block again.
    """
    columns, below = _footprint(block_shape, tile_shape)
    rows = cache_bytes // max(block_bytes, 1) // columns  # block rows the cache holds per column
    return max(1, rows - below - 1) * block_shape[0]


def cache_bytes_for(
    windows: Sequence[TileWindow],
    block_shape: tuple[int, int],
    block_bytes: int,
    least: int,
    most: int,
) -> int:
    """The cache to read `windows` with: `least`, or more (up to `most`) when that saves decoding.

    With `least`, a tile column whose windows fall in several bands decodes
    the block rows those bands share twice: a reader of a whole scene does,
    a batch cut along `read_order` with `least` does not. Then the cache
    grows to hold one band over all the windows, every block decoded once
    (or to `most`, for as few bands as it allows).
    """
    if not windows:
        return least
    tile_shape = _tile_shape(windows)
    height = band_height(block_shape, tile_shape, block_bytes, least)
    bands: dict[int, set[int]] = {}
    for w in windows:
        bands.setdefault(w.col_off, set()).add(w.row_off // height)
    if all(len(column) == 1 for column in bands.values()):
        return least
    columns, below = _footprint(block_shape, tile_shape)
    top_rows = max(w.row_off for w in windows) // block_shape[0] + 1
    return max(least, min(most, columns * (top_rows + below + 1) * block_bytes))


def _tile_shape(windows: Sequence[TileWindow]) -> tuple[int, int]:
    return max(w.height for w in windows), max(w.width for w in windows)


def read_order(
    windows: Sequence[TileWindow],
    block_shape: tuple[int, int],
    block_bytes: int,
    cache_bytes: int,
) -> list[TileWindow]:
    """`windows` in bands of rows (by top edge), column by column within a band, top to bottom.

    `block_shape` is (rows, cols) of the source's blocks, `block_bytes` what
    one block position costs in the cache (all bands), `cache_bytes` the
    cache size. The same windows come back, only reordered.
    """
    if not windows:
        return []
    height = band_height(block_shape, _tile_shape(windows), block_bytes, cache_bytes)
    return sorted(windows, key=lambda w: (w.row_off // height, w.col_off, w.row_off))
