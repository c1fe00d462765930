"""A scene's findings from the tile cache to findings.parquet: every tile settled, merged a tile row at a time.

`CachedScene` reads the cache a chunk file at a time, and a chunk holds
tiles of many rows (batches run in the reader's order, down columns of a
band). `RowSpool` regroups the findings by tile row in Arrow files on local
disk; `merge_scene` then takes the rows top first and settles what nothing
later can touch; `write_findings` writes it as row groups. Memory follows a
tile row, not the scene.

A rerun, whose findings.parquet is already there, may update it instead
(`scene_update`), which takes every finding at once: up to
`MAX_UPDATE_FINDINGS` findings are then held in memory as read, not
spooled (spooling and reading back 470,000 findings cost ~1 s of a 4.7 s
merge), and spooled after all if the scene turns out larger or must be
merged whole. The earlier file is read on a thread while the cache is
(both are Arrow decoding, which runs without the GIL).
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tile_assets.core.cache import TileCache
from tile_assets.core.catalog import write_findings
from tile_assets.core.borders import TileBoxes
from tile_assets.core.findings_table import empty_findings, value_counts
from tile_assets.core.scene_merge import MergeOptions, merge_scene
from tile_assets.core.scene_update import (
    BASIS_METADATA,
    MAX_UPDATE_FINDINGS,
    MergeBasis,
    read_previous,
    update_merge,
    window_digest,
)
from tile_assets.core.store import Store
from tile_assets.core.types import SceneInfo, TileResult, TileWindow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergedScene:
    """What the merge wrote, and a result per planned tile (findings counted, not held)."""

    results: tuple[TileResult, ...]
    """One per window, in manifest order; cached tiles without their findings."""
    findings_per_tile: dict[str, int]
    findings: int
    findings_before_merge: int
    counts_by_label: dict[str, int]
    updated: bool = False
    """Only what new tiles reach was merged again; the previous file's other rows were kept."""


def no_result(window: TileWindow) -> TileResult:
    """A planned tile that is neither cached nor reported failed (its result was lost)."""
    return TileResult(window.tile_id, "failed", error_type="NoResult", error_message="no result recorded")


class CachedScene:
    """A scene's cached tile results gathered for its merge into `findings_uri`: results in memory,
    findings spooled by tile row (or held, when an earlier merge is there to update).

    Use it as a context manager (the spool's scratch folder lives as long
    as the block); `add` one cache view or more, then `merge_into` once.
    """

    def __init__(self, windows: Sequence[TileWindow], store: Store, findings_uri: str) -> None:
        self.windows = tuple(windows)
        self.store = store
        self.findings_uri = findings_uri
        self.cached: dict[str, TileResult] = {}
        self.chunk_of: dict[str, str] = {}
        """The cache file each cached tile came from."""
        self.per_tile: Counter[str] = Counter()
        self._scratch = tempfile.TemporaryDirectory(prefix="tile-assets-merge-")
        self.rows = RowSpool(self.windows, Path(self._scratch.name))
        self._reader: ThreadPoolExecutor | None = None
        self._previous: Future[tuple[MergeBasis, pa.Table] | None] | None = None
        """The earlier findings.parquet an update starts from, read on a thread while the cache is."""
        if store.exists(findings_uri):
            self._reader = ThreadPoolExecutor(1, thread_name_prefix="previous-findings")
            self._previous = self._reader.submit(read_previous, store, findings_uri)
        self.held: list[pa.Table] | None = [] if self._previous is not None else None
        """Findings not spooled (yet), while an update is possible; None once they go to the spool."""

    def __enter__(self) -> CachedScene:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.shutdown(cancel_futures=True)
        self._scratch.cleanup()

    def add(self, cache: TileCache) -> None:
        """Read every chunk file of `cache` once: results kept, findings held or spooled."""
        for chunk in cache.scene_chunks(self.windows):
            self.cached.update((r.tile_id, r) for r in chunk.results)
            self.chunk_of.update((r.tile_id, chunk.name) for r in chunk.results)
            self.per_tile.update(value_counts(chunk.findings.column("tile_id")))
            if self.held is not None and sum(self.per_tile.values()) <= MAX_UPDATE_FINDINGS:
                self.held.append(chunk.findings.replace_schema_metadata(None))
            else:
                self._spool()
                self.rows.add(chunk.findings)

    def _spool(self) -> None:
        """Send the held findings to the spool: the scene is merged whole, a tile row at a time."""
        for findings in self.held or []:
            self.rows.add(findings)
        self.held = None
        self._previous = None  # no update: its table is let go once read

    def missing(self, failed: Mapping[str, TileResult]) -> tuple[TileWindow, ...]:
        """Windows neither cached nor in `failed`: their results were lost."""
        return tuple(w for w in self.windows if w.tile_id not in self.cached and w.tile_id not in failed)

    def merge_into(
        self,
        scene: SceneInfo,
        failed: Mapping[str, TileResult],
        options: MergeOptions,
        extra: pa.Table | None = None,
        cache_identity: str = "",
    ) -> MergedScene:
        """Merge the gathered findings (plus `extra`) and write them to `findings_uri`.

        Tiles take their result from the cache, else from `failed`, else
        they are a `no_result` failure. The file records what it was merged
        from (`cache_identity`: the cache's folder under the catalog root, the
        grid, the options, each tile's cache file); when
        the file already there was merged from the same findings minus some
        tiles' (a rerun after failures), only what those tiles' findings
        reach is merged again (`update_merge`).
        """
        labels: Counter[str] = Counter()

        def counted(merged: Iterable[pa.Table]) -> Iterator[pa.Table]:
            for table in merged:
                labels.update(value_counts(table.column("label")))
                yield table

        by_id = {w.tile_id: w for w in self.windows}
        basis = MergeBasis(
            cache_identity, window_digest(self.windows), asdict(options), dict(self.chunk_of), extra is not None
        )
        before = sum(self.per_tile.values())
        updated = self._update(scene, basis, options) if cache_identity else None
        if updated is None:
            self._spool()
            merged: Iterable[pa.Table] = merge_scene(
                self.rows.top_first(), by_id, scene.width, scene.height, options, extra
            )
        else:
            merged = updated
        metadata = {BASIS_METADATA: basis.to_json()} if cache_identity else None
        written = write_findings(self.store, self.findings_uri, scene, counted(merged), metadata)
        results = tuple(
            self.cached.get(w.tile_id) or failed.get(w.tile_id) or no_result(w) for w in self.windows
        )
        log.info(
            "%s: %d findings merged to %d (%s)",
            scene.partition_key, before, written, "updated" if updated is not None else "whole scene",
        )
        return MergedScene(
            results=results,
            findings_per_tile=dict(self.per_tile),
            findings=written,
            findings_before_merge=before,
            counts_by_label=dict(sorted(labels.items())),
            updated=updated is not None,
        )

    def _update(self, scene: SceneInfo, basis: MergeBasis, options: MergeOptions) -> list[pa.Table] | None:
        """The parts of an updated merge (kept rows, findings merged again), or None to merge the whole scene."""
        if self._previous is None:  # no earlier file, or the findings went to the spool
            return None
        previous = self._previous.result()
        new_tiles = previous[0].new_tiles(basis) if previous is not None else None
        if previous is None or new_tiles is None:
            return None
        # In the order read: the merge's result does not depend on its input's order (`merge._total_order`).
        raw = pa.concat_tables(self.held or [empty_findings()])
        tiles = TileBoxes.of({w.tile_id: w for w in self.windows}, scene.width, scene.height)
        kept, merged = update_merge(previous[1], raw, new_tiles, tiles, options)
        return [kept, merged]


_SPOOL_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd")
"""Compressed, the spool of a 100 Mpix NAIP scene's 122,826 findings takes 5.2 MB of scratch
space instead of 23.4 (about 40 bytes a finding), at no measurable cost in time."""
ROW_FLUSH = 8_192
"""Findings a tile row gathers in memory before they go to its file as one record batch.
Written as they came (a chunk's few findings per row), 2,401 one-finding tiles cost 1.6 s
of per-batch compression and headers (1.3 KB a finding on disk) instead of 0.05 s."""
MAX_PENDING = 32_768
"""Findings added (~6 MB) before every row is flushed: what the spool holds in memory, plus a chunk."""


class RowSpool:
    """Findings regrouped by the tile row they come from, buffered, then in Arrow IPC files until read back top first.

    Local scratch for one merge (deleted with its folder), not data at rest.
    """

    def __init__(self, windows: Sequence[TileWindow], folder: Path) -> None:
        self.folder = folder
        self.tops = sorted({w.row_off for w in windows})
        row_of_top = {top: i for i, top in enumerate(self.tops)}
        self.tile_ids = pa.array([w.tile_id for w in windows], pa.string())
        self.row_of_tile = np.array([row_of_top[w.row_off] for w in windows], dtype=np.int64)
        self.files: dict[int, list[Path]] = {}
        self.pending: dict[int, list[pa.Table]] = {}
        self.pending_count: Counter[int] = Counter()
        self.held = 0
        """Findings added since every row was last flushed: the buffers' slices keep
        those chunks alive, so this, not what is still pending, bounds memory."""

    def add(self, findings: pa.Table) -> None:
        """Append findings (of tiles among the spool's windows) to the buffers of their tile rows."""
        if not len(findings):
            return
        at = pc.index_in(findings.column("tile_id"), value_set=self.tile_ids).to_numpy()
        order = np.argsort(self.row_of_tile[at], kind="stable")
        rows = self.row_of_tile[at][order]
        # One copy in row order, buffered as slices: a take per row cost more than the rest of the spool.
        findings = findings.replace_schema_metadata(None).take(order)
        starts = np.flatnonzero(np.diff(rows, prepend=-1))
        for start, stop in zip(starts.tolist(), [*starts[1:].tolist(), len(rows)], strict=True):
            row = int(rows[start])
            self.pending.setdefault(row, []).append(findings.slice(start, stop - start))
            self.pending_count[row] += stop - start
            if self.pending_count[row] >= ROW_FLUSH:
                self._flush(row)
        self.held += len(findings)
        if self.held >= MAX_PENDING:
            for row in list(self.pending):
                self._flush(row)
            self.held = 0

    def _flush(self, row: int) -> None:
        """Write a row's buffered findings to a file of their own.

        A file per flush, closed at once: a writer kept open per row would hold
        a file descriptor per tile row (hundreds on a huge scene) until the merge.
        """
        table = pa.concat_tables(self.pending.pop(row)).combine_chunks()
        del self.pending_count[row]
        parts = self.files.setdefault(row, [])
        path = self.folder / f"row-{row:05d}-{len(parts):04d}.arrow"
        with pa.ipc.new_file(str(path), table.schema, options=_SPOOL_OPTIONS) as writer:
            writer.write_table(table)
        parts.append(path)

    def top_first(self) -> Iterator[tuple[pa.Table, float]]:
        """Each tile row's findings, top row first, with the next row's top as frontier (see `merge_scene`).

        A row never flushed comes straight from its buffer.
        """
        for row, top in enumerate(self.tops):
            frontier = float(self.tops[row + 1]) if row + 1 < len(self.tops) else float("inf")
            parts = []
            for path in self.files.pop(row, []):
                with pa.OSFile(str(path)) as source:
                    parts.append(pa.ipc.open_file(source).read_all())
                path.unlink()
            parts.extend(self.pending.pop(row, []))
            if parts:
                yield pa.concat_tables(parts).combine_chunks(), frontier
