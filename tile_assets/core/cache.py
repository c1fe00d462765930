"""Tile-result cache keyed by content: (source version, window, model identity).

A rerun finds every tile that already succeeded here and infers only the
rest; a new image version or a new model name/version/params misses.
Failed tiles are never cached, so a rerun retries them.

Results are written a predict chunk at a time, one JSON file per chunk
(`{"run_group": ..., "tiles": {tile key: result}}`), not one per tile: a
scene of thousands of tiles costs a few hundred writes (S3 PUTs) instead of
thousands, and reading the whole cache back is one listing plus those files.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any

from tile_assets.core.errors import StoreError, TransientStoreError
from tile_assets.core.keys import tile_cache_key
from tile_assets.core.store import Store, join_uri
from tile_assets.core.types import TileResult, TileWindow

log = logging.getLogger(__name__)

WRITERS = 2
"""Chunk files written at once in the background, while the batch reads on: a local
fsync or an S3 PUT would otherwise add its latency to every chunk."""

PutChunk = Callable[[Sequence[tuple[TileWindow, TileResult]]], None]


def _digest(keys: Iterable[str]) -> str:
    """A name for a set of tile keys, whatever their order."""
    return hashlib.sha256(",".join(sorted(keys)).encode()).hexdigest()[:24]


@dataclass(frozen=True)
class TileCache:
    """Tile results under `<catalog>/cache/<model_key>/<fingerprint>/<batch>/`, a JSON file per written chunk."""

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

    @property
    def prefix(self) -> str:
        version = self.fingerprint.replace(":", "-")
        return join_uri(self.catalog, "cache", self.model_key, version)

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
        """Every cached tile of this source version and model, by tile key, as written.

        Read once per cache object, when first needed (a batch or a plan
        reads the cache before it writes anything).
        """
        found: dict[str, dict[str, Any]] = {}
        for uri in self._chunk_uris():
            try:
                chunk = json.loads(self.store.read_bytes(uri))
                tiles = chunk["tiles"]
            except TransientStoreError:
                raise
            except (StoreError, ValueError, KeyError, TypeError):
                log.warning("ignoring unreadable cache file %s", uri)
                continue
            for key, entry in tiles.items():
                found[key] = {**entry, "run_group": chunk.get("run_group", "")}
        return found

    def _chunk_uris(self) -> list[str]:
        """The chunk files written so far; none when nothing was ever cached here."""
        try:
            return [o.uri for o in self.store.list(self.folder) if o.uri.endswith(".json")]
        except TransientStoreError:
            raise
        except StoreError:  # a local folder that does not exist yet
            return []

    def get(self, window: TileWindow) -> TileResult | None:
        """The cached result of a tile (`from_cache` unless this run group wrote it), or None when never done."""
        entry = self.entries.get(self.key(window))
        if entry is None:
            return None
        own = bool(self.run_group) and entry["run_group"] == self.run_group
        data = {k: v for k, v in entry.items() if k != "run_group"}
        return TileResult.from_dict({**data, "tile_id": window.tile_id, "from_cache": not own})

    def has(self, window: TileWindow) -> bool:
        """Whether a tile has an entry: enough to plan work."""
        return self.key(window) in self.entries

    def put_chunk(self, done: Sequence[tuple[TileWindow, TileResult]]) -> None:
        """Remember the successful tiles of one chunk in one file; failures are never cached."""
        tiles = {
            self.key(window): {**result.to_dict(), "from_cache": False}
            for window, result in done
            if result.status == "ok"
        }
        if not tiles:
            return
        name = _digest(tiles)
        payload = json.dumps({"run_group": self.run_group, "tiles": tiles}, sort_keys=True).encode()
        self.store.write_bytes(join_uri(self.folder, f"{name}.json"), payload, "application/json")

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
