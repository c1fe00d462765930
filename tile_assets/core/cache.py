"""Tile-result cache keyed by content: (source version, window, model identity).

A rerun finds every tile that already succeeded here and infers only the
rest; a new image version or a new model name/version/params misses.
Failed tiles are never cached, so a rerun retries them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from tile_assets.core.errors import StoreError, TransientStoreError
from tile_assets.core.keys import tile_cache_key
from tile_assets.core.store import Store, join_uri
from tile_assets.core.types import TileResult, TileWindow

log = logging.getLogger(__name__)

WRITERS = 4
"""Entries written at once in the background: a local fsync (~1 ms) or an S3 PUT per
tile would otherwise add its latency to every tile of the batch."""

Put = Callable[[TileWindow, TileResult], None]


@dataclass(frozen=True)
class TileCache:
    """Per-tile JSON results under `<catalog>/cache/<model_key>/<fingerprint>/`."""

    store: Store
    catalog: str
    model_key: str
    fingerprint: str
    run_group: str = ""
    """Root run id of the run using the cache: entries it wrote itself (an earlier
    attempt of a retried step, a killed run it re-executes) are its own work,
    not hits from an earlier run."""

    @property
    def prefix(self) -> str:
        version = self.fingerprint.replace(":", "-")
        return join_uri(self.catalog, "cache", self.model_key, version)

    def uri(self, window: TileWindow) -> str:
        return join_uri(self.prefix, f"{tile_cache_key(self.fingerprint, window)}.json")

    def get(self, window: TileWindow) -> TileResult | None:
        """The cached result of a tile (`from_cache` unless this run group wrote it), or None when never done."""
        uri = self.uri(window)
        try:
            data = json.loads(self.store.read_bytes(uri))
        except TransientStoreError:
            raise
        except StoreError:
            return None
        except ValueError:
            log.warning("ignoring unreadable cache entry %s", uri)
            return None
        own = bool(self.run_group) and data.get("run_group") == self.run_group
        return TileResult.from_dict({**data, "tile_id": window.tile_id, "from_cache": not own})

    def has(self, window: TileWindow) -> bool:
        """Whether a tile has an entry (one stat or HEAD, nothing parsed): enough to plan work."""
        return self.store.exists(self.uri(window))

    def put(self, window: TileWindow, result: TileResult) -> None:
        """Remember a successful tile; failures are never cached."""
        if result.status != "ok":
            return
        entry = {**result.to_dict(), "from_cache": False, "run_group": self.run_group}
        payload = json.dumps(entry, sort_keys=True).encode()
        self.store.write_bytes(self.uri(window), payload, "application/json")

    @contextmanager
    def writer(self) -> Iterator[Put]:
        """A `put` that writes in the background while the batch reads on.

        Every entry is written by the end of the block, and a failed write is
        raised there; if the block itself raises, the writes still finish
        (tiles done stay cached for the retry) and that error goes on.
        """
        with ThreadPoolExecutor(WRITERS, thread_name_prefix="tile-cache") as pool:
            pending: list[Future[None]] = []
            yield lambda window, result: pending.append(pool.submit(self.put, window, result))
            for future in pending:
                future.result()
