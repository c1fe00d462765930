"""Scanning an inbox prefix for new, changed and deleted images, a bounded slice at a time.

A pass walks the whole prefix in key order, `max_objects` per call, resuming
after the last key handled; versions are ETags on S3 and content hashes for
local files (hashed only when size or mtime changed). Nothing here depends on
timestamps, so objects with equal LastModified are never missed.

What a pass knows (each scene's version, the scenes seen so far) grows with
the inbox, ~50 bytes a scene; Dagster stores a sensor's cursor with every
tick, so that part lives in a file beside the catalog (`InboxState.save`), named
after its content, and the cursor only names the file: a tick whose result
Dagster never stores leaves the cursor on the file before it.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from tile_assets.core.errors import StoreError, TransientStoreError
from tile_assets.core.keys import scene_key
from tile_assets.core.source_version import Fingerprint, version_source
from tile_assets.core.store import Store, is_image_name, is_s3_uri, join_uri
from tile_assets.core.types import ObjectInfo

log = logging.getLogger(__name__)

STATE_KEEP_S = 3600
"""Age after which a state file no cursor in use names is deleted. Younger ones are kept: another
evaluation of the sensor (the UI's "test sensor") may have written one its cursor names."""


@dataclass
class InboxState:
    """The sensor's scan state: where the current pass is (kept in the cursor), each known scene's
    version and the scenes seen in this pass (kept in a state file the cursor names)."""

    after: str = ""
    known: dict[str, list[str]] = field(default_factory=dict)
    """partition key -> [listing etag, version]"""
    seen: list[str] = field(default_factory=list)
    """partition keys met so far in the current pass (for deletions)"""

    def save(self, store: Store, folder: str, cursor: str | None = None) -> str:
        """Write `known` and `seen` to `folder` in a file named after its content; the cursor naming it.

        `cursor` is the one this state was loaded from (None when its file
        was gone): its file is not written again when unchanged, and is kept
        while older files that no cursor names are deleted (`STATE_KEEP_S`).
        """
        body = gzip.compress(json.dumps({"known": self.known, "seen": self.seen}, sort_keys=True).encode(), mtime=0)
        name = f"{hashlib.sha256(body).hexdigest()[:32]}.json.gz"
        previous = _state_name(cursor)
        if name != previous:
            store.write_bytes(join_uri(folder, name), body, "application/gzip")
        _prune_states(store, folder, keep={name, previous})
        return json.dumps({"after": self.after, "state": name}, sort_keys=True)

    @classmethod
    def load(cls, store: Store, folder: str, cursor: str | None) -> InboxState | None:
        """The state a cursor names; None when its file is gone or unreadable (the caller starts over).

        A cursor from before the state moved to files holds the state itself.
        """
        if not cursor:
            return cls()
        if not cursor.startswith("{"):
            data = json.loads(zlib.decompress(base64.b64decode(cursor)))
            return cls(after=data["after"], known=data["known"], seen=data["seen"])
        position = json.loads(cursor)
        uri = join_uri(folder, position["state"])
        try:
            data = json.loads(gzip.decompress(store.read_bytes(uri)))
            return cls(after=position["after"], known=data["known"], seen=data["seen"])
        except TransientStoreError:
            raise
        except (StoreError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: sensor state unreadable (%s)", uri, exc)
            return None


def state_folder(catalog: str, inbox: str) -> str:
    """Where the sensor's state for `inbox` lives: beside the catalog, a folder per inbox."""
    return join_uri(catalog, "_sensor", hashlib.sha256(inbox.encode()).hexdigest()[:16])


def _state_name(cursor: str | None) -> str | None:
    return json.loads(cursor)["state"] if cursor and cursor.startswith("{") else None


def _prune_states(store: Store, folder: str, keep: set[str | None]) -> None:
    """Delete the state files of `folder` that are not in `keep` and older than `STATE_KEEP_S`."""
    now = time.time()
    for obj in store.list(folder):
        if obj.uri.rsplit("/", 1)[-1] not in keep and now - obj.last_modified > STATE_KEEP_S:
            store.delete(obj.uri)


@dataclass(frozen=True)
class SceneChange:
    """An image to (re)process: its partition key, object and version, and the content hash
    that version came from (local files; None on S3, where the version is the ETag)."""

    partition_key: str
    obj: ObjectInfo
    version: str
    is_new: bool
    fingerprint: Fingerprint | None = None


@dataclass
class ScanResult:
    changes: list[SceneChange]
    deleted: list[str]
    ignored: list[tuple[str, str]]
    state: InboxState
    pass_complete: bool


def object_version(
    store: Store, obj: ObjectInfo, known: Sequence[Fingerprint] = ()
) -> tuple[str, Fingerprint | None]:
    """The version that names a run (the ETag on S3, a short content hash locally) and the hash it came from.

    A local file whose size and mtime are those a `known` hash was taken at
    is not read again (`version_source`).
    """
    if is_s3_uri(obj.uri):
        return obj.etag, None
    source = version_source(store, obj.uri, known)
    return source.fingerprint.split(":", 1)[1][:16], source.recorded()


def ignore_reason(obj: ObjectInfo) -> str | None:
    """Why a listed object is not an image to process, or None."""
    if obj.uri.endswith("/"):
        return "folder marker"
    if not is_image_name(obj.uri):
        return "not an image suffix"
    if obj.size == 0:
        return "zero-byte object"
    return None


def scan_inbox(store: Store, inbox: str, state: InboxState, max_objects: int = 1000) -> ScanResult:
    """Look at up to `max_objects` listed objects after the cursor; report what changed.

    Returns a new state; the caller persists it only if it acts on the result,
    so an error mid-scan leaves the cursor where it was.
    """
    known = {k: list(v) for k, v in state.known.items()}
    seen = list(state.seen)
    seen_set = set(seen)
    changes: list[SceneChange] = []
    ignored: list[tuple[str, str]] = []
    after = state.after
    listed = 0
    for obj in store.list(inbox, start_after=state.after):
        listed += 1
        after = obj.uri
        reason = ignore_reason(obj)
        if reason:
            ignored.append((obj.uri, reason))
        else:
            key = scene_key(obj.uri)
            if key not in seen_set:
                seen.append(key)
                seen_set.add(key)
            previous = known.get(key)
            if previous is None or previous[0] != obj.etag:
                version, fingerprint = object_version(store, obj)
                if previous is None or previous[1] != version:
                    changes.append(SceneChange(key, obj, version, is_new=previous is None, fingerprint=fingerprint))
                known[key] = [obj.etag, version]
        if listed >= max_objects:
            break
    pass_complete = listed < max_objects
    deleted: list[str] = []
    if pass_complete:
        deleted = sorted(set(known) - seen_set)
        for key in deleted:
            known.pop(key)
        after, seen = "", []
    return ScanResult(
        changes=changes,
        deleted=deleted,
        ignored=ignored,
        state=InboxState(after=after, known=known, seen=seen),
        pass_complete=pass_complete,
    )
