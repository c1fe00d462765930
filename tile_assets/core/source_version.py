"""Which version of a source a run describes: its listing version and content fingerprint.

Hashing a local scene reads the whole file (about a second per GB from a warm
page cache, several cold). Every rerun of an unchanged scene (the retry
schedule, a rerun after failed tiles) paid for it again, and so did the
first run of a new image, hashed once to register it and once more to
describe it. Both the scene's description, `source.json`, and its registry
entry record the listing version their fingerprint was taken at, so while
the file still has that version the fingerprint is reused.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tile_assets.core.errors import StoreError
from tile_assets.core.store import LocalStore, Store
from tile_assets.core.types import ObjectInfo, SceneInfo, _JsonMixin

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fingerprint(_JsonMixin):
    """A content fingerprint of `uri` and the listing version (`ObjectInfo.etag`) it was taken at."""

    uri: str
    source_version: str
    fingerprint: str


@dataclass(frozen=True)
class SourceVersion:
    """An object's listing version (`head`) and content fingerprint, taken in that order."""

    head: ObjectInfo
    fingerprint: str
    reused: bool = False
    """True when the fingerprint was a recorded one instead of computed from the object."""

    def recorded(self) -> Fingerprint:
        """The fingerprint with the version it belongs to, as the registry keeps it."""
        return Fingerprint(self.head.uri, self.head.etag, self.fingerprint)


def version_source(store: Store, uri: str, known: Sequence[Fingerprint] = ()) -> SourceVersion:
    """Head `uri`, then fingerprint it, or reuse a `known` fingerprint taken at this very version.

    Reuse is for local files only, where the fingerprint is a sha256 of the
    whole file; on S3 it is the ETag, as cheap as the head. It assumes what
    make, rsync's quick check and git's index assume, and what `VersionGuard`
    trusts within a run: a file whose size and nanosecond mtime
    (`source_version`) are unchanged has unchanged content. A rewrite that
    keeps the exact size and sets the mtime back to the nanosecond (`touch
    -d`, `cp -p` of another file with the same size and mtime) defeats it:
    pass nothing `known` (`rehash` on `source_images`) to hash regardless.

    The head comes first, so a file changing while it is hashed is recorded
    at its older version and hashed again on the next run.
    """
    head = store.head(uri)
    if isinstance(store, LocalStore):
        for taken in known:
            if taken.uri == uri and taken.source_version and taken.source_version == head.etag:
                return SourceVersion(head, taken.fingerprint, reused=True)
    return SourceVersion(head, store.fingerprint(uri))


def described_fingerprint(catalog_store: Store, source_json_uri: str) -> Fingerprint | None:
    """The fingerprint the scene's last successful `source_images` recorded; None if there is none or it is unreadable.

    Unreadable only costs a hash, so it is logged, not raised.
    """
    if not catalog_store.exists(source_json_uri):
        return None
    try:
        scene = SceneInfo.from_dict(json.loads(catalog_store.read_bytes(source_json_uri)))
        return Fingerprint(scene.uri, scene.source_version, scene.fingerprint)
    except (StoreError, ValueError, TypeError, AttributeError) as exc:
        log.warning("%s: unreadable (%s); the source is hashed again", source_json_uri, exc)
        return None
