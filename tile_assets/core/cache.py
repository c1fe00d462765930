"""Tile-result cache keyed by content: (source version, window, model identity).

A rerun finds every tile that already succeeded here and infers only the
rest; a new image version or a new model name/version/params misses.
Failed tiles are never cached, so a rerun retries them.

Results are written a chunk at a time (a second's work, 256 tiles or 8,192 findings, see
`run_batch`), one Parquet file per chunk: its findings as columns (with each
one's `tile_key`), and in the file's metadata the chunk's tiles (cover,
valid pixels) and run group. A scene of thousands of tiles costs tens to a
few hundred writes (S3 PUTs) instead of thousands. The merge reads the scene
a chunk file at a time (`scene_chunks`), never all findings at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tile_assets.core.catalog import PARQUET_TYPE
from tile_assets.core.errors import StoreError, TransientStoreError
from tile_assets.core.findings_table import FINDINGS_SCHEMA, findings_table, table_findings
from tile_assets.core.keys import tile_cache_key
from tile_assets.core.store import Store, join_uri
from tile_assets.core.types import Finding, TileResult, TileWindow

log = logging.getLogger(__name__)

WRITERS = 2
"""Chunk files written at once in the background, while the batch reads on: a local
fsync or an S3 PUT would otherwise add its latency to every chunk."""

PutChunk = Callable[[Sequence[tuple[TileWindow, TileResult]]], None]


def _digest(keys: Iterable[str]) -> str:
    """A name for a set of tile keys, whatever their order."""
    return hashlib.sha256(",".join(sorted(keys)).encode()).hexdigest()[:24]


def _chunk_name(tiles: dict[str, Any], table: pa.Table) -> str:
    """A chunk file's name from what it holds: its tiles' entries and their findings' bytes.

    The same results make the same name (an attempt that writes a chunk
    again replaces it); a tile inferred again with other findings lands in
    a file of another name, so a merge based on the old file can tell.
    """
    digest = hashlib.sha256(json.dumps(tiles, sort_keys=True).encode())
    for column in table.columns:
        for array in column.chunks:
            for buffer in array.buffers():
                if buffer is not None:
                    digest.update(buffer)
    return digest.hexdigest()[:24]


CHUNK_METADATA = b"tile_assets:chunk"
"""Parquet metadata key of a chunk file's tiles and run group (JSON)."""
TILE_KEY = "tile_key"
_EMPTY_CHUNK = FINDINGS_SCHEMA.append(pa.field(TILE_KEY, pa.string())).empty_table()


def _tile_entries(chunk: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A chunk file's tiles by tile key, each with the run group that wrote them."""
    run_group = chunk.get("run_group", "")
    return {key: {**entry, "run_group": run_group} for key, entry in chunk["tiles"].items()}


@dataclass(frozen=True)
class CachedChunk:
    """What one chunk file holds of a scene's tiles: results (without findings) and the findings."""

    results: tuple[TileResult, ...]
    findings: pa.Table
    name: str
    """The chunk file's name (content-derived, see `_chunk_name`)."""


@dataclass(frozen=True)
class TileCache:
    """Tile results under `<catalog>/cache/<model_key>/<fingerprint>/<batch>/`, a Parquet file per written chunk."""

    store: Store
    catalog: str
    model_key: str
    fingerprint: str
    run_group: str = ""
    """Root run id of the run using the cache: entries it wrote itself (an earlier
    attempt of a retried step, a killed run it re-executes) are its own work,
    not hits from an earlier run."""
    scope: str = ""
    """A batch's own sub-folder (`for_batch`): it writes there and reads only there."""
    _tables: dict[str, pa.Table] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def identity(self) -> str:
        """The cache's folder under the catalog root: model identity and source version, not where the catalog is."""
        return join_uri("cache", self.model_key, self.fingerprint.replace(":", "-"))

    @property
    def prefix(self) -> str:
        return join_uri(self.catalog, self.identity)

    def for_batch(self, windows: Sequence[TileWindow]) -> TileCache:
        """The view of one batch: its chunks go to a folder named after its tiles.

        A batch only ever finds its own tiles in the cache (the plan left out
        those cached before), written by an earlier attempt of the same
        batch; reading just that folder spares each batch the whole scene's
        cache. Reading without a scope still sees every chunk.
        """
        return replace(self, scope=_digest(self.key(w) for w in windows))

    @property
    def folder(self) -> str:
        return join_uri(self.prefix, self.scope) if self.scope else self.prefix

    def key(self, window: TileWindow) -> str:
        return tile_cache_key(self.fingerprint, window)

    @cached_property
    def entries(self) -> dict[str, dict[str, Any]]:
        """Every cached tile of this source version and model, by tile key: its entry and chunk file.

        Read once per cache object, when first needed (a batch or a plan
        reads the cache before it writes anything); only the files'
        metadata is decoded, never their findings.
        """
        found: dict[str, dict[str, Any]] = {}
        for uri in self._chunk_uris():
            read = self._read_chunk(uri)
            if read is None:
                continue
            for key, entry in _tile_entries(read[0]).items():
                found.setdefault(key, {**entry, "uri": uri})
        return found

    def _read_chunk(self, uri: str, findings: bool = False) -> tuple[dict[str, Any], pa.Table | None] | None:
        """A chunk file's tiles and run group, and its findings when asked; None (logged) if unreadable."""
        try:
            parquet = pq.ParquetFile(io.BytesIO(self.store.read_bytes(uri)))
            chunk = json.loads((parquet.metadata.metadata or {})[CHUNK_METADATA])
            if not isinstance(chunk.get("tiles"), dict):
                raise ValueError("no tiles in the chunk's metadata")
            return chunk, parquet.read(use_threads=False) if findings else None
        except TransientStoreError:
            raise
        except (StoreError, pa.ArrowException, ValueError, KeyError, TypeError, AttributeError):  # AttributeError: JSON not an object
            log.warning("ignoring unreadable cache file %s", uri)
            return None

    def _chunk_uris(self) -> list[str]:
        """The chunk files written so far, in name order; none when nothing was ever cached here."""
        try:
            return sorted(o.uri for o in self.store.list(self.folder) if o.uri.endswith(".parquet"))
        except TransientStoreError:
            raise
        except StoreError:  # a local folder that does not exist yet
            return []

    def _findings_of(self, uri: str) -> pa.Table:
        if uri not in self._tables:
            read = self._read_chunk(uri, findings=True)
            self._tables[uri] = read[1] if read and read[1] is not None else _EMPTY_CHUNK
        return self._tables[uri]

    def _result(self, window: TileWindow, entry: dict[str, Any], findings: tuple[Finding, ...] = ()) -> TileResult:
        own = bool(self.run_group) and entry["run_group"] == self.run_group
        return TileResult(
            tile_id=window.tile_id,
            status="ok",
            findings=findings,
            cover=entry.get("cover", {}),
            valid_pixels=entry.get("valid_pixels", 0),
            from_cache=not own,
        )

    def get(self, window: TileWindow, findings: bool = True) -> TileResult | None:
        """The cached result of a tile (`from_cache` unless this run group wrote it), or None when never done.

        With `findings=False` the result comes without its findings and the
        chunk file is not read again (a batch only needs to know it is done).
        """
        key = self.key(window)
        entry = self.entries.get(key)
        if entry is None:
            return None
        if not findings:
            return self._result(window, entry)
        table = self._findings_of(entry["uri"])
        findings = table_findings(table.filter(pc.equal(table.column(TILE_KEY), key)))
        return self._result(window, entry, tuple(findings))

    def has(self, window: TileWindow) -> bool:
        """Whether a tile has an entry: enough to plan work."""
        return self.key(window) in self.entries

    def scene_chunks(self, windows: Sequence[TileWindow]) -> Iterator[CachedChunk]:
        """The cached results and findings of `windows`, a chunk file at a time.

        Each tile comes once (from the first file holding it); tiles of
        other grids cached for the same source are left out.
        """
        by_key = {self.key(w): w for w in windows}
        seen: set[str] = set()
        for uri in self._chunk_uris():
            read = self._read_chunk(uri, findings=True)
            if read is None:
                continue
            chunk, table = read
            entries = {k: e for k, e in _tile_entries(chunk).items() if k in by_key and k not in seen}
            if not entries or table is None:
                continue
            seen.update(entries)
            keep = pc.is_in(table.column(TILE_KEY), value_set=pa.array(list(entries), pa.string()))
            results = tuple(self._result(by_key[k], e) for k, e in entries.items())
            yield CachedChunk(results, table.filter(keep).drop_columns([TILE_KEY]), uri.rsplit("/", 1)[-1])

    def put_chunk(self, done: Sequence[tuple[TileWindow, TileResult]]) -> None:
        """Remember the successful tiles of one chunk in one file; failures are never cached."""
        ok = [(self.key(w), w, r) for w, r in done if r.status == "ok"]
        if not ok:
            return
        tiles = {
            key: {"tile_id": w.tile_id, "cover": dict(r.cover), "valid_pixels": r.valid_pixels, "findings": len(r.findings)}
            for key, w, r in ok
        }
        findings = findings_table([f for _, _, r in ok for f in r.findings])
        keys = [key for key, _, r in ok for _ in r.findings]
        table = findings.append_column(TILE_KEY, pa.array(keys, pa.string()))
        metadata = json.dumps({"run_group": self.run_group, "tiles": tiles}, sort_keys=True)
        buf = io.BytesIO()
        pq.write_table(table.replace_schema_metadata({CHUNK_METADATA: metadata}), buf)
        name = _chunk_name(tiles, table)
        self.store.write_bytes(join_uri(self.folder, f"{name}.parquet"), buf.getvalue(), PARQUET_TYPE)

    @contextmanager
    def writer(self) -> Iterator[PutChunk]:
        """A `put_chunk` that writes in the background while the batch reads on.

        Every chunk is written by the end of the block, and a failed write is
        raised there; if the block itself raises, the writes still finish
        (tiles done stay cached for the retry) and that error goes on.
        """
        with ThreadPoolExecutor(WRITERS, thread_name_prefix="tile-cache") as pool:
            pending: list[Future[None]] = []
            yield lambda done: pending.append(pool.submit(self.put_chunk, list(done)))
            for future in pending:
                future.result()
