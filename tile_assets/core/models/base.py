"""The contract every per-tile model meets, so backends plug in without the pipeline changing.

A model sees a batch of `TileImage`s and returns one `TilePrediction` per
tile, in the same order. Findings are in TILE-LOCAL pixel coordinates; the
caller offsets them by the tile window to scene coordinates, so a model never
needs to know where its tile sits in the scene.

Failure isolation is the caller's job, which lets models process a batch
vectorized: when `predict` on a batch raises, the caller calls it again on
each tile alone, so a `ModelError` raised for one bad tile fails only that
tile. A `TransientModelError` (throttled API, timeout) is retried instead.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol, runtime_checkable

from tile_assets.core.errors import ModelError
from tile_assets.core.image import TileImage
from tile_assets.core.types import Finding


@dataclass(frozen=True)
class TilePrediction:
    """What a model says about one tile.

    `findings` are in tile-local pixel coordinates; `cover` maps a cover class
    (e.g. "vegetation") to the fraction of the tile's VALID pixels in it.
    """

    findings: tuple[Finding, ...] = ()
    cover: dict[str, float] = field(default_factory=dict)


@runtime_checkable
class TileModel(Protocol):
    """A stateless, thread-safe per-tile model; name, version and params form its cache identity."""

    @property
    def name(self) -> str:
        """Registry name, e.g. "classical"."""
        ...

    @property
    def version(self) -> str:
        """Bumped whenever the same params could give different output."""
        ...

    def params(self) -> dict[str, Any]:
        """Every setting that changes the output, JSON-able: it enters the tile cache key."""
        ...

    def predict(self, tiles: Sequence[TileImage]) -> list[TilePrediction]:
        """One prediction per tile, same order; raise `ModelError` for a tile it cannot handle."""
        ...


def require(module: str, extra: str) -> ModuleType:
    """Import an optional heavy dependency, or fail with a `ModelError` naming the extra to install.

    Models call this inside their constructor or `predict`, never at module
    import, so the registry can list every model without its dependencies.
    """
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelError(
            module,
            f"not installed; install the '{extra}' extra: pip install 'tile_assets[{extra}]'",
        ) from exc
