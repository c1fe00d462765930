"""Correctness at tile borders: cut views give way to whole ones, and tiling does not change the answer.

Constructed boxes pin down `is_cut` and `prefer_whole`; real images then go
through the pipeline's core path (grid, tile reader, model, offsets, merge):
an object straddling a tile border is counted once; the merged result is
the same at tile sizes 256, 512 and 1024; the full-image pass recovers
objects larger than a tile.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tile_assets.core.borders import is_cut, prefer_whole
from tile_assets.core.errors import TileAssetsError
from tile_assets.core.merge import merge_findings
from tile_assets.core.models.classical import ClassicalModel
from tile_assets.core.types import Box, Finding, GridSpec, TileWindow
from tile_assets_tests.models.pipeline import SceneRun, run_scene, untiled_findings

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"
DRONE = INBOX / "pix4d_drone_rgba.tif"
NAIP = INBOX / "naip_2018.tif"

# Two tiles of a 200 x 100 scene overlapping by 40 px (x 80..120).
WIDTH, HEIGHT = 200, 100
LEFT = TileWindow("r000c000", 0, 0, 0, 0, 120, 100)
RIGHT = TileWindow("r000c001", 0, 1, 80, 0, 120, 100)
WINDOWS = {w.tile_id: w for w in (LEFT, RIGHT)}


def finding(box: Box, tile: TileWindow | None, label: str = "car", score: float = 0.8) -> Finding:
    return Finding(
        label=label,
        score=score,
        box=box,
        tile_id=tile.tile_id if tile else "overview",
        area_px=(box[2] - box[0]) * (box[3] - box[1]),
    )


def iou(a: Box, b: Box) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# --- constructed boxes --------------------------------------------------------


def test_a_box_touching_an_inner_tile_edge_is_cut_one_on_the_scene_border_is_not() -> None:
    assert is_cut((100, 10, 120, 30), LEFT, WIDTH, HEIGHT, margin_px=0)
    assert not is_cut((100, 10, 119, 30), LEFT, WIDTH, HEIGHT, margin_px=0)
    assert is_cut((100, 10, 119, 30), LEFT, WIDTH, HEIGHT, margin_px=1)
    # x = 0, y = 0 and y = 100 are the scene's own borders: nothing lies beyond them.
    assert not is_cut((0, 0, 30, 100), LEFT, WIDTH, HEIGHT, margin_px=1)
    assert not is_cut((150, 0, 200, 100), RIGHT, WIDTH, HEIGHT, margin_px=1)
    assert is_cut((80, 40, 90, 50), RIGHT, WIDTH, HEIGHT, margin_px=0)


def test_the_cut_piece_gives_way_to_the_whole_view_from_the_overlapping_tile() -> None:
    piece = finding((100, 10, 120, 30), LEFT)
    whole = finding((100, 10, 140, 30), RIGHT)
    assert prefer_whole([piece, whole], WINDOWS, WIDTH, HEIGHT) == [whole]


def test_a_box_only_merge_can_keep_the_piece_where_prefer_whole_keeps_the_object() -> None:
    # The piece scores higher (a truncated object can look more confident); IoU is exactly 0.5.
    piece = finding((100, 10, 120, 30), LEFT, score=0.9)
    whole = finding((100, 10, 140, 30), RIGHT, score=0.8)
    assert merge_findings([piece, whole], "nms", "iou", 0.5) == [piece]
    fixed = merge_findings(prefer_whole([piece, whole], WINDOWS, WIDTH, HEIGHT), "nms", "iou", 0.5)
    assert fixed == [whole]


def test_pieces_nothing_whole_covers_are_kept_for_the_merge() -> None:
    # An object wider than the overlap: both tiles see a piece, neither sees it whole.
    left_piece = finding((60, 10, 120, 30), LEFT)
    right_piece = finding((80, 10, 150, 30), RIGHT)
    kept = prefer_whole([left_piece, right_piece], WINDOWS, WIDTH, HEIGHT)
    assert kept == [left_piece, right_piece]
    (merged,) = merge_findings(kept, "greedy_nmm", "ios", 0.5)
    assert merged.box == (60, 10, 150, 30)


def test_labels_must_agree_unless_class_agnostic_and_containment_must_hold() -> None:
    piece = finding((100, 10, 120, 30), LEFT, label="car")
    truck = finding((100, 10, 140, 30), RIGHT, label="truck")
    assert prefer_whole([piece, truck], WINDOWS, WIDTH, HEIGHT) == [piece, truck]
    assert prefer_whole([piece, truck], WINDOWS, WIDTH, HEIGHT, class_agnostic=True) == [truck]
    # Only half of this piece lies inside the whole box: a different object.
    straddling = finding((100, 40, 120, 60), LEFT)
    beside = finding((110, 40, 140, 60), RIGHT)
    assert prefer_whole([straddling, beside], WINDOWS, WIDTH, HEIGHT) == [straddling, beside]


def test_full_image_pass_findings_count_as_whole_views() -> None:
    piece = finding((100, 10, 120, 30), LEFT)
    overview = finding((99, 9, 141, 31), None)
    assert prefer_whole([piece, overview], WINDOWS, WIDTH, HEIGHT) == [overview]


def test_bad_arguments_raise_typed_errors() -> None:
    with pytest.raises(TileAssetsError, match="containment"):
        prefer_whole([], WINDOWS, WIDTH, HEIGHT, containment=0.0)
    with pytest.raises(TileAssetsError, match="margin_px"):
        prefer_whole([], WINDOWS, WIDTH, HEIGHT, margin_px=-1)


def _covered_share(piece: Box, whole: Box) -> float:
    iw = max(0.0, min(piece[2], whole[2]) - max(piece[0], whole[0]))
    ih = max(0.0, min(piece[3], whole[3]) - max(piece[1], whole[1]))
    area = (piece[2] - piece[0]) * (piece[3] - piece[1])
    return iw * ih / area if area > 0 else 0.0


def _views(x0: int, y0: int, w: int, h: int, tile: str, label: str) -> Finding:
    return finding((x0, y0, x0 + w, y0 + h), WINDOWS.get(tile), label)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.builds(
            _views,
            st.integers(60, 140),
            st.integers(0, 90),
            st.integers(0, 40),
            st.integers(0, 20),
            st.sampled_from([*WINDOWS, "overview"]),
            st.sampled_from(["car", "truck"]),
        ),
        max_size=30,
    ),
    st.sampled_from([0.0, 1.0]),
    st.sampled_from([0.5, 0.9, 1.0]),
    st.booleans(),
)
def test_prefer_whole_drops_exactly_the_cut_views_some_whole_view_covers(
    items: list[Finding], margin: float, containment: float, agnostic: bool
) -> None:
    """Against the definition, checked over every pair."""
    cut = [f.tile_id in WINDOWS and is_cut(f.box, WINDOWS[f.tile_id], WIDTH, HEIGHT, margin) for f in items]
    expected = [
        f
        for f, f_cut in zip(items, cut, strict=True)
        if not f_cut
        or not any(
            not g_cut
            and (agnostic or g.label == f.label)
            and _covered_share(f.box, g.box) >= containment
            for g, g_cut in zip(items, cut, strict=True)
        )
    ]
    kept = prefer_whole(
        items, WINDOWS, WIDTH, HEIGHT,
        margin_px=margin, containment=containment, class_agnostic=agnostic,
    )
    assert kept == expected


# --- a real object straddling a tile border ---------------------------------------


@pytest.fixture(scope="module")
def drone_straddle() -> tuple[SceneRun, list[Finding]]:
    """The default classical model on the drone image, 256 px tiles overlapping by 64 px."""
    model = ClassicalModel()
    run = run_scene(DRONE, model, GridSpec(tile_size=256, overlap=64))
    return run, untiled_findings(DRONE, model)


def test_an_object_straddling_a_tile_border_is_counted_once_with_its_whole_box(
    drone_straddle: tuple[SceneRun, list[Finding]],
) -> None:
    run, reference = drone_straddle
    windows = run.windows
    width, height = run.scene.width, run.scene.height
    straddling = 0
    for obj in reference:
        views = [f for f in run.raw if f.label == obj.label and iou(f.box, obj.box) > 0.3]
        cut = [f for f in views if is_cut(f.box, windows[f.tile_id], width, height, 1.0)]
        whole = [f for f in views if f.box == obj.box and f not in cut]
        if not (cut and whole):
            continue
        straddling += 1
        matches = [f for f in run.merged if f.label == obj.label and iou(f.box, obj.box) > 0.5]
        assert len(matches) == 1, (obj, matches)
        assert iou(matches[0].box, obj.box) >= 0.9, (obj, matches[0])
    # Roofs, tarps and plots across the 256 px grid lines of this scene.
    assert straddling >= 10


# --- the same merged result at tile sizes 256, 512 and 1024 -----------------------

# Vegetation patches only (object_contrast=1 turns off the contrast objects, whose
# local background depends on where the tile edge is), no tile-relative area cap,
# no fill filter (a piece can pass it where its whole object does not). Then every
# pixel's class is independent of the tiling; with exg_threshold 0.3 every patch
# on this scene is smaller than the 160 px overlap, so some tile sees each whole.
PIXELWISE = ClassicalModel(
    object_contrast=1.0,
    exg_threshold=0.3,
    min_fill=0.0,
    max_area_fraction=1.0,
    max_objects_per_tile=100_000,
)
OVERLAP_PX = 160


@pytest.fixture(scope="module")
def by_tile_size() -> dict[int, SceneRun]:
    return {
        size: run_scene(DRONE, PIXELWISE, GridSpec(tile_size=size, overlap=OVERLAP_PX))
        for size in (256, 512, 1024)
    }


def boxes(findings: list[Finding]) -> set[tuple[str, Box, float]]:
    return {(f.label, f.box, f.score) for f in findings}


def merged_untiled(path: Path, model: ClassicalModel) -> list[Finding]:
    """The reference: the model on the whole image as one tile, merged as the pipeline merges."""
    return merge_findings(untiled_findings(path, model), "greedy_nmm", "ios", 0.5)


def test_merged_findings_are_identical_at_tile_sizes_256_512_and_1024(
    by_tile_size: dict[int, SceneRun],
) -> None:
    reference = boxes(merged_untiled(DRONE, PIXELWISE))
    assert len(reference) > 100
    tiles = {size: len(run.manifest) for size, run in by_tile_size.items()}
    assert tiles[256] > tiles[512] > tiles[1024] == 1
    raw = {size: len(run.raw) for size, run in by_tile_size.items()}
    assert raw[256] > raw[512] > raw[1024]  # overlaps see the same patches many times
    for size, run in by_tile_size.items():
        assert boxes(run.merged) == reference, size
        # Some patch really straddles a border at this size: its views were merged.
        assert len(run.raw) == len(run.merged) or any(
            f.attributes.get("merged_count", 1) > 1 for f in run.merged
        )


def test_without_preferring_whole_views_the_merge_alone_depends_on_the_tile_size() -> None:
    """Why `prefer_whole` exists: NMM grows a whole box by pieces that also touch neighbours."""
    run = run_scene(
        DRONE, PIXELWISE, GridSpec(tile_size=256, overlap=OVERLAP_PX), border_aware=False
    )
    assert boxes(run.merged) != boxes(merged_untiled(DRONE, PIXELWISE))


# --- the full-image pass ------------------------------------------------------------


@pytest.fixture(scope="module")
def naip_small_tiles() -> dict[bool, SceneRun]:
    """NAIP's fields are far larger than 128 px tiles: tiles only ever see them in pieces."""
    model = ClassicalModel(max_area_fraction=1.0, min_fill=0.0)
    spec = GridSpec(tile_size=128, overlap=0.2)
    return {flag: run_scene(NAIP, model, spec, full_image_pass=flag) for flag in (False, True)}


def test_full_image_pass_recovers_objects_larger_than_a_tile(
    naip_small_tiles: dict[bool, SceneRun],
) -> None:
    model = ClassicalModel(max_area_fraction=1.0, min_fill=0.0)
    largest = sorted(merged_untiled(NAIP, model), key=lambda f: -f.area_px)[:5]
    assert largest[0].area_px > 128 * 128 * 4

    def best(run: SceneRun, obj: Finding) -> float:
        return max((iou(f.box, obj.box) for f in run.merged if f.label == obj.label), default=0.0)

    with_pass = [best(naip_small_tiles[True], obj) for obj in largest]
    tiles_only = [best(naip_small_tiles[False], obj) for obj in largest]
    assert all(v >= 0.99 for v in with_pass), with_pass
    assert sum(v >= 0.9 for v in tiles_only) <= 2, tiles_only
    overview = [f for f in naip_small_tiles[True].merged if f.tile_id == "overview"]
    assert overview and all(f.model == "classical" and f.model_version for f in overview)
