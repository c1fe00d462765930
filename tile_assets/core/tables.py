"""Tabular forms of tile results, and findings tables read a record batch at a time."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from tile_assets.core.findings_table import BOX_COLUMNS
from tile_assets.core.store import Store
from tile_assets.core.types import TileResult

TILE_RESULT_COLUMNS = [
    "tile_id", "status", "from_cache", "valid_pixels", "findings", "cover_json",
    "error_type", "error_message",
]


def tile_results_frame(
    results: Sequence[TileResult], findings_per_tile: Mapping[str, int] | None = None
) -> pd.DataFrame:
    """One row per tile: status, cache hit, valid pixels, finding count, cover, error.

    Findings are counted from `findings_per_tile` when given (results read
    back from the cache without their findings), else from each result.
    """
    rows = [
        {
            "tile_id": r.tile_id,
            "status": r.status,
            "from_cache": r.from_cache,
            "valid_pixels": r.valid_pixels,
            "findings": findings_per_tile.get(r.tile_id, 0) if findings_per_tile is not None else len(r.findings),
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


BATCH_ROWS = 4096
"""Rows per record batch when a findings table is streamed: well under 1 MB of the synthesis
columns, a few MB of decoded geometries in the check. On 300,000 findings, batches of 16,384
rows peaked 8-20 MB higher and were no faster."""

SYNTHESIS_COLUMNS = ("label", "score", *BOX_COLUMNS, "area_px", "tile_id", "model", "model_version")
"""What the scene synthesis reads of findings.parquet (no attributes JSON, no WKB geometry)."""
PREVIEW_COLUMNS = ("label", *BOX_COLUMNS)

FindingBatches = Iterable[pa.RecordBatch | pa.Table]
"""Findings as Arrow data, in order: record batches, or tables (read batch by batch)."""


class ParquetBatches:
    """A Parquet object read through a store and decoded a record batch at a time.

    The object is read from a file (`Store.open_read`: the local file, or an
    S3 object's download in a temporary file), not held in memory: findings.parquet
    takes ~130 bytes a finding, 40 MB for a 400 Mpix scene. Columns are
    decoded only when asked for, row group after row group, at most
    `batch_rows` rows at once, so nothing held grows with the rows. Use it
    as a context manager: the file is closed at the end of the block.
    """

    def __init__(self, store: Store, uri: str) -> None:
        self.uri = uri
        self._source = store.open_read(uri)
        try:
            self._file = pq.ParquetFile(self._source)
        except BaseException:
            self._source.close()
            raise

    def __enter__(self) -> ParquetBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
        self._source.close()

    @property
    def schema(self) -> pa.Schema:
        """The Arrow schema, with the file's key-value metadata (e.g. GeoParquet's `geo`)."""
        return self._file.schema_arrow

    @property
    def rows(self) -> int:
        return self._file.metadata.num_rows

    def batches(
        self, columns: Sequence[str], batch_rows: int = BATCH_ROWS
    ) -> Iterator[pa.RecordBatch]:
        """The rows in file order, only `columns`, at most `batch_rows` at a time.

        Decoded on this thread: a thread per column cost 6-8 MB more peak RSS
        and saved nothing at these batch sizes.
        """
        return self._file.iter_batches(
            batch_size=batch_rows, columns=list(columns), use_threads=False
        )


def record_batches(findings: FindingBatches) -> Iterator[pa.RecordBatch]:
    """Each table split into its record batches, batches as given: one shape for streaming code."""
    for item in findings:
        if isinstance(item, pa.Table):
            yield from item.to_batches()
        else:
            yield item
