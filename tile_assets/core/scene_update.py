"""A rerun's merge: only the groups of findings that the rerun's new tiles can touch are merged again.

A rerun after failures infers the failed tiles and takes the rest from the
cache; merging the whole scene again would redo, for every cached finding,
work whose result is already in findings.parquet (most of a rerun's time
with a model that reports hundreds of findings a tile). findings.parquet
records what it was merged from (`MergeBasis`, in its Parquet metadata);
when a rerun's findings are that basis plus the findings of new tiles,
`update_merge` merges again only what the new findings can reach and keeps
the previous file's other rows.

That the other tiles' findings are the ones merged before is checked, not
assumed: the basis names the cache file each tile came from, and cache
files are named after their content (`cache._chunk_name`), so a tile
inferred again with other findings makes the whole scene merge again.

Why it is exact: the merge decides each connected group of overlapping
findings (same label unless class-agnostic) on its own (see
`scene_merge`), and every row it writes lies inside the bounding box of
its group. A group without new findings was a group of the previous merge
too, so its rows are in the previous file. Groups are widened into
clusters whose bounding boxes overlap; a cluster holding a new finding is
merged again, whole, and a previous row is dropped when it overlaps the
box of a group in such a cluster (a row with an area overlaps its own
group's box; one without an area stands alone, and is new if its group
is touched). Rows of the other clusters overlap none of those boxes, so
they are kept as they were.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Mapping, Sequence, Set
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tile_assets.core.borders import TileBoxes
from tile_assets.core.errors import StoreError, TransientStoreError
from tile_assets.core.findings_table import FINDINGS_SCHEMA, table_boxes
from tile_assets.core.merge import overlapping_pairs, string_codes
from tile_assets.core.scene_merge import MergeOptions, merge_groups, overlap_groups
from tile_assets.core.store import Store
from tile_assets.core.types import TileWindow

log = logging.getLogger(__name__)

BASIS_METADATA = "tile_assets:merged_from"
"""findings.parquet metadata key of its `MergeBasis` (JSON)."""
MAX_UPDATE_FINDINGS = 1_000_000
"""Raw findings held in memory at most for an update (~150 MB); larger scenes merge whole, a tile row at a time."""


@dataclass(frozen=True)
class MergeBasis:
    """What a findings.parquet was merged from: which cache, which tiles of which grid, how."""

    cache: str
    """The tile cache's folder under the catalog root (`TileCache.identity`): model identity and
    source version; a catalog moved or named by another path keeps it."""
    grid: str
    """Digest of the tile windows (`window_digest`)."""
    options: dict
    tiles: Mapping[str, str]
    """Tiles whose cached findings went in, each with the name of the cache file they came from
    (content-derived: a tile inferred again with other findings comes from another file)."""
    full_image_pass: bool

    def to_json(self) -> str:
        chunks = sorted(set(self.tiles.values()))
        index = {name: i for i, name in enumerate(chunks)}
        tiles = {tile: index[name] for tile, name in sorted(self.tiles.items())}
        return json.dumps({**asdict(self), "chunks": chunks, "tiles": tiles}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> MergeBasis:
        raw = json.loads(text)
        chunks = list(raw["chunks"])
        tiles = {str(tile): chunks[i] for tile, i in raw["tiles"].items()}
        return cls(raw["cache"], raw["grid"], dict(raw["options"]), tiles, bool(raw["full_image_pass"]))

    def new_tiles(self, now: MergeBasis) -> frozenset[str] | None:
        """The tiles `now` merges on top of this basis, or None when `now` is not this basis plus new
        tiles (other cache, grid, options; a full-image pass; a tile gone or read from another file)."""
        same = (self.cache, self.grid, self.options, self.full_image_pass) == (
            now.cache, now.grid, now.options, now.full_image_pass
        )
        if not same or now.full_image_pass or any(now.tiles.get(t) != name for t, name in self.tiles.items()):
            return None
        return frozenset(now.tiles.keys() - self.tiles.keys())


def window_digest(windows: Sequence[TileWindow]) -> str:
    """A name for a tile grid: its windows, in order."""
    text = ";".join(f"{w.tile_id}:{w.col_off},{w.row_off},{w.width},{w.height}" for w in windows)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def read_previous(store: Store, uri: str) -> tuple[MergeBasis, pa.Table] | None:
    """The basis and findings (their columns only) of an earlier findings.parquet; None if there is
    none or it does not say what it was merged from (then the scene is merged whole)."""
    if not store.exists(uri):
        return None
    try:
        parquet = pq.ParquetFile(io.BytesIO(store.read_bytes(uri)))
        basis = MergeBasis.from_json((parquet.metadata.metadata or {})[BASIS_METADATA.encode()])
        return basis, parquet.read(columns=FINDINGS_SCHEMA.names, use_threads=False)
    except TransientStoreError:
        raise
    except (StoreError, pa.ArrowException, KeyError, ValueError, TypeError) as exc:
        log.warning("%s: not updatable (%s); the scene is merged whole", uri, exc)
        return None


def update_merge(
    previous: pa.Table, raw: pa.Table, new_tiles: Set[str], tiles: TileBoxes, options: MergeOptions
) -> tuple[pa.Table, pa.Table]:
    """The rows of `previous` to keep and the merge of the findings the new tiles reach.

    `previous`: findings.parquet as the merge of `raw` without the findings
    of `new_tiles` wrote it (any columns, the findings' among them); `raw`:
    every finding now. Both returned tables have the findings' columns;
    together they are what merging all of `raw` gives.
    """
    raw_codes, previous_codes = _label_codes(options.class_agnostic, raw, previous)
    boxes = table_boxes(raw)
    n_groups, group = overlap_groups(boxes, raw_codes)
    group_boxes = _group_boxes(boxes, group, n_groups)
    group_codes = np.zeros(n_groups, dtype=np.int64)
    if raw_codes is not None:
        group_codes[group] = raw_codes  # one label per group when labels matter

    new = pc.is_in(raw.column("tile_id"), value_set=pa.array(sorted(new_tiles), pa.string()))
    touched = np.zeros(n_groups, dtype=bool)
    touched[group[new.to_numpy(zero_copy_only=False)]] = True
    n_clusters, cluster = overlap_groups(group_boxes, None if raw_codes is None else group_codes)
    hot_cluster = np.zeros(n_clusters, dtype=bool)
    hot_cluster[cluster[touched]] = True
    hot_group = hot_cluster[cluster]

    again = raw.filter(pa.array(hot_group[group]))
    hot = _touches(table_boxes(previous), previous_codes, group_boxes[hot_group], group_codes[hot_group])
    kept = previous.filter(pa.array(~hot))
    log.info(
        "update: %d of %d findings (%d of %d groups) merged again; %d of %d previous rows kept",
        len(again), len(raw), int(hot_group.sum()), n_groups, len(kept), len(previous),
    )
    merged = merge_groups(again, tiles, options) if len(again) else again
    return kept.select(FINDINGS_SCHEMA.names).cast(FINDINGS_SCHEMA), merged


def _label_codes(
    class_agnostic: bool, raw: pa.Table, previous: pa.Table
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Label codes of `raw` and `previous`, shared (None when labels do not matter)."""
    if class_agnostic:
        return None, None
    labels = pa.chunked_array([t.column("label").combine_chunks() for t in (raw, previous)], pa.string())
    codes, _ = string_codes(labels)
    return codes[: len(raw)], codes[len(raw) :]


def _group_boxes(boxes: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """The bounding box of each group's boxes."""
    out = np.empty((n_groups, 4))
    out[:, :2], out[:, 2:] = np.inf, -np.inf
    for side, reduce in enumerate((np.minimum, np.minimum, np.maximum, np.maximum)):
        reduce.at(out[:, side], group, boxes[:, side])
    return out


def _touches(rows: np.ndarray, row_codes: np.ndarray | None, hot: np.ndarray, hot_codes: np.ndarray) -> np.ndarray:
    """Which of `rows` overlap one of the `hot` group boxes, label for label."""
    both = np.concatenate([rows, hot])
    codes = None if row_codes is None else np.concatenate([row_codes, hot_codes])
    left, right, _ = overlapping_pairs(both, codes)
    n = len(rows)
    across = (left < n) & (right >= n)
    out = np.zeros(n, dtype=bool)
    out[left[across]] = True
    return out
