"""Merge findings that overlapping tiles report twice, or that a tile border cut in two.

Tiles overlap, so an object near a border is found by two tiles, and one
larger than the overlap comes back as two partial boxes. `merge_findings`
groups matching boxes greedily, highest score first (SAHI's NMS and greedy
NMM). Everything after reading the findings runs on arrays: overlapping
pairs come from a sweep over horizontal bands, so the cost grows about
linearly with the number of findings, and the greedy pass settles boxes in
rounds over the pair arrays instead of one pair at a time in Python.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from itertools import chain
from typing import Any, get_args

import numpy as np

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
    order, boxes, codes = _total_order(findings)
    owner = greedy_owners(boxes, None if class_agnostic else codes, metric, threshold)
    keepers = np.flatnonzero(owner == np.arange(len(order)))
    log.debug(
        "merge %s/%s@%s: %d findings, %d kept", strategy, metric, threshold, len(order), len(keepers)
    )
    if strategy == "nms":
        return [findings[i] for i in order[keepers].tolist()]
    return _absorb_groups(findings, order, boxes, owner, keepers)


def greedy_owners(
    boxes: np.ndarray, codes: np.ndarray | None, metric: MatchMetric, threshold: float
) -> np.ndarray:
    """The greedy grouping on arrays: for each box, the position of the keeper it goes to.

    `boxes` (n, 4) are in visiting order, best first; with `codes` (n,),
    only boxes of equal code match. Walking that order, a box not yet taken
    is a keeper (its own owner) and takes every untaken later box matching
    it: keepers are NMS's result, owners are greedy NMM's groups.
    """
    left, right = _matching_pairs(boxes, codes, metric, threshold)
    return _owners(len(boxes), left, right)


def _total_order(findings: Sequence[Finding]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of `findings` in a total order, with their boxes (n, 4) and label codes in that order.

    The order is (-score, label, box), then the remaining fields for exact
    ties, so equal inputs in any order give equal outputs. Only exact ties
    (rare) are sorted in Python.
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
    codes = np.fromiter(map(rank.__getitem__, labels), dtype=np.int64, count=n)

    order = visiting_order(scores, boxes, codes)
    scores, boxes, codes = scores[order], np.take(boxes, order, axis=0), codes[order]

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
            run_positions = order[start:stop].tolist()
            order[start:stop] = sorted(run_positions, key=lambda i: _tie_key(findings[i]))
    return order, boxes, codes


def visiting_order(scores: np.ndarray, boxes: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Positions in the order greedy merging visits boxes: score (highest first), code, box.

    One argsort by score; only runs of equal scores are sorted again by
    (code, box), which is much cheaper than a full sort on six keys. Boxes
    equal in all three come in no particular order.
    """
    order = np.argsort(-scores)
    ranked = scores[order]
    new_score = np.concatenate(([True], ranked[1:] != ranked[:-1]))
    if not new_score.all():
        in_run = ~new_score
        in_run[:-1] |= ~new_score[1:]
        at = np.flatnonzero(in_run)
        sub = order[at]
        run = np.cumsum(new_score)[at]
        b = boxes[sub]
        order[at] = sub[np.lexsort((b[:, 3], b[:, 2], b[:, 1], b[:, 0], codes[sub], run))]
    return order


def _tie_key(f: Finding) -> tuple[Any, ...]:
    return (
        f.tile_id,
        f.area_px,
        f.model,
        f.model_version,
        json.dumps(f.attributes, sort_keys=True, default=str),
    )


MAX_BANDS_PER_BOX = 4
"""Band entries per box (on average) before the bands are made taller."""


def _ragged_arange(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for every c in `counts`, concatenated."""
    starts = np.cumsum(counts) - counts
    ranges: np.ndarray = np.arange(int(counts.sum())) - np.repeat(starts, counts)
    return ranges


def _matching_pairs(
    boxes: np.ndarray, codes: np.ndarray | None, metric: MatchMetric, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (i < j), each once, of boxes that match; with `codes`, of equal code only.

    Candidates come from a sweep over horizontal bands (twice the median
    box height): every box enters each band it spans, sorted by left edge,
    and pairs with the boxes of its band whose left edge lies before its
    right edge, which is exactly an overlap in x. A pair is kept only in
    the band holding the top of its intersection, so it comes out once.
    Each code gets bands of its own, so boxes of different codes never meet.
    """
    x0, y0, x1, y1 = np.ascontiguousarray(boxes.T)
    valid = (x1 > x0) & (y1 > y0)  # zero-area boxes never match
    n = int(valid.sum())
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty
    height = max(2.0 * float(np.median((y1 - y0)[valid])), float(np.finfo(np.float64).tiny))
    top = float(np.where(valid, y0, np.inf).min())
    # From here on, valid boxes are numbered by rank of left edge (invalid ones sort last).
    by_x = np.argsort(np.where(valid, x0, np.inf))[:n]
    x0, y0, x1, y1 = (np.take(c, by_x) for c in (x0, y0, x1, y1))
    ends = np.searchsorted(x0, x1)  # ranks below this start left of the right edge
    while True:
        first = ((y0 - top) // height).astype(np.int64)
        spans = ((y1 - top) // height).astype(np.int64) - first + 1
        if spans.sum() <= MAX_BANDS_PER_BOX * n:
            break
        height *= 2.0  # a few very tall boxes: coarser bands rather than millions of entries
    if codes is not None:
        first += codes[by_x] * (int((first + spans).max()) + 1)

    key = np.repeat(first, spans) + _ragged_arange(spans)
    key *= n
    key += np.repeat(np.arange(n), spans)
    key.sort()
    entry_band, entry = np.divmod(key, n)
    partners = np.searchsorted(key, entry_band * n + ends[entry]) - np.arange(len(key)) - 1
    at = np.repeat(np.arange(len(key)), partners)
    left = entry[at]
    right = entry[at + 1 + _ragged_arange(partners)]
    once = np.maximum(first[left], first[right]) == entry_band[at]
    left, right = left[once], right[once]

    inter_h = np.minimum(y1[left], y1[right]) - np.maximum(y0[left], y0[right])
    overlap = inter_h > 0
    left, right, inter_h = left[overlap], right[overlap], inter_h[overlap]
    inter = (np.minimum(x1[left], x1[right]) - np.maximum(x0[left], x0[right])) * inter_h
    areas = (x1 - x0) * (y1 - y0)
    area_a, area_b = areas[left], areas[right]
    denom = area_a + area_b - inter if metric == "iou" else np.minimum(area_a, area_b)
    match = inter / denom >= threshold
    left, right = by_x[left[match]], by_x[right[match]]
    return np.minimum(left, right), np.maximum(left, right)


MAX_VECTOR_ROUNDS = 64
"""Rounds of the vectorized greedy pass before the rest is settled pair by pair."""


def _owners(n: int, left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """For each index, the keeper that takes it (itself for a keeper), given matching pairs (i < j).

    Greedy in index order: an index is a keeper unless a smaller keeper
    matches it, and then the smallest such keeper takes it. Settled in
    rounds over the pair arrays: whatever a keeper matches is taken; an
    index whose smaller matches are all taken is a keeper. Each round
    settles at least the smallest open index, and real detections settle
    in a handful of rounds; long chains of overlapping boxes finish in a
    plain loop.
    """
    open_, keeper, taken = 0, 1, 2
    state = np.full(n, keeper, dtype=np.int8)
    state[right] = open_
    lo, hi = left, right
    for _ in range(MAX_VECTOR_ROUNDS):
        state[hi[state[lo] == keeper]] = taken
        still = state[hi] == open_
        lo, hi = lo[still], hi[still]
        if not len(lo):
            break
        blocked = np.zeros(n, dtype=bool)
        blocked[hi[state[lo] == open_]] = True
        state[(state == open_) & ~blocked] = keeper
    else:
        order = np.lexsort((hi, lo))
        for i, j in zip(lo[order].tolist(), hi[order].tolist(), strict=True):
            # Every pair (k, i) came before (i, j): i is a keeper unless one took it.
            if state[i] == open_:
                state[i] = keeper
            if state[i] == keeper and state[j] == open_:
                state[j] = taken
        state[state == open_] = keeper

    owner = np.arange(n)
    by_keeper = state[left] == keeper
    smallest = np.full(n, n)
    np.minimum.at(smallest, right[by_keeper], left[by_keeper])
    is_taken = state == taken
    owner[is_taken] = smallest[is_taken]
    return owner


def _absorb_groups(
    findings: Sequence[Finding],
    order: np.ndarray,
    boxes: np.ndarray,
    owner: np.ndarray,
    keepers: np.ndarray,
) -> list[Finding]:
    """Greedy NMM: each keeper grown to the union of the boxes it took, areas summed and capped.

    Union boxes are computed for all groups at once in numpy; only the
    groups that took something build a new `Finding`.
    """
    n = len(order)
    union = boxes.copy()
    for side, reduce in enumerate((np.minimum, np.minimum, np.maximum, np.maximum)):
        reduce.at(union[:, side], owner, boxes[:, side])
    grown = np.flatnonzero(np.bincount(owner, minlength=n) > 1)
    # Grouped by keeper, each group in visiting order: the keeper (smallest) first.
    by_owner = np.argsort(owner, kind="stable")
    grouped = owner[by_owner]
    starts = np.searchsorted(grouped, grown).tolist()
    ends = np.searchsorted(grouped, grown, side="right").tolist()
    members = order[by_owner].tolist()

    merged: dict[int, Finding] = {}
    for k, start, end, (x0, y0, x1, y1) in zip(
        grown.tolist(), starts, ends, union[grown].tolist(), strict=True
    ):
        group = [findings[i] for i in members[start:end]]
        count, area, tiles = 0, 0.0, set()
        for f in group:
            if f.attributes:
                count += int(f.attributes.get(MERGED_COUNT, 1))
                tiles.update(f.attributes.get(MERGED_TILES, (f.tile_id,) if f.tile_id else ()))
            else:
                count += 1
                if f.tile_id:
                    tiles.add(f.tile_id)
            area += f.area_px
        keeper = group[0]
        merged[k] = Finding(
            keeper.label,
            keeper.score,
            (x0, y0, x1, y1),
            keeper.tile_id,
            min(area, (x1 - x0) * (y1 - y0)),
            keeper.model,
            keeper.model_version,
            {**keeper.attributes, MERGED_COUNT: count, MERGED_TILES: sorted(tiles)},
        )
    kept = zip(keepers.tolist(), order[keepers].tolist(), strict=True)
    return [merged.get(k) or findings[i] for k, i in kept]
