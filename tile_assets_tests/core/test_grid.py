"""Grid math: overlap, edge handling, small images, validation, and properties."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tile_assets.core.grid import auto_tile_size, plan_grid
from tile_assets.core.types import GridSpec, TileWindow


def _by_pos(tiles: list[TileWindow]) -> dict[tuple[int, int], TileWindow]:
    return {(t.row, t.col): t for t in tiles}


def test_neighbours_overlap_as_configured() -> None:
    tiles = plan_grid(1000, 1000, GridSpec(tile_size=256, overlap=0.25))
    pos = _by_pos(tiles)
    # stride 192: offsets 0, 192, 384, 576, then the shifted last at 744
    assert [pos[(0, c)].col_off for c in range(5)] == [0, 192, 384, 576, 744]
    assert pos[(0, 1)].col_off - pos[(0, 0)].col_off == 256 - 64
    assert pos[(1, 0)].row_off - pos[(0, 0)].row_off == 256 - 64


def test_overlap_given_in_pixels() -> None:
    tiles = plan_grid(300, 100, GridSpec(tile_size=100, overlap=10))
    assert [t.col_off for t in tiles] == [0, 90, 180, 200]


def test_shift_mode_edge_tiles_are_full_size_and_end_at_edge() -> None:
    tiles = plan_grid(791, 718, GridSpec(tile_size=256, overlap=0.2, edge="shift"))
    assert all(t.width == 256 and t.height == 256 for t in tiles)
    assert max(t.col_off + t.width for t in tiles) == 791
    assert max(t.row_off + t.height for t in tiles) == 718
    last = tiles[-1]
    assert (last.col_off, last.row_off) == (791 - 256, 718 - 256)


def test_pad_mode_keeps_stride_and_clips_edge_tiles() -> None:
    tiles = plan_grid(791, 718, GridSpec(tile_size=256, overlap=0.2, edge="pad"))
    stride = 256 - 51
    cols = sorted({(t.col_off, t.width) for t in tiles})
    assert cols == [(0, 256), (stride, 256), (2 * stride, 256), (3 * stride, 791 - 3 * stride)]
    assert all(t.col_off % stride == 0 and t.row_off % stride == 0 for t in tiles)
    assert max(t.col_off + t.width for t in tiles) == 791
    assert max(t.row_off + t.height for t in tiles) == 718


@pytest.mark.parametrize("edge", ["shift", "pad"])
def test_image_smaller_than_a_tile_is_one_tile(edge: str) -> None:
    tiles = plan_grid(79, 71, GridSpec(tile_size=256, edge=edge))  # type: ignore[arg-type]
    assert tiles == [TileWindow("r000c000", 0, 0, 0, 0, 79, 71)]


def test_one_axis_smaller_than_a_tile() -> None:
    tiles = plan_grid(1000, 100, GridSpec(tile_size=256, overlap=0))
    assert {t.height for t in tiles} == {100}
    assert [t.col_off for t in tiles] == [0, 256, 512, 744]


def test_exact_multiples_without_overlap_need_no_shift() -> None:
    tiles = plan_grid(1024, 512, GridSpec(tile_size=256, overlap=0))
    assert len(tiles) == 8
    assert [t.col_off for t in tiles[:4]] == [0, 256, 512, 768]
    assert [t.tile_id for t in tiles[:5]] == [
        "r000c000",
        "r000c001",
        "r000c002",
        "r000c003",
        "r001c000",
    ]


def test_exactly_one_tile() -> None:
    assert len(plan_grid(256, 256, GridSpec(tile_size=256, overlap=0.5))) == 1


def test_ids_widen_past_999_tiles_per_axis() -> None:
    tiles = plan_grid(16 * 1001, 16, GridSpec(tile_size=16, overlap=0))
    assert tiles[0].tile_id == "r0000c0000"
    assert tiles[-1].tile_id == "r0000c1000"


@pytest.mark.parametrize(
    ("width", "height", "spec", "match"),
    [
        (100, 100, GridSpec(tile_size=8), "tile_size"),
        (100, 100, GridSpec(tile_size=100_000), "tile_size"),
        (100, 100, GridSpec(tile_size=64, overlap=64), "overlap of 64 px"),
        (100, 100, GridSpec(tile_size=64, overlap=0.999), "smaller than tile_size"),
        (100, 100, GridSpec(tile_size=64, overlap=-0.1), "overlap must be >= 0"),
        (0, 100, GridSpec(), "at least 1x1"),
        (100, -1, GridSpec(), "at least 1x1"),
        (100, 100, GridSpec(edge="wrap"), "edge"),  # type: ignore[arg-type]
    ],
)
def test_invalid_specs_raise(width: int, height: int, spec: GridSpec, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_grid(width, height, spec)


def test_auto_tile_size_from_resolution() -> None:
    assert auto_tile_size(10_000, 10_000, 0.6) == 512  # NAIP-like
    assert auto_tile_size(10_000, 10_000, 0.15) == 1024  # very fine aerial
    assert auto_tile_size(10_000, 10_000, 30.0) == 256  # Landsat
    assert auto_tile_size(383, 232, 0.15) == 512  # capped by the image's long side


def test_auto_tile_size_from_image_size() -> None:
    assert auto_tile_size(512, 512, None) == 256
    assert auto_tile_size(2000, 2000, None) == 512
    assert auto_tile_size(40_000, 30_000, None) == 1024
    assert auto_tile_size(40_000, 30_000, float("nan")) == 1024
    with pytest.raises(ValueError):
        auto_tile_size(0, 10, None)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 50_000), st.integers(1, 50_000), st.none() | st.floats(0.01, 100))
def test_auto_tile_size_is_a_clamped_multiple_of_256(
    width: int, height: int, resolution: float | None
) -> None:
    size = auto_tile_size(width, height, resolution)
    assert size % 256 == 0 and 256 <= size <= 1024
    assert size < max(width, height) + 256


grids = st.tuples(
    st.integers(1, 700),
    st.integers(1, 700),
    st.integers(16, 200),
    st.one_of(st.floats(0, 0.95), st.integers(1, 199).map(float)),
    st.sampled_from(["shift", "pad"]),
).filter(lambda g: GridSpec(g[2], g[3]).overlap_pixels() < g[2])


def _few_tiles(grid: tuple[int, int, int, float, str]) -> bool:
    """Keep examples small: a stride of 1 px on 700 px would make 490k tiles."""
    width, height, tile, overlap, _ = grid
    stride = tile - GridSpec(tile, overlap).overlap_pixels()
    return (width / stride + 1) * (height / stride + 1) <= 5000


@settings(max_examples=150, deadline=None)
@given(grids.filter(_few_tiles))
def test_grid_properties(grid: tuple[int, int, int, float, str]) -> None:
    width, height, tile, overlap, edge = grid
    spec = GridSpec(tile_size=tile, overlap=overlap, edge=edge)  # type: ignore[arg-type]
    tiles = plan_grid(width, height, spec)

    # windows inside the image; full size in shift mode where the axis allows
    for t in tiles:
        assert t.col_off >= 0 and t.row_off >= 0 and t.width >= 1 and t.height >= 1
        assert t.col_off + t.width <= width and t.row_off + t.height <= height
        if edge == "shift":
            assert t.width == min(tile, width) and t.height == min(tile, height)

    # every pixel covered
    covered = np.zeros((height, width), dtype=bool)
    for t in tiles:
        covered[t.row_off : t.row_off + t.height, t.col_off : t.col_off + t.width] = True
    assert covered.all()

    # ids unique, row-major order
    assert len({t.tile_id for t in tiles}) == len(tiles)
    assert [(t.row, t.col) for t in tiles] == sorted((t.row, t.col) for t in tiles)

    # neighbours overlap by at least the configured pixels
    need = spec.overlap_pixels()
    pos = _by_pos(tiles)
    for (r, c), t in pos.items():
        right = pos.get((r, c + 1))
        if right is not None:
            assert t.col_off + t.width - right.col_off >= need
            assert right.col_off > t.col_off
        below = pos.get((r + 1, c))
        if below is not None:
            assert t.row_off + t.height - below.row_off >= need
            assert below.row_off > t.row_off
