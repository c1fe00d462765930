"""`blocklist`: images listed by checksum, or by perceptual hash so re-encoded copies are caught.

The list is plain text, one entry a line, an optional note after it:

    sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  leaked scan
    etag:5d41402abc4b2a76b9719d911017c592                                  same, on S3
    phash:c3d1b8e4a09f5e27                                                 and its copies

`sha256:` and `etag:` match the scene's fingerprint exactly (sha256 for
local files, the ETag on S3); `phash:` matches any image whose perceptual
hash is within `max_distance` bits. Blank lines and `#` comments are ignored.
`python -m tile_assets.core.gate.blocklist IMAGE...` prints the entries for images.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from tile_assets.core.errors import PolicyError
from tile_assets.core.gate.base import CheckOutcome, Rendition
from tile_assets.core.gate.phash import hamming, perceptual_hash
from tile_assets.core.gate.rendition import read_rendition
from tile_assets.core.store import open_store
from tile_assets.core.types import SceneInfo

EntryKind = Literal["sha256", "etag", "phash"]
DEFAULT_MAX_DISTANCE = 8
"""Bits a pHash may differ and still match: JPEG re-encodes of the samples differ by 0-2,
different sample images by 26 or more."""

_ENTRY = re.compile(r"^(sha256|etag|phash):([0-9A-Fa-f-]+)(?:\s+(.*))?$")
_PHASH = re.compile(r"^[0-9a-f]{16}$")


@dataclass(frozen=True)
class BlockedImage:
    """One blocklist entry: how it matches, the value, and the note kept with it."""

    kind: EntryKind
    value: str
    note: str = ""

    def label(self) -> str:
        return f"{self.kind}:{self.value}" + (f" ({self.note})" if self.note else "")


def parse_blocklist(text: str, source: str) -> tuple[BlockedImage, ...]:
    """The entries of a blocklist file; a malformed line is a `PolicyError` naming it."""
    entries = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        match = _ENTRY.match(line)
        if match is None:
            raise PolicyError(
                source, f"line {number}: expected sha256:, etag: or phash: and a hex value"
            )
        kind, value, note = match.group(1), match.group(2).lower(), (match.group(3) or "").strip()
        if kind == "phash" and not _PHASH.match(value):
            raise PolicyError(source, f"line {number}: a phash is 16 hex digits")
        entries.append(BlockedImage(cast(EntryKind, kind), value, note))
    return tuple(entries)


@dataclass(frozen=True)
class BlocklistCheck:
    """Rejects images whose fingerprint is listed or whose pHash is near a listed one."""

    entries: Sequence[BlockedImage]
    max_distance: int = DEFAULT_MAX_DISTANCE
    name: str = "blocklist"
    _checksums: dict[str, BlockedImage] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        checksums = {f"{e.kind}:{e.value}": e for e in self.entries if e.kind != "phash"}
        object.__setattr__(self, "_checksums", checksums)

    def check(self, scene: SceneInfo, rendition: Rendition) -> CheckOutcome:
        details: dict[str, Any] = {"fingerprint": scene.fingerprint}
        listed = self._checksums.get(scene.fingerprint.lower())
        if listed is not None:
            return CheckOutcome(
                self.name, False, (f"checksum is blocklisted: {listed.label()}",), details
            )
        hashes = [e for e in self.entries if e.kind == "phash"]
        if not hashes:
            return CheckOutcome(self.name, True, (), details)
        phash = perceptual_hash(rendition())
        distance, entry = min(((hamming(phash, e.value), e) for e in hashes), key=lambda t: t[0])
        details |= {"phash": phash, "nearest_phash_distance": distance}
        if distance > self.max_distance:
            return CheckOutcome(self.name, True, (), details)
        reason = (
            f"perceptual hash {phash} is {distance} bit(s) from blocklisted {entry.label()} "
            f"(limit {self.max_distance})"
        )
        return CheckOutcome(self.name, False, (reason,), details)


def blocklist_entries(uri: str) -> list[str]:
    """The lines that would blocklist the image at `uri` (path or s3://): its fingerprint and pHash."""
    store = open_store(uri)
    return [store.fingerprint(uri), f"phash:{perceptual_hash(read_rendition(store, uri))}"]


if __name__ == "__main__":
    for path in sys.argv[1:]:
        for entry in blocklist_entries(path):
            print(f"{entry}  {path}")
