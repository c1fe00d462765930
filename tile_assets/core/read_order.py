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


def band_height(
    block_shape: tuple[int, int], tile_shape: tuple[int, int], block_bytes: int, cache_bytes: int
) -> int:
    """Height in pixels of a band of tile tops such that one column of the band's blocks fits the cache.

    A tile spans up to ceil(width / block width) + 1 block columns; one more
    column of room lets the LRU cache drop the column just left behind
    before the ones still needed.
    """
    block_rows, block_cols = block_shape
    tile_rows, tile_cols = tile_shape
    columns = -(-tile_cols // block_cols) + 2
    rows = cache_bytes // max(block_bytes, 1) // columns
    return max(block_rows, rows * block_rows - tile_rows - block_rows)


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
    tile_shape = (max(w.height for w in windows), max(w.width for w in windows))
    height = band_height(block_shape, tile_shape, block_bytes, cache_bytes)
    return sorted(windows, key=lambda w: (w.row_off // height, w.col_off, w.row_off))
