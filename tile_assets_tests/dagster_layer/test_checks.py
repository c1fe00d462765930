"""The findings_schema asset check, invoked directly on GeoParquet files good and bad."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from dagster_aws.s3 import S3Resource

from tile_assets.checks import findings_schema
from tile_assets.resources import ImageryStore

ROWS = 10
TEXT = ("scene_key", "tile_id", "label", "model", "model_version", "attributes", "coord_space")


def _findings(rows: int = ROWS) -> gpd.GeoDataFrame:
    """Findings as findings.parquet holds them: boxes in UTM 18N, lon/lat bounds, text columns."""
    x0 = 500_000 + 30.0 * np.arange(rows)
    frame = pd.DataFrame(
        {
            **{name: [f"{name}-{i}" for i in range(rows)] for name in TEXT},
            "score": np.linspace(0, 1, rows),
            "px_x0": x0, "px_y0": 0.0, "px_x1": x0 + 10, "px_y1": 10.0, "area_px": 100.0,
            "lon_min": -75.0, "lat_min": 24.0, "lon_max": -74.9, "lat_max": 24.1,
        }
    )  # fmt: skip
    geometry = shapely.box(x0, 2_800_000, x0 + 10, 2_800_010)
    return gpd.GeoDataFrame(frame, geometry=geometry, crs="EPSG:32618")


def _check(path: Path) -> tuple[bool, dict[str, Any]]:
    imagery = ImageryStore(inbox=str(path.parent), catalog=str(path.parent), s3=S3Resource())
    result = findings_schema(imagery=imagery, tile_findings={"findings_uri": str(path)})
    values = {k: getattr(v, "value", getattr(v, "text", v)) for k, v in result.metadata.items()}
    return result.passed, values


def _rewrite(source: Path, target: Path, **columns: pa.Array) -> Path:
    """`source` with some columns replaced (or dropped, for None), its GeoParquet metadata kept."""
    table = pq.read_table(source)
    for name, values in columns.items():
        at = table.schema.get_field_index(name)
        table = table.remove_column(at) if values is None else table.set_column(at, name, values)
    pq.write_table(table, target, row_group_size=3)
    return target


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "findings.parquet"
    _findings().to_parquet(path, index=False, row_group_size=4)
    return path


def test_a_good_file_passes(good: Path) -> None:
    assert pq.ParquetFile(good).metadata.num_row_groups == 3
    passed, meta = _check(good)
    assert passed, meta
    assert meta == {
        "rows": ROWS,
        "missing_columns": "none",
        "wrong_types": "none",
        "invalid_geometries": 0,
        "scores_out_of_range": 0,
    }


def test_text_as_arrow_string_passes_as_large_string_does(good: Path, tmp_path: Path) -> None:
    table = pq.read_table(good)
    small = {name: table.column(name).cast(pa.string()) for name in TEXT}
    passed, meta = _check(_rewrite(good, tmp_path / "string.parquet", **small))
    assert passed, meta


def test_a_bad_file_fails_naming_every_problem(good: Path, tmp_path: Path) -> None:
    table = pq.read_table(good)
    bowtie = shapely.to_wkb(shapely.Polygon([(0, 0), (10, 10), (10, 0), (0, 10)]))
    wkb = table.column("geometry").to_pylist()
    wkb[1], wkb[5], wkb[9] = bowtie, None, b"\x01not wkb"
    scores = table.column("score").to_pylist()
    scores[0], scores[4], scores[8] = -0.1, 1.5, float("nan")
    bad = _rewrite(
        good,
        tmp_path / "bad.parquet",
        geometry=pa.array(wkb, pa.binary()),
        score=pa.array(scores, pa.float64()),
        label=pa.array(range(ROWS), pa.int64()),
        area_px=pa.array([100.0] * ROWS, pa.float32()),
        lon_max=None,
    )
    passed, meta = _check(bad)
    assert not passed
    assert meta == {
        "rows": ROWS,
        "missing_columns": "lon_max",
        "wrong_types": "area_px, label",
        "invalid_geometries": 3,  # self-intersecting, null, undecodable
        "scores_out_of_range": 2,  # NaN is not out of range
    }


def test_plain_parquet_is_not_geoparquet(good: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.parquet"
    pd.DataFrame(_findings().drop(columns="geometry")).to_parquet(plain, index=False)
    passed, meta = _check(plain)
    assert not passed
    assert meta["missing_columns"] == "geometry (no GeoParquet metadata)"
    assert meta["wrong_types"] == "none" and meta["invalid_geometries"] == 0
