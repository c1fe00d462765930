"""The pixel container a model sees: one tile's masked array and what its bands mean.

It lives only inside one step (read, predict, drop); it never crosses steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tile_assets.core.errors import ModelError
from tile_assets.core.types import TileWindow


@dataclass
class TileImage:
    """One tile's pixels: `data` is (bands, rows, cols), masked where invalid.

    A tile without invalid pixels has no mask array (`np.ma.nomask`): ask
    `valid` or `np.ma.getmaskarray`, not `data.mask`, for one.

    `colorinterp` names each band ("red", "green", "blue", "nir", "gray",
    "alpha" dropped already, "undefined"); models pick bands by name.
    `data` keeps the source dtype; `scale_max` is the value that means "full
    brightness" for that dtype (255 for uint8, the 99th percentile for others)
    so models can normalize without guessing.
    """

    window: TileWindow
    data: np.ma.MaskedArray
    colorinterp: tuple[str, ...]
    scale_max: float

    @property
    def valid(self) -> np.ndarray:
        """Boolean (rows, cols): True where every band holds a valid pixel."""
        mask = np.ma.getmask(self.data)
        if mask is np.ma.nomask:
            return np.ones(self.data.shape[1:], dtype=bool)
        return ~mask.any(axis=0)

    @property
    def valid_pixels(self) -> int:
        """How many pixels `valid` marks, without building it for a tile with no mask (most)."""
        mask = np.ma.getmask(self.data)
        if mask is np.ma.nomask:
            return int(np.prod(self.data.shape[1:]))
        return int(np.count_nonzero(self.valid))

    def band(self, name: str) -> np.ma.MaskedArray | None:
        """The band called `name`, as float32 scaled to 0..1, or None if absent."""
        if name not in self.colorinterp:
            return None
        idx = self.colorinterp.index(name)
        return (self.data[idx].astype(np.float32) / np.float32(self.scale_max)).clip(0, 1)


def check_layout(tile: TileImage) -> None:
    """Models rely on (bands, rows, cols) with one name per band and a positive scale."""
    data = tile.data
    if data.ndim != 3 or len(tile.colorinterp) != data.shape[0]:
        raise ModelError(
            tile.window.tile_id,
            f"expected (bands, rows, cols) with one colorinterp name per band, got shape "
            f"{data.shape} and {len(tile.colorinterp)} names",
        )
    if not tile.scale_max > 0:
        raise ModelError(tile.window.tile_id, f"scale_max must be positive, got {tile.scale_max}")
