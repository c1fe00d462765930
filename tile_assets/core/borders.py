"""Findings cut by a tile border, and the whole views of the same objects that overlapping tiles have.

With enough overlap, an object near a border lies whole inside a
neighbouring tile, while the tile whose edge crosses it reports a piece. A
box-only merge (NMS/NMM) cannot tell piece from whole: NMM grows the whole
box by the piece (fine when the piece is inside it) but a piece whose mask
differs, or that also touches a second object, drags the union astray, and
NMS may even keep the piece. `prefer_whole` settles it before the merge: a
finding touching a border of its tile that lies inside the scene is a cut
view; a cut view lying inside a whole view of the same label is dropped.
Cut views nothing whole covers (objects larger than the overlap) are kept
for the merge to join. Full-image-pass findings (no tile window) count as
whole views.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tile_assets.core.errors import TileAssetsError
from tile_assets.core.findings_table import findings_table, table_boxes, table_findings
from tile_assets.core.merge import overlapping_pairs, string_codes
from tile_assets.core.types import Box, Finding, TileWindow

log = logging.getLogger(__name__)

DEFAULT_MARGIN_PX = 1.0
DEFAULT_CONTAINMENT = 0.9


def is_cut(box: Box, window: TileWindow, width: int, height: int, margin_px: float) -> bool:
    """Whether `box` (scene pixels) reaches within `margin_px` of an edge of `window` inside the scene.

    Edges on the scene's own border do not cut: nothing lies beyond them.
    """
    boxes, windows = np.array([box], dtype=np.float64), np.array([window.box])
    return bool(_cut(boxes, windows, width, height, margin_px)[0])


def _cut(
    boxes: np.ndarray, windows: np.ndarray, width: int, height: int, margin_px: float
) -> np.ndarray:
    """`is_cut` for each row of `boxes` (n, 4) in the matching row of `windows` (n, 4)."""
    x0, y0, x1, y1 = windows.T
    return (
        ((x0 > 0) & (boxes[:, 0] <= x0 + margin_px))
        | ((y0 > 0) & (boxes[:, 1] <= y0 + margin_px))
        | ((x1 < width) & (boxes[:, 2] >= x1 - margin_px))
        | ((y1 < height) & (boxes[:, 3] >= y1 - margin_px))
    )


@dataclass(frozen=True)
class TileBoxes:
    """A scene's tile windows as arrays, for finding each finding's window by tile id at once."""

    ids: pa.Array
    boxes: np.ndarray
    """(n + 1, 4): the windows in `ids` order, then the whole scene (the window of
    findings from no tile, e.g. the full-image pass: never cut)."""
    width: int
    height: int

    @classmethod
    def of(cls, windows: Mapping[str, TileWindow], width: int, height: int) -> TileBoxes:
        boxes = np.array([w.box for w in windows.values()] + [(0.0, 0.0, width, height)])
        return cls(pa.array(list(windows), pa.string()), boxes, width, height)

    def of_findings(self, table: pa.Table) -> np.ndarray:
        """The window of each finding of `table` (n, 4)."""
        found = pc.index_in(table.column("tile_id"), value_set=self.ids)
        return self.boxes[pc.fill_null(found, len(self.ids)).to_numpy()]


def prefer_whole(
    findings: Sequence[Finding],
    windows: Mapping[str, TileWindow],
    width: int,
    height: int,
    **options: Any,
) -> list[Finding]:
    """`prefer_whole_table` on `Finding` objects."""
    tiles = TileBoxes.of(windows, width, height)
    return table_findings(prefer_whole_table(findings_table(findings), tiles, **options))


def prefer_whole_table(
    table: pa.Table,
    tiles: TileBoxes,
    *,
    margin_px: float = DEFAULT_MARGIN_PX,
    containment: float = DEFAULT_CONTAINMENT,
    class_agnostic: bool = False,
) -> pa.Table:
    """The findings of `table` without the cut views that a whole view of the same object covers.

    A cut view (see `is_cut`; findings of tile ids not in `tiles` are
    whole) is dropped when at least `containment` of its box area lies
    inside the box of one whole finding with the same label (any label with
    `class_agnostic`). Order is kept. Covering pairs come from
    `overlapping_pairs`' sweep, so the cost grows with the findings, not
    their square.
    """
    if not 0.0 < containment <= 1.0:
        raise TileAssetsError("prefer_whole", f"containment {containment!r} outside (0, 1]")
    if margin_px < 0:
        raise TileAssetsError("prefer_whole", f"margin_px must be >= 0, got {margin_px!r}")
    boxes = table_boxes(table)
    cut = _cut(boxes, tiles.of_findings(table), tiles.width, tiles.height, margin_px)
    if not cut.any() or cut.all():
        return table
    codes = None if class_agnostic else string_codes(table.column("label"))[0]
    left, right, inter = overlapping_pairs(boxes, codes)
    one_cut = cut[left] != cut[right]
    piece, inter = np.where(cut[left], left, right)[one_cut], inter[one_cut]
    x0, y0, x1, y1 = boxes[piece].T
    dropped = np.zeros(len(table), dtype=bool)
    dropped[piece[inter / ((x1 - x0) * (y1 - y0)) >= containment]] = True
    log.debug(
        "prefer_whole: %d of %d findings cut, %d of them covered by whole views",
        int(cut.sum()),
        len(table),
        int(dropped.sum()),
    )
    return table.filter(pa.array(~dropped))
