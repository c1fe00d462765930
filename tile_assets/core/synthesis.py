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
from typing import Any

import numpy as np
import pandas as pd

from tile_assets.core.geo import pixel_to_lonlat
from tile_assets.core.types import Finding, SceneInfo, TileResult

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
    merged: Sequence[Finding],
    *,
    model_name: str = "",
    model_version: str = "",
    notable: int = NOTABLE_COUNT,
) -> dict[str, Any]:
    """Summarize a scene: counts, cover, where things are, notable objects, coverage, failures.

    `manifest` lists every planned tile (tile_id, col_off, row_off, width,
    height, ...); `results` holds one result per tile that ran; `merged` are
    the findings after the cross-tile merge, in scene pixels. A planned tile
    without a result counts as failed ("NoResult"). The model is named by the
    arguments or, when they are empty, by the findings.

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
    counts = dict(sorted(Counter(f.label for f in merged).items()))
    grid = _grid_counts(scene, merged)
    distribution = _distribution_phrase(grid, _places(scene))
    model = _model(model_name, model_version, merged, ok)
    status = "complete" if planned and not failed else "failed" if not ok else "partial"
    summary: dict[str, Any] = {
        "scene_key": scene.partition_key,
        "uri": scene.uri,
        "georeferenced": scene.georeferenced,
        "crs": scene.crs,
        "size_px": [scene.width, scene.height],
        "counts_by_label": counts,
        "total_findings": len(merged),
        "cover": cover,
        "spatial_grid": grid.tolist(),
        "spatial_summary": distribution,
        "notable": _notable(scene, merged, notable),
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
        "synthesized %s: %d findings, coverage %.2f", scene.partition_key, len(merged), coverage
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


def _grid_counts(scene: SceneInfo, findings: Sequence[Finding]) -> np.ndarray:
    """Findings per cell of a 3x3 grid over the image, rows top→bottom, by box centre."""
    grid = np.zeros((GRID, GRID), dtype=np.int64)
    boxes = np.array([f.box for f in findings], dtype=np.float64).reshape(-1, 4)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    col = np.clip((GRID * cx / scene.width).astype(np.int64), 0, GRID - 1)
    row = np.clip((GRID * cy / scene.height).astype(np.int64), 0, GRID - 1)
    np.add.at(grid, (row, col), 1)
    return grid


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


def _notable(scene: SceneInfo, findings: Sequence[Finding], n: int) -> list[dict[str, Any]]:
    """The top `n` findings by score then area, with pixel box and lon/lat centre if known."""
    ranked = heapq.nsmallest(n, findings, key=lambda f: (-f.score, -f.area_px, f.label, f.box))
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
    name: str, version: str, merged: Sequence[Finding], ok: Sequence[TileResult]
) -> dict[str, str]:
    """The model named by the caller, else the first one named by a finding."""
    if not name:
        for f in [*merged, *(f for r in ok for f in r.findings)]:
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
