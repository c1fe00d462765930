"""Findings as Arrow columns: how a scene's findings are cached, merged and written.

A scene can hold hundreds of thousands of findings. As `Finding` objects
each costs about a kilobyte of Python heap and microseconds to build; as
columns it costs the bytes of its values. Models still return `Finding`s
per tile; from the tile cache on, findings travel as tables with these
columns, `attributes` as canonical JSON text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tile_assets.core.types import Finding

BOX_COLUMNS = ("px_x0", "px_y0", "px_x1", "px_y1")
FINDINGS_SCHEMA = pa.schema(
    [
        ("label", pa.string()),
        ("score", pa.float64()),
        *((name, pa.float64()) for name in BOX_COLUMNS),
        ("tile_id", pa.string()),
        ("area_px", pa.float64()),
        ("model", pa.string()),
        ("model_version", pa.string()),
        ("attributes", pa.string()),
    ]
)
"""Columns of a findings table, boxes in scene pixels."""

ATTRIBUTES_JSON = json.JSONEncoder(sort_keys=True, default=str)
"""Attributes as text: sorted keys, so equal dicts give equal strings (merge ties compare them)."""


def findings_table(findings: Sequence[Finding]) -> pa.Table:
    """`findings` as one table, in their order."""
    n = len(findings)
    boxes = np.array([f.box for f in findings], dtype=np.float64).reshape(n, 4)
    columns = {
        "label": [f.label for f in findings],
        "score": np.fromiter((f.score for f in findings), np.float64, n),
        **{name: boxes[:, i] for i, name in enumerate(BOX_COLUMNS)},
        "tile_id": [f.tile_id for f in findings],
        "area_px": np.fromiter((f.area_px for f in findings), np.float64, n),
        "model": [f.model for f in findings],
        "model_version": [f.model_version for f in findings],
        "attributes": [ATTRIBUTES_JSON.encode(f.attributes) for f in findings],
    }
    return pa.table(columns, schema=FINDINGS_SCHEMA)


def table_findings(table: pa.Table) -> list[Finding]:
    """The rows of a findings table as `Finding`s (for callers that want objects, e.g. tests)."""
    columns = table.select(FINDINGS_SCHEMA.names).to_pydict()
    rows = zip(*(columns[name] for name in FINDINGS_SCHEMA.names), strict=True)
    return [
        Finding(
            label=label,
            score=score,
            box=(x0, y0, x1, y1),
            tile_id=tile_id,
            area_px=area,
            model=model,
            model_version=version,
            attributes=json.loads(attributes) if attributes else {},
        )
        for label, score, x0, y0, x1, y1, tile_id, area, model, version, attributes in rows
    ]


def table_boxes(table: pa.Table) -> np.ndarray:
    """The boxes of a findings table as an (n, 4) float array."""
    return np.column_stack(
        [table.column(name).to_numpy() for name in BOX_COLUMNS]
    ).reshape(-1, 4).astype(np.float64, copy=False)


def column_array(table: pa.Table, name: str) -> np.ndarray:
    """One numeric column as a contiguous numpy array."""
    return np.ascontiguousarray(table.column(name).to_numpy())


def value_counts(column: pa.Array | pa.ChunkedArray) -> dict[str, int]:
    """How often each value of a text column occurs."""
    counted = pc.value_counts(column)
    return dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True))


def empty_findings() -> pa.Table:
    return FINDINGS_SCHEMA.empty_table()
