"""Tabular forms of tile results and findings, and back, for Parquet at rest."""

from __future__ import annotations

import json
from collections.abc import Sequence

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


def findings_from_frame(frame: pd.DataFrame) -> list[Finding]:
    """Merged findings read back from `findings.parquet`, in scene pixel coordinates."""
    return [
        Finding(
            label=str(row.label),
            score=float(row.score),
            box=(float(row.px_x0), float(row.px_y0), float(row.px_x1), float(row.px_y1)),
            tile_id=str(row.tile_id),
            area_px=float(row.area_px),
            model=str(row.model),
            model_version=str(row.model_version),
            attributes=json.loads(row.attributes) if getattr(row, "attributes", "") else {},
        )
        for row in frame.itertuples(index=False)
    ]
