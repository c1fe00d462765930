"""Cross-tile merge: constructed cases, a real two-tile split, and properties over random boxes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from tile_assets.core.errors import TileAssetsError
from tile_assets.core.image import TileImage
from tile_assets.core.merge import MERGED_COUNT, MERGED_TILES, merge_findings, overlapping_pairs
from tile_assets.core.models.classical import ClassicalModel
from tile_assets.core.types import Finding, TileWindow

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"


def f(
    box: tuple[float, float, float, float],
    score: float = 0.9,
    label: str = "car",
    tile_id: str = "t0",
) -> Finding:
    area = (box[2] - box[0]) * (box[3] - box[1])
    return Finding(label=label, score=score, box=box, tile_id=tile_id, area_px=area)



def brute_force_pairs(boxes: np.ndarray, codes: np.ndarray | None) -> dict[tuple[int, int], float]:
    """Every pair (i < j) whose boxes share an area (and code), with that area: O(n^2), obviously right."""
    found = {}
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            if codes is not None and codes[i] != codes[j]:
                continue
            w = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            h = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            if w > 0 and h > 0 and np.isfinite(boxes[[i, j]]).all():
                found[(i, j)] = w * h
    return found


@pytest.mark.parametrize("n_codes", [None, 1, 3, 40])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_overlapping_pairs_are_exactly_the_brute_force_ones(n_codes: int | None, seed: int) -> None:
    """The band sweep (per code) finds every overlapping pair once, touching and empty boxes never, tall boxes too."""
    rng = np.random.default_rng(seed)
    n = 400
    x0, y0 = rng.integers(0, 300, n).astype(float), rng.integers(0, 300, n).astype(float)
    w, h = rng.integers(0, 40, n).astype(float), rng.integers(0, 40, n).astype(float)
    h[:5] = 280.0  # a few tall boxes span many bands
    boxes = np.column_stack([x0, y0, x0 + w, y0 + h])
    boxes[5:10] = boxes[10:15]  # exact duplicates
    boxes[15, 2] = np.inf
    boxes[16, 1] = np.nan
    codes = None if n_codes is None else rng.integers(0, n_codes, n)

    left, right, inter = overlapping_pairs(boxes, codes)

    found = {(int(i), int(j)): float(a) for i, j, a in zip(left, right, inter, strict=True)}
    assert len(found) == len(left)  # each pair once
    assert found == brute_force_pairs(boxes, codes)

# --- constructed cases ------------------------------------------------------


@pytest.mark.parametrize("strategy", ["nms", "greedy_nmm"])
def test_two_overlapping_same_class_boxes_become_one(strategy: str) -> None:
    high, low = f((0, 0, 10, 10), 0.9), f((1, 1, 11, 11), 0.8)
    (out,) = merge_findings([low, high], strategy=strategy, metric="iou", threshold=0.5)
    assert out.score == 0.9
    expected = (0, 0, 10, 10) if strategy == "nms" else (0, 0, 11, 11)
    assert out.box == expected


def test_different_classes_merge_only_when_class_agnostic() -> None:
    car, truck = f((0, 0, 10, 10), 0.9, "car"), f((1, 1, 11, 11), 0.8, "truck")
    assert len(merge_findings([car, truck], metric="iou")) == 2
    (out,) = merge_findings([car, truck], metric="iou", class_agnostic=True)
    assert out.label == "car"  # the higher score's label


def test_ios_matches_a_small_box_inside_a_big_one_where_iou_does_not() -> None:
    big, small = f((0, 0, 100, 100), 0.9), f((40, 40, 50, 50), 0.95)
    assert len(merge_findings([big, small], strategy="nms", metric="iou")) == 2
    (kept,) = merge_findings([big, small], strategy="nms", metric="ios")
    assert kept == small  # highest score wins under NMS
    (merged,) = merge_findings([big, small], strategy="greedy_nmm", metric="ios")
    assert merged.box == (0, 0, 100, 100) and merged.score == 0.95


def test_object_split_by_a_tile_border_merges_back_into_one() -> None:
    # Tiles of 512 px overlapping by 102 px: tile a covers x 0..512, tile b x 410..922.
    # An object at x 380..560 comes back as two partial boxes, each cut at a tile edge.
    from_a = f((380, 40, 512, 80), 0.7, "bright_object", "a")
    from_b = f((410, 40, 560, 80), 0.8, "bright_object", "b")
    (out,) = merge_findings([from_a, from_b], strategy="greedy_nmm", metric="ios")
    assert out.box == (380, 40, 560, 80)
    assert out.score == 0.8 and out.tile_id == "b"
    assert out.attributes[MERGED_COUNT] == 2
    assert out.attributes[MERGED_TILES] == ["a", "b"]
    assert out.area_px == min(from_a.area_px + from_b.area_px, 180 * 40)


def test_touching_boxes_and_zero_area_boxes_never_match() -> None:
    left, right = f((0, 0, 10, 10)), f((10, 0, 20, 10))
    flat = f((5, 5, 5, 9))
    assert len(merge_findings([left, right, flat], metric="ios", threshold=0.01)) == 3


def test_none_returns_the_input_and_empty_stays_empty() -> None:
    items = [f((1, 1, 11, 11), 0.8), f((0, 0, 10, 10), 0.9)]
    assert merge_findings(items, strategy="none") == items
    assert merge_findings([], strategy="greedy_nmm") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"strategy": "wbf"}, "strategy"),
        ({"metric": "giou"}, "metric"),
    ],
)
def test_bad_arguments_raise_typed_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(TileAssetsError, match=message):
        merge_findings([f((0, 0, 1, 1))], **kwargs)  # type: ignore[arg-type]


def test_non_finite_boxes_raise() -> None:
    with pytest.raises(TileAssetsError, match="non-finite"):
        merge_findings([f((0, 0, 1, 1)), f((0, 0, float("nan"), 1))])


# --- real tiles -------------------------------------------------------------


def _tile(path: Path, col_off: int, width: int) -> TileImage:
    with rasterio.open(path) as ds:
        data = ds.read(window=Window(col_off, 0, width, ds.height), masked=True)
        window = TileWindow(f"c{col_off}", 0, col_off // width, col_off, 0, width, ds.height)
    return TileImage(window, data, ("red", "green", "blue"), 255.0)


def test_classical_findings_from_two_overlapping_tiles_merge_in_scene_pixels() -> None:
    path = INBOX / "colorado_aerial_cl1.tif"
    tiles = [_tile(path, 0, 240), _tile(path, 143, 240)]  # 97 px of overlap
    scene: list[Finding] = []
    for tile, pred in zip(tiles, ClassicalModel().predict(tiles), strict=True):
        dx, dy = tile.window.col_off, tile.window.row_off
        scene += [
            replace(g, box=(g.box[0] + dx, g.box[1] + dy, g.box[2] + dx, g.box[3] + dy))
            for g in pred.findings
        ]
    merged = merge_findings(scene, strategy="greedy_nmm", metric="ios", threshold=0.5)
    assert len(merged) < len(scene)
    assert any(len(g.attributes.get(MERGED_TILES, [])) == 2 for g in merged)
    assert all(0 <= g.box[0] < g.box[2] <= 383 for g in merged)


# --- properties -------------------------------------------------------------


def _finding(
    label: str, score: float, x0: int, y0: int, w: int, h: int, tile_id: str, k: int
) -> Finding:
    return Finding(
        label=label,
        score=score,
        box=(float(x0), float(y0), float(x0 + w), float(y0 + h)),
        tile_id=tile_id,
        area_px=float(w * h),
        attributes={"k": k} if k else {},
    )


# Few labels, scores and tiles on a small canvas, so overlaps and exact ties are common.
findings = st.lists(
    st.builds(
        _finding,
        st.sampled_from(["a", "b"]),
        st.sampled_from([0.25, 0.5, 0.75, 1.0]),
        st.integers(0, 60),
        st.integers(0, 60),
        st.integers(1, 30),
        st.integers(1, 30),
        st.sampled_from(["t0", "t1"]),
        st.integers(0, 2),
    ),
    max_size=40,
)
strategies = st.sampled_from(["nms", "greedy_nmm"])
metrics = st.sampled_from(["iou", "ios"])
thresholds = st.sampled_from([0.1, 0.5, 0.9, 1.0])


@settings(max_examples=100, deadline=None)
@given(findings, strategies, metrics, thresholds, st.booleans())
def test_count_never_increases(
    items: list[Finding], strategy: str, metric: str, threshold: float, agnostic: bool
) -> None:
    out = merge_findings(items, strategy, metric, threshold, agnostic)  # type: ignore[arg-type]
    assert len(out) <= len(items)
    assert bool(out) == bool(items)


@settings(max_examples=100, deadline=None)
@given(findings, strategies, metrics, thresholds, st.booleans(), st.randoms())
def test_result_does_not_depend_on_input_order(
    items: list[Finding],
    strategy: str,
    metric: str,
    threshold: float,
    agnostic: bool,
    rnd: object,
) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    args = (strategy, metric, threshold, agnostic)
    assert merge_findings(shuffled, *args) == merge_findings(items, *args)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(findings, metrics, thresholds, st.booleans())
def test_nms_is_idempotent_and_a_subset(
    items: list[Finding], metric: str, threshold: float, agnostic: bool
) -> None:
    once = merge_findings(items, "nms", metric, threshold, agnostic)  # type: ignore[arg-type]
    assert merge_findings(once, "nms", metric, threshold, agnostic) == once  # type: ignore[arg-type]
    assert all(any(g == i for i in items) for g in once)


@settings(max_examples=100, deadline=None)
@given(findings, metrics, thresholds)
def test_greedy_nmm_covers_every_input_and_keeps_counts(
    items: list[Finding], metric: str, threshold: float
) -> None:
    out = merge_findings(items, "greedy_nmm", metric, threshold)  # type: ignore[arg-type]
    boxes = np.array([g.box for g in out]).reshape(-1, 4)
    for item in items:
        inside = (
            (boxes[:, 0] <= item.box[0])
            & (boxes[:, 1] <= item.box[1])
            & (boxes[:, 2] >= item.box[2])
            & (boxes[:, 3] >= item.box[3])
        )
        assert any(inside[k] and out[k].label == item.label for k in range(len(out)))
    assert sum(g.attributes.get(MERGED_COUNT, 1) for g in out) == len(items)
    # A second pass may merge grown boxes further, but never adds any.
    again = merge_findings(out, "greedy_nmm", metric, threshold)  # type: ignore[arg-type]
    assert len(again) <= len(out)
    assert sum(g.attributes.get(MERGED_COUNT, 1) for g in again) == len(items)
