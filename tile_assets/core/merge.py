"""Merge findings that overlapping tiles report twice, or that a tile border cut in two.

Tiles overlap, so an object near a border is found by two tiles, and one
larger than the overlap comes back as two partial boxes. `merge_findings`
groups matching boxes greedily, highest score first (SAHI's NMS and greedy
NMM), comparing only boxes an STRtree says are near each other so the cost
grows about linearly with the number of findings, not quadratically.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from itertools import chain
from typing import Any, get_args

import numpy as np
import shapely

from tile_assets.core.errors import TileAssetsError
from tile_assets.core.types import Finding, MatchMetric, MergeStrategy

log = logging.getLogger(__name__)

MERGED_COUNT = "merged_count"
"""Attribute of a greedy-NMM result: how many input findings it stands for."""
MERGED_TILES = "merged_tiles"
"""Attribute of a greedy-NMM result: sorted ids of the tiles its members came from."""


def merge_findings(
    findings: Sequence[Finding],
    strategy: MergeStrategy = "greedy_nmm",
    metric: MatchMetric = "ios",
    threshold: float = 0.5,
    class_agnostic: bool = False,
) -> list[Finding]:
    """Collapse findings whose boxes match, returning them highest score first.

    Two boxes match when `metric` (IoU = intersection / union, IoS =
    intersection / smaller area) is at least `threshold` and, unless
    `class_agnostic`, their labels are equal; zero-area boxes never match.
    Findings are first put in a total order, (-score, label, box, then the
    remaining fields), so the result does not depend on the input order.
    Walking that order, each finding not yet taken keeps itself and takes
    every untaken finding matching it.

    - "nms": the keeper is returned as is; the taken ones are dropped. No two
      results match, so applying it again changes nothing.
    - "greedy_nmm": the keeper absorbs the taken ones: its box becomes their
      union, its score stays the group's maximum (the keeper's), `area_px`
      becomes the members' summed area capped at the union box area (an
      upper bound: the same pixels seen by two overlapping tiles count
      twice), and attributes gain `merged_count` and `merged_tiles`. A
      union box can newly match another result, so a second pass may merge
      further (it is idempotent only when no two results match).
    - "none": the input, unchanged, as a list.

    The result is never longer than the input.
    """
    if strategy == "none":
        return list(findings)
    if strategy not in get_args(MergeStrategy):
        raise TileAssetsError("merge_findings", f"unknown strategy {strategy!r}")
    if metric not in get_args(MatchMetric):
        raise TileAssetsError("merge_findings", f"unknown metric {metric!r}")
    if not 0.0 < threshold <= 1.0:
        raise TileAssetsError("merge_findings", f"threshold {threshold!r} outside (0, 1]")

    if not findings:
        return []
    ordered, boxes, codes = _total_order(findings)
    left, right = _matching_pairs(boxes, None if class_agnostic else codes, metric, threshold)
    keepers, absorbed = _greedy_groups(len(ordered), left, right)
    log.debug(
        "merge %s/%s@%s: %d findings, %d matching pairs, %d kept",
        strategy,
        metric,
        threshold,
        len(ordered),
        len(left),
        len(keepers),
    )
    if strategy == "nms":
        return [ordered[k] for k in keepers]
    return _absorb_groups(ordered, boxes, keepers, absorbed)


def _total_order(findings: Sequence[Finding]) -> tuple[list[Finding], np.ndarray, np.ndarray]:
    """Findings in a total order, with their boxes (n, 4) and label codes in that order.

    The order is (-score, label, box), then the remaining fields for exact
    ties, so equal inputs in any order give equal outputs. The main sort runs
    in numpy; only tied runs (rare) are sorted in Python.
    """
    n = len(findings)
    scores = np.fromiter((f.score for f in findings), dtype=np.float64, count=n)
    boxes = np.fromiter(
        chain.from_iterable(f.box for f in findings), dtype=np.float64, count=4 * n
    ).reshape(n, 4)
    if not (np.isfinite(scores).all() and np.isfinite(boxes).all()):
        raise TileAssetsError("merge_findings", "a finding has a non-finite score or box")
    labels = [f.label for f in findings]
    rank = {label: i for i, label in enumerate(sorted(set(labels)))}
    codes = np.fromiter((rank[label] for label in labels), dtype=np.int64, count=n)
    order = np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], codes, -scores))
    scores, boxes, codes = scores[order], boxes[order], codes[order]
    ordered = [findings[i] for i in order.tolist()]

    tie_next = (
        (scores[1:] == scores[:-1])
        & (codes[1:] == codes[:-1])
        & (boxes[1:] == boxes[:-1]).all(axis=1)
    )
    if tie_next.any():
        # Runs of equal (score, label, box): start where a tie begins, end after it stops.
        edges = np.diff(np.concatenate(([0], tie_next.astype(np.int8), [0])))
        starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) + 1
        for start, stop in zip(starts.tolist(), stops.tolist(), strict=True):
            ordered[start:stop] = sorted(ordered[start:stop], key=_tie_key)
    return ordered, boxes, codes


def _tie_key(f: Finding) -> tuple[Any, ...]:
    return (
        f.tile_id,
        f.area_px,
        f.model,
        f.model_version,
        json.dumps(f.attributes, sort_keys=True, default=str),
    )


def _matching_pairs(
    boxes: np.ndarray, codes: np.ndarray | None, metric: MatchMetric, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j), sorted, of boxes that match; `codes` restricts pairs to one label.

    The STRtree returns only pairs whose boxes touch, so the exact metric is
    computed on a few candidates per box instead of on all n^2 pairs.
    """
    geoms = shapely.box(boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3])
    left, right = shapely.STRtree(geoms).query(geoms)
    keep = left < right
    if codes is not None:
        keep &= codes[left] == codes[right]
    left, right = left[keep], right[keep]

    a, b = boxes[left], boxes[right]
    inter_w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    inter_h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    sides = np.clip(boxes[:, 2:] - boxes[:, :2], 0, None)
    areas = sides[:, 0] * sides[:, 1]
    area_a, area_b = areas[left], areas[right]
    denom = area_a + area_b - inter if metric == "iou" else np.minimum(area_a, area_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = np.where(denom > 0, inter / denom, 0.0)
    match = (inter > 0) & (value >= threshold)
    left, right = left[match], right[match]
    order = np.lexsort((right, left))
    return left[order], right[order]


def _greedy_groups(
    n: int, left: np.ndarray, right: np.ndarray
) -> tuple[list[int], dict[int, list[int]]]:
    """Keepers in order, and what each keeper took: every untaken index takes its untaken matches.

    Pairs come sorted by (left, right) with left < right, so by the time the
    pairs of index i are reached, every index that could take i (all < i) has
    been settled and `taken[i]` is final.
    """
    taken = [False] * n
    absorbed: dict[int, list[int]] = {}
    for i, j in zip(left.tolist(), right.tolist(), strict=True):
        if taken[i] or taken[j]:
            continue
        taken[j] = True
        absorbed.setdefault(i, []).append(j)
    return [i for i in range(n) if not taken[i]], absorbed


def _absorb_groups(
    ordered: list[Finding],
    boxes: np.ndarray,
    keepers: list[int],
    absorbed: dict[int, list[int]],
) -> list[Finding]:
    """Greedy NMM: each keeper grown to the union of the boxes it took, areas summed and capped.

    Union boxes and summed areas are computed for all groups at once in numpy;
    only the groups that took something build a new `Finding`.
    """
    owner = np.arange(len(ordered))
    for k, taken in absorbed.items():
        owner[taken] = k
    lows = np.full((len(ordered), 2), np.inf)
    highs = np.full((len(ordered), 2), -np.inf)
    np.minimum.at(lows, owner, boxes[:, :2])
    np.maximum.at(highs, owner, boxes[:, 2:])
    areas = np.bincount(
        owner, weights=[f.area_px for f in ordered], minlength=len(ordered)
    ).tolist()
    unions = np.hstack([lows, highs]).tolist()

    out: list[Finding] = []
    for k in keepers:
        keeper = ordered[k]
        if k not in absorbed:
            out.append(keeper)
            continue
        count = 0
        tiles: set[str] = set()
        for f in (keeper, *(ordered[j] for j in absorbed[k])):
            count += int(f.attributes.get(MERGED_COUNT, 1))
            tiles.update(f.attributes.get(MERGED_TILES, (f.tile_id,) if f.tile_id else ()))
        x0, y0, x1, y1 = unions[k]
        out.append(
            Finding(
                label=keeper.label,
                score=keeper.score,
                box=(x0, y0, x1, y1),
                tile_id=keeper.tile_id,
                area_px=min(areas[k], (x1 - x0) * (y1 - y0)),
                model=keeper.model,
                model_version=keeper.model_version,
                attributes={
                    **keeper.attributes,
                    MERGED_COUNT: count,
                    MERGED_TILES: sorted(tiles),
                },
            )
        )
    return out
