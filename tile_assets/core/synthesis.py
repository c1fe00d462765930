"""One deterministic, JSON-able description of a scene built from the tiles that succeeded.

Counts come from the merged findings, cover from the per-tile fractions, and
the text says plainly how much of the scene was analysed and what failed, so
a partial result is never mistaken for a complete one.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from tile_assets.core.findings_table import value_counts
from tile_assets.core.geo import pixel_to_lonlat
from tile_assets.core.tables import BOX_COLUMNS, FindingBatches, record_batches
from tile_assets.core.types import Box, SceneInfo, TileResult

log = logging.getLogger(__name__)

NOTABLE_COUNT = 5
MAX_FAILED_NAMED = 3
GRID = 3
MIN_PATTERN = 3
_COMPASS = (
    ("north-west", "north", "north-east"),
    ("west", "centre", "east"),
    ("south-west", "south", "south-east"),
)
_PIXEL_PLACES = (
    ("top-left", "top", "top-right"),
    ("left", "centre", "right"),
    ("bottom-left", "bottom", "bottom-right"),
)


def synthesize(
    scene: SceneInfo,
    manifest: pd.DataFrame,
    results: Sequence[TileResult],
    merged: FindingBatches,
    *,
    model_name: str = "",
    model_version: str = "",
    notable: int = NOTABLE_COUNT,
) -> dict[str, Any]:
    """Summarize a scene: counts, cover, where things are, notable objects, coverage, failures.

    `manifest` lists every planned tile (tile_id, col_off, row_off, width,
    height, ...); `results` holds one result per tile that ran; `merged` are
    the findings after the cross-tile merge, in scene pixels, as Arrow batches
    with the `tables.SYNTHESIS_COLUMNS`: they are read once, a batch at a
    time, and only counts, the grid and the top `notable` rows are kept, so a
    scene's findings never need to fit in memory at once. A planned tile
    without a result counts as failed ("NoResult"). The model is named by the
    arguments or, when they are empty, by the first finding that names one.

    Cover fractions are averaged over ok tiles weighted by each tile's valid
    pixels times the share of its window that no other ok tile overlaps (an
    overlap strip shared by two tiles gives each half its area), so overlaps
    are not counted twice. This assumes valid pixels are spread evenly within
    a tile.
    """
    by_id = {r.tile_id: r for r in results}
    planned = [str(t) for t in manifest["tile_id"]]
    ok = [by_id[t] for t in planned if t in by_id and by_id[t].status == "ok"]
    failed = _failed_tiles(planned, by_id)
    coverage = len(ok) / len(planned) if planned else 0.0
    cover = _scene_cover(manifest, ok)
    tally = _Tally(scene, notable)
    for batch in record_batches(merged):
        tally.add(batch)
    counts = dict(sorted(tally.counts.items()))
    distribution = _distribution_phrase(tally.grid, _places(scene))
    model = _model(model_name, model_version, tally.first_model, ok)
    status = "complete" if planned and not failed else "failed" if not ok else "partial"
    summary: dict[str, Any] = {
        "scene_key": scene.partition_key,
        "uri": scene.uri,
        "georeferenced": scene.georeferenced,
        "crs": scene.crs,
        "size_px": [scene.width, scene.height],
        "counts_by_label": counts,
        "total_findings": tally.total,
        "cover": cover,
        "spatial_grid": tally.grid.tolist(),
        "spatial_summary": distribution,
        "notable": _notable(scene, tally.top),
        "tiles_planned": len(planned),
        "tiles_ok": len(ok),
        "tiles_failed": len(failed),
        "coverage": round(coverage, 4),
        "status": status,
        "failed_tiles": failed,
        "model": model,
    }
    summary["description"] = _describe(summary)
    log.info(
        "synthesized %s: %d findings, coverage %.2f", scene.partition_key, tally.total, coverage
    )
    return summary


def _failed_tiles(planned: Sequence[str], by_id: dict[str, TileResult]) -> list[dict[str, str]]:
    """Every planned tile that did not end ok, with its reason."""
    out = []
    for tile_id in planned:
        result = by_id.get(tile_id)
        if result is None:
            out.append(
                {"tile_id": tile_id, "error_type": "NoResult", "message": "no result recorded"}
            )
        elif result.status != "ok":
            out.append(
                {
                    "tile_id": tile_id,
                    "error_type": result.error_type,
                    "message": result.error_message,
                }
            )
    return out


def _unique_shares(windows: pd.DataFrame) -> np.ndarray:
    """For each window, the fraction of its area left after splitting overlaps evenly.

    Tile edges cut the scene into rectangular cells; a cell covered by k
    windows gives each of them 1/k of its area.
    """
    x0 = windows["col_off"].to_numpy(np.int64)
    y0 = windows["row_off"].to_numpy(np.int64)
    x1 = x0 + windows["width"].to_numpy(np.int64)
    y1 = y0 + windows["height"].to_numpy(np.int64)
    xs, ys = np.unique(np.concatenate([x0, x1])), np.unique(np.concatenate([y0, y1]))
    ix0, ix1 = np.searchsorted(xs, x0), np.searchsorted(xs, x1)
    iy0, iy1 = np.searchsorted(ys, y0), np.searchsorted(ys, y1)
    depth = np.zeros((len(ys) - 1, len(xs) - 1), dtype=np.int64)
    for a, b, c, d in zip(iy0, iy1, ix0, ix1, strict=True):
        depth[a:b, c:d] += 1
    cell_area = np.outer(np.diff(ys), np.diff(xs)).astype(np.float64)
    owned = np.divide(cell_area, depth, out=np.zeros_like(cell_area), where=depth > 0)
    shares = [
        owned[a:b, c:d].sum() / cell_area[a:b, c:d].sum()
        for a, b, c, d in zip(iy0, iy1, ix0, ix1, strict=True)
    ]
    return np.asarray(shares, dtype=np.float64)


def _scene_cover(manifest: pd.DataFrame, ok: Sequence[TileResult]) -> dict[str, float]:
    """Cover fractions over the analysed part of the scene (see `synthesize`)."""
    if not ok:
        return {}
    windows = manifest.set_index(manifest["tile_id"].astype(str)).loc[[r.tile_id for r in ok]]
    weights = np.asarray([r.valid_pixels for r in ok], np.float64) * _unique_shares(windows)
    total = weights.sum()
    if total <= 0:
        return {}
    keys = sorted({k for r in ok for k in r.cover})
    return {
        k: round(
            float(sum(w * r.cover.get(k, 0.0) for w, r in zip(weights, ok, strict=True)) / total), 4
        )
        for k in keys
    }


class _Ranked(NamedTuple):
    """One of the best findings so far: what `notable` reports of it."""

    score: float
    area_px: float
    label: str
    box: Box
    tile_id: str


def _rank(f: _Ranked) -> tuple[float, float, str, Box]:
    """Notable order: score, then area, descending; then label and box, ascending."""
    return (-f.score, -f.area_px, f.label, f.box)


_RANK_KEYS = [
    ("score", "descending"),
    ("area_px", "descending"),
    ("label", "ascending"),
    *((name, "ascending") for name in BOX_COLUMNS),
    ("_row", "ascending"),
]
"""`_rank` in Arrow, then the row: a total order, so an unstable top-k picks what a stable
sort would (the first of findings equal in every key)."""


@dataclass
class _Tally:
    """What synthesis keeps of the findings streaming past: sized by labels and `notable`."""

    scene: SceneInfo
    notable: int
    total: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    grid: np.ndarray = field(default_factory=lambda: np.zeros((GRID, GRID), dtype=np.int64))
    top: list[_Ranked] = field(default_factory=list)
    first_model: tuple[str, str] | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        """Count one batch of findings in, keeping only the best `notable` of all seen."""
        self.total += batch.num_rows
        self.counts.update(value_counts(batch.column("label")))
        self.grid += _grid_counts(self.scene, *(_floats(batch, name) for name in BOX_COLUMNS))
        self.top = heapq.nsmallest(self.notable, [*self.top, *self._best(batch)], key=_rank)
        if self.first_model is None:
            self.first_model = _first_model(batch)

    def _best(self, batch: pa.RecordBatch) -> list[_Ranked]:
        """The batch's best `notable` findings in `_rank` order, earlier rows first among equals."""
        if self.notable <= 0 or batch.num_rows == 0:
            return []
        numbered = batch.append_column("_row", pa.array(np.arange(batch.num_rows)))
        best = pc.select_k_unstable(numbered, self.notable, sort_keys=_RANK_KEYS)
        return [
            _Ranked(r["score"], r["area_px"], r["label"], _box(r), r["tile_id"])
            for r in numbered.take(best).to_pylist()
        ]


def _box(row: dict[str, Any]) -> Box:
    x0, y0, x1, y1 = (row[name] for name in BOX_COLUMNS)
    return (x0, y0, x1, y1)


def _floats(batch: pa.RecordBatch, name: str) -> np.ndarray:
    """One numeric column as float64 (nulls as NaN)."""
    return batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)


def _first_model(batch: pa.RecordBatch) -> tuple[str, str] | None:
    """(name, version) of the first finding in the batch that names its model, if any."""
    at = pc.index(pc.not_equal(batch.column("model"), ""), True).as_py()
    if at < 0:
        return None
    return batch.column("model")[at].as_py(), batch.column("model_version")[at].as_py()


def _grid_counts(
    scene: SceneInfo, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray
) -> np.ndarray:
    """Findings per cell of a 3x3 grid over the image, rows top→bottom, by box centre."""
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    col = np.clip((GRID * cx / scene.width).astype(np.int64), 0, GRID - 1)
    row = np.clip((GRID * cy / scene.height).astype(np.int64), 0, GRID - 1)
    return np.bincount(row * GRID + col, minlength=GRID * GRID).reshape(GRID, GRID)


def _places(scene: SceneInfo) -> tuple[tuple[str, ...], ...]:
    """Compass names only when the image is north-up; otherwise image-relative names."""
    t = scene.transform
    north_up = scene.georeferenced and t is not None and t[1] == 0 and t[3] == 0 and t[4] < 0 < t[0]
    return _COMPASS if north_up else _PIXEL_PLACES


def _distribution_phrase(grid: np.ndarray, places: tuple[tuple[str, ...], ...]) -> str:
    """One phrase: concentrated (half or more in one cell), spread evenly, or where most are.

    Fewer than `MIN_PATTERN` findings are not called a pattern.
    """
    total = int(grid.sum())
    if total == 0:
        return "no findings"
    if total < MIN_PATTERN:
        return "too few to show a spatial pattern"
    flat = grid.ravel()
    top = int(np.argmax(flat))
    name = places[top // GRID][top % GRID]
    share = flat[top] / total
    if share >= 0.5:
        return f"concentrated in the {name}"
    if share <= 0.2 and np.count_nonzero(flat) >= 6:
        return "spread evenly"
    return f"spread unevenly, most in the {name}"


def _notable(scene: SceneInfo, ranked: Sequence[_Ranked]) -> list[dict[str, Any]]:
    """The best findings (see `_rank`), with pixel box and lon/lat centre if known."""
    centres_x = [(f.box[0] + f.box[2]) / 2 for f in ranked]
    centres_y = [(f.box[1] + f.box[3]) / 2 for f in ranked]
    lonlat = pixel_to_lonlat(scene, centres_x, centres_y) if ranked else None
    out = []
    for i, f in enumerate(ranked):
        item: dict[str, Any] = {
            "label": f.label,
            "score": round(float(f.score), 4),
            "box_px": [float(v) for v in f.box],
            "area_px": float(f.area_px),
            "tile_id": f.tile_id,
            "centre_px": [centres_x[i], centres_y[i]],
        }
        if lonlat is not None:
            item["centre_lonlat"] = [round(float(lonlat[0][i]), 7), round(float(lonlat[1][i]), 7)]
        out.append(item)
    return out


def _model(
    name: str, version: str, first_merged: tuple[str, str] | None, ok: Sequence[TileResult]
) -> dict[str, str]:
    """The caller's model, else the first named by a merged finding, else by a tile's finding."""
    if not name and first_merged is not None:
        name, version = first_merged
    if not name:
        for f in (f for r in ok for f in r.findings):
            if f.model:
                name, version = f.model, f.model_version
                break
    return {"name": name, "version": version}


def _percent(x: float) -> str:
    return f"{100 * x:.0f}%"


def _describe(s: dict[str, Any]) -> str:
    """Two to four plain sentences from the summary fields; same input, same text."""
    planned, ok, failed = s["tiles_planned"], s["tiles_ok"], s["failed_tiles"]
    failed_text = ""
    if failed:
        named = ", ".join(f"{f['tile_id']} ({f['error_type']})" for f in failed[:MAX_FAILED_NAMED])
        more = (
            f" and {len(failed) - MAX_FAILED_NAMED} more" if len(failed) > MAX_FAILED_NAMED else ""
        )
        failed_text = f"; {len(failed)} failed: {named}{more}"
    if ok == 0:
        sentences = [
            f"No tile was analysed successfully ({ok} of {planned} tiles, coverage 0%)"
            f"{failed_text}.",
            "There are no findings or cover figures for this scene.",
        ]
    else:
        counts = s["counts_by_label"]
        if counts:
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            parts = ", ".join(f"{n} {label}" for label, n in ranked)
            sentences = [
                f"Found {s['total_findings']} objects after merging across tile borders "
                f"({parts}), {s['spatial_summary']}."
            ]
        else:
            sentences = ["No objects were found."]
        cover_items = sorted(s["cover"].items(), key=lambda kv: (-kv[1], kv[0]))[:3]
        if cover_items:
            sentences.append(
                "Cover: " + ", ".join(f"{_percent(v)} {k}" for k, v in cover_items) + "."
            )
        sentences.append(
            f"Analysed {ok} of {planned} tiles ({_percent(s['coverage'])} coverage){failed_text}."
        )
    if not s["georeferenced"]:
        sentences.append("Locations are in pixel coordinates (the image is not georeferenced).")
    return " ".join(sentences)
