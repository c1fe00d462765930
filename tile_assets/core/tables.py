"""Tabular forms of tile results and findings, and back, for Parquet at rest."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd

from tile_assets.core.types import Finding, TileResult

TILE_RESULT_COLUMNS = [
    "tile_id", "status", "from_cache", "valid_pixels", "findings", "cover_json",
    "error_type", "error_message",
]


def tile_results_frame(results: Sequence[TileResult]) -> pd.DataFrame:
    """One row per tile: status, cache hit, valid pixels, finding count, cover, error."""
    rows = [
        {
            "tile_id": r.tile_id,
            "status": r.status,
            "from_cache": r.from_cache,
            "valid_pixels": r.valid_pixels,
            "findings": len(r.findings),
            "cover_json": json.dumps(r.cover, sort_keys=True),
            "error_type": r.error_type,
            "error_message": r.error_message,
        }
        for r in results
    ]
    return pd.DataFrame(rows, columns=TILE_RESULT_COLUMNS)


def results_from_frame(frame: pd.DataFrame) -> list[TileResult]:
    """Tile results read back from `tile_results.parquet` (without their findings)."""
    return [
        TileResult(
            tile_id=str(row.tile_id),
            status=row.status,
            from_cache=bool(row.from_cache),
            valid_pixels=int(row.valid_pixels),
            cover=json.loads(row.cover_json),
            error_type=str(row.error_type),
            error_message=str(row.error_message),
        )
        for row in frame.itertuples(index=False)
    ]


FINDING_COLUMNS = [
    "label", "score", "px_x0", "px_y0", "px_x1", "px_y1", "tile_id", "area_px", "model",
    "model_version",
]
"""The columns `findings_from_frame` needs; `attributes` is read too when present."""


def findings_from_frame(frame: pd.DataFrame) -> list[Finding]:
    """Merged findings read back from `findings.parquet`, in scene pixel coordinates.

    Read a column at a time (a scene can hold tens of thousands of findings);
    a frame without `attributes` gives empty attribute dicts.
    """
    numbers = ("score", "px_x0", "px_y0", "px_x1", "px_y1", "area_px")
    score, x0, y0, x1, y1, area = (frame[c].to_numpy(np.float64).tolist() for c in numbers)
    label, tile_id, model, version = (
        [str(v) for v in frame[c].tolist()] for c in ("label", "tile_id", "model", "model_version")
    )
    attributes = frame["attributes"].tolist() if "attributes" in frame else [""] * len(frame)
    rows = zip(label, score, x0, y0, x1, y1, tile_id, area, model, version, attributes, strict=True)
    return [
        Finding(
            label=lab,
            score=sc,
            box=(bx0, by0, bx1, by1),
            tile_id=tid,
            area_px=ar,
            model=mod,
            model_version=ver,
            attributes=json.loads(attrs) if attrs else {},
        )
        for lab, sc, bx0, by0, bx1, by1, tid, ar, mod, ver, attrs in rows
    ]
