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
import pyarrow as pa
import pyarrow.compute as pc

from tile_assets.core.errors import TileAssetsError
from tile_assets.core.findings_table import (
    ATTRIBUTES_JSON,
    BOX_COLUMNS,
    column_array,
    findings_table,
    table_boxes,
    table_findings,
)
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
    """`merge_table` on `Finding` objects: the merged findings, highest score first."""
    if strategy == "none":
        return list(findings)
    merged = merge_table(findings_table(findings), strategy, metric, threshold, class_agnostic)
    return table_findings(merged)


def merge_table(
    table: pa.Table,
    strategy: MergeStrategy = "greedy_nmm",
    metric: MatchMetric = "ios",
    threshold: float = 0.5,
    class_agnostic: bool = False,
) -> pa.Table:
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
    - "none": the input, unchanged.

    The result is never longer than the input.
    """
    if strategy == "none":
        return table
    if strategy not in get_args(MergeStrategy):
        raise TileAssetsError("merge_findings", f"unknown strategy {strategy!r}")
    if metric not in get_args(MatchMetric):
        raise TileAssetsError("merge_findings", f"unknown metric {metric!r}")
    if not 0.0 < threshold <= 1.0:
        raise TileAssetsError("merge_findings", f"threshold {threshold!r} outside (0, 1]")

    if not len(table):
        return table
    order, boxes, codes = _total_order(table)
    owner = greedy_owners(boxes, None if class_agnostic else codes, metric, threshold)
    keepers = np.flatnonzero(owner == np.arange(len(order)))
    log.debug(
        "merge %s/%s@%s: %d findings, %d kept", strategy, metric, threshold, len(order), len(keepers)
    )
    if strategy == "nms":
        return table.take(order[keepers])
    return _absorb_groups(table, order, boxes, owner, keepers)


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


def _total_order(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of the rows of `table` in a total order, with their boxes (n, 4) and label codes in that order.

    The order is (-score, label, box), then the remaining fields for exact
    ties, so equal inputs in any order give equal outputs.
    """
    scores = column_array(table, "score")
    boxes = table_boxes(table)
    if not (np.isfinite(scores).all() and np.isfinite(boxes).all()):
        raise TileAssetsError("merge_findings", "a finding has a non-finite score or box")
    codes, _ = string_codes(table.column("label"))

    order = visiting_order(scores, boxes, codes)
    scores, boxes, codes = scores[order], np.take(boxes, order, axis=0), codes[order]
    tie_next = (
        (scores[1:] == scores[:-1])
        & (codes[1:] == codes[:-1])
        & (boxes[1:] == boxes[:-1]).all(axis=1)
    )
    if tie_next.any():
        _break_ties(table, order, tie_next)
    return order, boxes, codes


def string_codes(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, list[str]]:
    """Codes that sort as the strings of `column` do (each one's rank among the distinct ones), and the distinct strings, sorted."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = pc.dictionary_encode(column)
    distinct = encoded.dictionary.to_pylist()
    by_value = sorted(range(len(distinct)), key=distinct.__getitem__)
    rank = np.empty(len(distinct), dtype=np.int64)
    rank[by_value] = np.arange(len(distinct))
    codes = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    return codes, [distinct[i] for i in by_value]


def _runs(tie_next: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and stop positions of the runs of equal neighbours, given which position equals the next."""
    edges = np.diff(np.concatenate(([0], tie_next.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1) + 1


def _break_ties(table: pa.Table, order: np.ndarray, tie_next: np.ndarray) -> None:
    """Sort each run of equal (score, label, box) in `order` by (tile id, area, model, version, attributes).

    Runs are common: overlapping tiles see the same pixels and report the
    same object twice, differing only in tile id. One stable lexsort on
    codes of those fields settles them (attributes compare as their
    canonical JSON text).
    """
    starts, stops = _runs(tie_next)
    lengths = stops - starts
    at = np.repeat(starts, lengths) + _ragged_arange(lengths)
    tied = table.take(order[at])
    keys = (
        string_codes(tied.column("attributes"))[0],
        string_codes(tied.column("model_version"))[0],
        string_codes(tied.column("model"))[0],
        column_array(tied, "area_px"),
        string_codes(tied.column("tile_id"))[0],
        np.repeat(np.arange(len(starts)), lengths),
    )
    order[at] = order[at][np.lexsort(keys)]


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
    """Index pairs (i < j), each once, of boxes that match; with `codes`, of equal code only."""
    left, right, inter = overlapping_pairs(boxes, codes)
    x0, y0, x1, y1 = boxes.T
    areas = (x1 - x0) * (y1 - y0)
    area_a, area_b = areas[left], areas[right]
    denom = area_a + area_b - inter if metric == "iou" else np.minimum(area_a, area_b)
    match = inter / denom >= threshold
    return left[match], right[match]


def overlapping_pairs(
    boxes: np.ndarray, codes: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Index pairs (i < j), each once, of boxes whose intersection has an area, and that area.

    With `codes`, only boxes of equal code pair: each code's boxes are swept
    on their own (`_sweep`), which also keeps each sweep's arrays small
    enough to sort in cache (100,000 boxes of three labels: 30 ms instead
    of 43 as one sweep). Zero-area and non-finite boxes pair with nothing.
    """
    if codes is None:
        return _sweep(boxes)
    by_code = np.argsort(_narrowest(codes), kind="stable")
    cuts = np.flatnonzero(np.diff(codes[by_code])) + 1
    if not len(cuts):
        return _sweep(boxes)
    lefts, rights, inters = [], [], []
    for part in np.split(by_code, cuts):
        left, right, inter = _sweep(boxes[part])
        # `part` ascends, so pairs keep i < j.
        lefts.append(part[left])
        rights.append(part[right])
        inters.append(inter)
    return np.concatenate(lefts), np.concatenate(rights), np.concatenate(inters)


def _sweep(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`overlapping_pairs` among all of `boxes`: a sweep over horizontal bands.

    Bands are twice the median box height: every box enters each band it
    spans, sorted by left edge, and pairs with the boxes of its band whose
    left edge lies before its right edge, which is exactly an overlap in x.
    A pair is kept only in the band holding the top of its intersection, so
    it comes out once.
    """
    x0, y0, x1, y1 = np.ascontiguousarray(boxes.T)
    valid = (x1 > x0) & (y1 > y0) & np.isfinite(boxes).all(axis=1)
    n = int(valid.sum())
    if n < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float64)
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

    # Entries come in rank order; a stable sort by band keeps that order inside each band.
    band = np.repeat(first, spans) + _ragged_arange(spans)
    by_band = np.argsort(_narrowest(band), kind="stable")
    entry_band, entry = band[by_band], np.repeat(np.arange(n), spans)[by_band]
    key = entry_band * n + entry
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
    left, right = by_x[left], by_x[right]
    return np.minimum(left, right), np.maximum(left, right), inter


def _narrowest(values: np.ndarray) -> np.ndarray:
    """Non-negative ints as int16 when they fit: numpy sorts 16-bit ints by radix, 4x faster than int64."""
    return values.astype(np.int16) if len(values) and values.max() < np.iinfo(np.int16).max else values


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
    table: pa.Table,
    order: np.ndarray,
    boxes: np.ndarray,
    owner: np.ndarray,
    keepers: np.ndarray,
) -> pa.Table:
    """Greedy NMM: each keeper grown to the union of the boxes it took, areas summed and capped.

    Union boxes, counts, summed areas and tile sets are computed for all
    groups at once on arrays (positions are in visiting order); only the
    attributes of groups that took something are parsed and rewritten.
    Areas are summed in visiting order, keeper first, as a loop over each
    group would add them, so the floats come out the same.
    """
    n = len(order)
    union = boxes.copy()
    for side, reduce in enumerate((np.minimum, np.minimum, np.maximum, np.maximum)):
        reduce.at(union[:, side], owner, boxes[:, side])
    sizes = np.bincount(owner, minlength=n)
    member = np.flatnonzero(sizes[owner] > 1)  # visiting positions, ascending
    member_owner = owner[member]
    members = table.take(order[member])
    attributes = members.column("attributes")
    # Results of an earlier merge stand for merged_count findings and bring their merged_tiles.
    earlier = np.flatnonzero(
        pc.match_substring(attributes, f'"{MERGED_COUNT}"').to_numpy(zero_copy_only=False)
        | pc.match_substring(attributes, f'"{MERGED_TILES}"').to_numpy(zero_copy_only=False)
    )
    earlier_attributes = [json.loads(a) for a in attributes.take(earlier).to_pylist()]
    counts = np.ones(len(member), dtype=np.int64)
    counts[earlier] = [int(a.get(MERGED_COUNT, 1)) for a in earlier_attributes]
    grown = np.flatnonzero(sizes > 1)
    count = np.bincount(member_owner, weights=counts, minlength=n)[grown]
    area = np.bincount(member_owner, weights=column_array(members, "area_px"), minlength=n)[grown]
    sides = union[grown, 2:] - union[grown, :2]
    area = np.minimum(area, sides[:, 0] * sides[:, 1])
    tiles = _group_tiles(members, earlier, earlier_attributes, member_owner, grown)

    result = table.take(order[keepers])
    at = np.searchsorted(keepers, grown)
    areas = column_array(result, "area_px").copy()
    areas[at] = area
    texts = result.column("attributes").to_pylist()
    for i, c, t in zip(at.tolist(), count.astype(np.int64).tolist(), tiles, strict=True):
        texts[i] = ATTRIBUTES_JSON.encode({**json.loads(texts[i]), MERGED_COUNT: c, MERGED_TILES: t})
    replaced = {name: union[keepers, k] for k, name in enumerate(BOX_COLUMNS)}
    replaced.update(area_px=areas, attributes=pa.array(texts, pa.string()))
    for name, values in replaced.items():
        result = result.set_column(result.schema.get_field_index(name), name, pa.array(values))
    return result


def _group_tiles(
    members: pa.Table,
    earlier: np.ndarray,
    earlier_attributes: list[dict[str, Any]],
    member_owner: np.ndarray,
    grown: np.ndarray,
) -> list[list[str]]:
    """For each owner in `grown`, the sorted distinct tiles of its members.

    A member brings its own tile id (none if empty), or the merged_tiles an
    earlier merge gave it.
    """
    with_tiles = [k for k, a in zip(earlier.tolist(), earlier_attributes, strict=True) if MERGED_TILES in a]
    earlier_tiles = [a[MERGED_TILES] for a in earlier_attributes if MERGED_TILES in a]
    tile_ids = members.column("tile_id")
    own = pc.not_equal(tile_ids, "").to_numpy(zero_copy_only=False).copy()
    own[with_tiles] = False
    names_in = pa.chunked_array(
        [pc.filter(tile_ids, pa.array(own)).combine_chunks(), pa.array(list(chain.from_iterable(earlier_tiles)), pa.string())]
    )
    codes, names = string_codes(names_in)
    tile_owner = np.concatenate(
        (member_owner[own], np.repeat(member_owner[with_tiles], list(map(len, earlier_tiles))).astype(np.int64))
    )
    pairs = np.sort(tile_owner * len(names) + codes)
    pairs = pairs[np.diff(pairs, prepend=-1) > 0]  # distinct (owner, tile) pairs
    pair_owner, pair_tile = np.divmod(pairs, max(len(names), 1))
    starts = np.searchsorted(pair_owner, grown).tolist()
    stops = np.searchsorted(pair_owner, grown, side="right").tolist()
    tiles = [names[t] for t in pair_tile.tolist()]
    return [tiles[start:stop] for start, stop in zip(starts, stops, strict=True)]
