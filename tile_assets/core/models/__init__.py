"""Per-tile models: the `TileModel` interface, the entry-point registry and the built-in models."""

from tile_assets.core.models.base import TileModel, TilePrediction, require
from tile_assets.core.models.registry import ENTRY_POINT_GROUP, available_models, load_model

__all__ = [
    "ENTRY_POINT_GROUP",
    "TileModel",
    "TilePrediction",
    "available_models",
    "load_model",
    "require",
]
