"""Asset checks per scene partition: tile coverage and the findings table's schema."""


import dagster as dg
import pandas as pd

from tile_assets.assets.findings import tile_findings
from tile_assets.core.catalog import read_geoparquet
from tile_assets.partitions import scenes
from tile_assets.resources import ImageryStore

COVERAGE_THRESHOLD = 0.98
FINDINGS_COLUMNS = {
    "scene_key": "object", "tile_id": "object", "label": "object", "score": "float64",
    "px_x0": "float64", "px_y0": "float64", "px_x1": "float64", "px_y1": "float64",
    "area_px": "float64", "model": "object", "model_version": "object",
    "lon_min": "float64", "lat_min": "float64", "lon_max": "float64", "lat_max": "float64",
}


def _dtype_kind(column: pd.Series) -> str:
    """Text columns as "object": pandas 3 reads them back with its `str` dtype, older pandas as object."""
    return "object" if pd.api.types.is_string_dtype(column.dtype) else str(column.dtype)


@dg.asset_check(asset=tile_findings, partitions_def=scenes, blocking=False)
def tile_coverage(tile_findings: dict) -> dg.AssetCheckResult:
    """Succeeded tiles / planned tiles must reach the threshold (default 0.98)."""
    coverage = float(tile_findings["coverage"])
    return dg.AssetCheckResult(
        passed=coverage >= COVERAGE_THRESHOLD,
        metadata={
            "coverage": round(coverage, 4),
            "threshold": COVERAGE_THRESHOLD,
            "tiles_planned": tile_findings["tiles_planned"],
            "tiles_failed": tile_findings["tiles_failed"],
        },
    )


@dg.asset_check(asset=tile_findings, partitions_def=scenes, blocking=False)
def findings_schema(imagery: ImageryStore, tile_findings: dict) -> dg.AssetCheckResult:
    """findings.parquet has the documented columns and types, and only valid geometries."""
    frame = read_geoparquet(imagery.catalog_store(), tile_findings["findings_uri"])
    missing = sorted(set(FINDINGS_COLUMNS) - set(frame.columns))
    wrong = sorted(
        c for c, kind in FINDINGS_COLUMNS.items()
        if c in frame.columns and len(frame) and _dtype_kind(frame[c]) != kind
    )
    invalid = int((~frame.geometry.is_valid).sum()) if len(frame) else 0
    bad_scores = int(((frame["score"] < 0) | (frame["score"] > 1)).sum()) if "score" in frame else 0
    return dg.AssetCheckResult(
        passed=not missing and not wrong and invalid == 0 and bad_scores == 0,
        metadata={
            "rows": len(frame),
            "missing_columns": ", ".join(missing) or "none",
            "wrong_types": ", ".join(wrong) or "none",
            "invalid_geometries": invalid,
            "scores_out_of_range": bad_scores,
        },
    )
