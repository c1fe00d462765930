"""Screening a source image: the format and size validation, then the configured checks.

Validation is the gate's first check: an image that is not a readable,
supported raster is rejected by "validation" with the reason, and no other
check looks at it. Storage and read errors are not rejections; they fail the
scene (and transient ones are retried).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from tile_assets.core.errors import InvalidSourceError, UnsupportedRasterError
from tile_assets.core.gate.base import Gate, GateDecision, validation_outcome
from tile_assets.core.gate.rendition import read_rendition
from tile_assets.core.raster import describe, open_raster
from tile_assets.core.source_version import Fingerprint, version_source
from tile_assets.core.store import Store
from tile_assets.core.types import SceneInfo


@dataclass(frozen=True)
class Screening:
    """What the gate learned: the scene's description (None when validation rejected it) and the verdict."""

    scene: SceneInfo | None
    decision: GateDecision
    fingerprint_reused: bool = False
    """The fingerprint is a recorded one (description or registry), not recomputed (see `version_source`)."""


def screen_source(
    store: Store, uri: str, partition_key: str, gate: Gate, known: Sequence[Fingerprint] = ()
) -> Screening:
    """Validate and describe the image at `uri`, then run `gate` on it; pixels are read only if a check asks.

    A `known` fingerprint (last description, registration) is reused if the object is still that version.
    """
    source = version_source(store, uri, known)
    head = source.head
    try:
        with open_raster(store, uri) as ds:
            described = describe(ds, uri, partition_key, source.fingerprint, head.size)
    except (InvalidSourceError, UnsupportedRasterError) as exc:
        return Screening(None, GateDecision((validation_outcome(exc),), gate.names()), source.reused)
    scene = replace(described, last_modified=head.last_modified, source_version=head.etag)
    return Screening(scene, gate.screen(scene, lambda: read_rendition(store, uri)), source.reused)
