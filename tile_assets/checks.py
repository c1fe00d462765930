"""Asset checks per scene partition: tile coverage and the findings table's schema."""


import json
import warnings

import dagster as dg
import numpy as np
import pyarrow as pa

from tile_assets.assets.findings import tile_findings
from tile_assets.core.geo import valid_wkb
from tile_assets.core.tables import ParquetBatches
from tile_assets.partitions import scenes
from tile_assets.resources import ImageryStore

# A check per scene partition (`partitions_def` on an asset check) is a preview feature of
# Dagster 1.13, used here knowingly: its warning is not printed to every user of the CLI and UI.
warnings.filterwarnings(
    "ignore", message="Specifying a partitions_def on an AssetCheckSpec", category=dg.PreviewWarning
)

COVERAGE_THRESHOLD = 0.98
TEXT, DOUBLE, WKB = "text", "double", "binary"
FINDINGS_COLUMNS = {
    "scene_key": TEXT, "tile_id": TEXT, "label": TEXT, "score": DOUBLE,
    "px_x0": DOUBLE, "px_y0": DOUBLE, "px_x1": DOUBLE, "px_y1": DOUBLE,
    "area_px": DOUBLE, "model": TEXT, "model_version": TEXT,
    "lon_min": DOUBLE, "lat_min": DOUBLE, "lon_max": DOUBLE, "lat_max": DOUBLE,
}
"""Kinds of Arrow types: text is string or large_string (pandas 3 writes the latter)."""


def _kind(data_type: pa.DataType) -> str:
    """"text" for either Arrow string type, else the type's name ("double", "binary", ...)."""
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return TEXT
    return str(data_type)


def _geometry_column(schema: pa.Schema) -> str | None:
    """The primary geometry column named by GeoParquet's `geo` metadata; None if there is none."""
    geo = (schema.metadata or {}).get(b"geo")
    return str(json.loads(geo)["primary_column"]) if geo else None


def _count_bad_rows(findings: ParquetBatches, geometry: str | None, score: bool) -> tuple[int, int]:
    """Invalid geometries (undecodable and null WKB included) and scores outside [0, 1].

    Read a record batch at a time, only these two columns: the check holds one
    batch of geometries, never the scene's.
    """
    columns = [*([geometry] if geometry is not None else []), *(["score"] if score else [])]
    invalid = out_of_range = 0
    if not columns:
        return invalid, out_of_range
    for batch in findings.batches(columns):
        if geometry is not None:
            invalid += int(np.count_nonzero(~valid_wkb(batch.column(geometry))))
        if score:
            values = batch.column("score").to_numpy(zero_copy_only=False)
            out_of_range += int(np.count_nonzero((values < 0) | (values > 1)))
    return invalid, out_of_range


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
    """findings.parquet is GeoParquet with the documented columns and types, valid geometries
    and scores in [0, 1].

    Types come from the file's schema; geometries and scores are read a
    record batch at a time, so the check's memory does not grow with the
    number of findings.
    """
    with ParquetBatches(imagery.catalog_store(), tile_findings["findings_uri"]) as findings:
        schema = findings.schema
        geometry = _geometry_column(schema)
        expected = FINDINGS_COLUMNS if geometry is None else {**FINDINGS_COLUMNS, geometry: WKB}
        kinds = {c: _kind(schema.field(c).type) for c in expected if c in schema.names}
        missing = sorted(set(expected) - set(kinds))
        if geometry is None:
            missing.append("geometry (no GeoParquet metadata)")
        wrong = sorted(c for c, kind in kinds.items() if kind != expected[c])
        readable = {c for c, kind in kinds.items() if kind == expected[c]}
        invalid, bad_scores = _count_bad_rows(
            findings, geometry if geometry in readable else None, "score" in readable
        )
        rows = findings.rows
    return dg.AssetCheckResult(
        passed=not missing and not wrong and invalid == 0 and bad_scores == 0,
        metadata={
            "rows": rows,
            "missing_columns": ", ".join(missing) or "none",
            "wrong_types": ", ".join(wrong) or "none",
            "invalid_geometries": invalid,
            "scores_out_of_range": bad_scores,
        },
    )
