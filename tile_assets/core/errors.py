"""Typed errors: one base, specific subclasses carrying the object and the reason.

`TransientError` is the branch retry policies key on: storage throttling,
timeouts and dropped connections. Everything else is permanent for the object.
"""

from __future__ import annotations


class TileAssetsError(Exception):
    """Base of every error raised by tile_assets; names the object and the reason."""

    def __init__(self, obj: str, reason: str) -> None:
        self.obj = obj
        self.reason = reason
        super().__init__(f"{obj}: {reason}")


class InvalidSourceError(TileAssetsError):
    """The object is not a readable image (empty, truncated, not a raster)."""


class UnsupportedRasterError(TileAssetsError):
    """The image reads but is outside what the pipeline accepts (dtype, bands, size)."""


class RasterReadError(TileAssetsError):
    """Pixels could not be read from an otherwise valid image (corrupt blocks)."""


class ModelError(TileAssetsError):
    """A tile model failed on a tile or could not be loaded."""


class StoreError(TileAssetsError):
    """A storage operation failed permanently (missing object, denied, bad URI)."""


class SourceChangedError(TileAssetsError):
    """The source object changed while it was being processed."""


class TransientError(TileAssetsError):
    """A failure worth retrying: throttling, timeouts, connection errors."""


class TransientStoreError(TransientError, StoreError):
    """A storage operation failed in a way that may succeed on retry."""


class TransientModelError(TransientError, ModelError):
    """A model backend failed in a way that may succeed on retry (throttled API)."""


class ModelTimeoutError(TransientModelError):
    """A model's predict call did not return in time (hung backend, stuck native code)."""


class RejectedSceneError(TileAssetsError):
    """The content gate turned the image away (validation, area policy, blocklist, moderation).

    Final for this version of the image under this gate policy: `check` names
    the check that rejected it, `reasons` say why, and `policy` fingerprints
    the gate configuration ("" when the rejection does not depend on it), so
    a retry is due only when the image or the policy changes.
    """

    def __init__(self, obj: str, check: str, reasons: tuple[str, ...], policy: str = "") -> None:
        self.check = check
        self.reasons = reasons
        self.policy = policy
        super().__init__(obj, f"rejected by {check}: {'; '.join(reasons)}")


class PolicyError(TileAssetsError):
    """A gate policy file (area GeoJSON, blocklist) is missing or malformed."""
