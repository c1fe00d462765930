"""Scanning an inbox prefix for new, changed and deleted images, a bounded slice at a time.

A pass walks the whole prefix in key order, `max_objects` per call, resuming
after the last key handled; versions are ETags on S3 and content hashes for
local files (hashed only when size or mtime changed). Nothing here depends on
timestamps, so objects with equal LastModified are never missed.
"""

from __future__ import annotations

import base64
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

from tile_assets.core.keys import scene_key
from tile_assets.core.source_version import Fingerprint, version_source
from tile_assets.core.store import Store, is_image_name, is_s3_uri
from tile_assets.core.types import ObjectInfo


@dataclass
class InboxState:
    """The sensor cursor: where the current pass is, and each known scene's version."""

    after: str = ""
    known: dict[str, list[str]] = field(default_factory=dict)
    """partition key -> [listing etag, version]"""
    seen: list[str] = field(default_factory=list)
    """partition keys met so far in the current pass (for deletions)"""

    def encode(self) -> str:
        raw = json.dumps(
            {"after": self.after, "known": self.known, "seen": self.seen}, sort_keys=True
        ).encode()
        return base64.b64encode(zlib.compress(raw, 9)).decode()

    @classmethod
    def decode(cls, cursor: str | None) -> InboxState:
        if not cursor:
            return cls()
        data = json.loads(zlib.decompress(base64.b64decode(cursor)))
        return cls(after=data["after"], known=data["known"], seen=data["seen"])


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
