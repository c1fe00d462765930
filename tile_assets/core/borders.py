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

import numpy as np
import shapely

from tile_assets.core.errors import TileAssetsError
from tile_assets.core.types import Box, Finding, TileWindow

log = logging.getLogger(__name__)

DEFAULT_MARGIN_PX = 1.0
DEFAULT_CONTAINMENT = 0.9


def is_cut(box: Box, window: TileWindow, width: int, height: int, margin_px: float) -> bool:
    """Whether `box` (scene pixels) reaches within `margin_px` of an edge of `window` inside the scene.

    Edges on the scene's own border do not cut: nothing lies beyond them.
    """
    x0, y0, x1, y1 = window.box
    return bool(
        (x0 > 0 and box[0] <= x0 + margin_px)
        or (y0 > 0 and box[1] <= y0 + margin_px)
        or (x1 < width and box[2] >= x1 - margin_px)
        or (y1 < height and box[3] >= y1 - margin_px)
    )


def prefer_whole(
    findings: Sequence[Finding],
    windows: Mapping[str, TileWindow],
    width: int,
    height: int,
    *,
    margin_px: float = DEFAULT_MARGIN_PX,
    containment: float = DEFAULT_CONTAINMENT,
    class_agnostic: bool = False,
) -> list[Finding]:
    """`findings` without the cut views that a whole view of the same object covers.

    A cut view (see `is_cut`; `windows` maps tile ids to their windows,
    findings of other ids are whole) is dropped when at least `containment`
    of its box area lies inside the box of one whole finding with the same
    label (any label with `class_agnostic`). Order is kept. Pairs are found
    with an STRtree, so the cost grows with the findings, not their square.
    """
    if not 0.0 < containment <= 1.0:
        raise TileAssetsError("prefer_whole", f"containment {containment!r} outside (0, 1]")
    if margin_px < 0:
        raise TileAssetsError("prefer_whole", f"margin_px must be >= 0, got {margin_px!r}")
    cut = np.array(
        [
            f.tile_id in windows and is_cut(f.box, windows[f.tile_id], width, height, margin_px)
            for f in findings
        ],
        dtype=bool,
    )
    if not cut.any() or cut.all():
        return list(findings)
    boxes = np.array([f.box for f in findings], dtype=np.float64)
    whole_idx, cut_idx = np.flatnonzero(~cut), np.flatnonzero(cut)
    tree = shapely.STRtree(shapely.box(*boxes[whole_idx].T))
    pieces, holders = tree.query(shapely.box(*boxes[cut_idx].T))
    piece, holder = cut_idx[pieces], whole_idx[holders]
    if not class_agnostic and len(piece):
        labels = np.array([f.label for f in findings], dtype=object)
        same = labels[piece] == labels[holder]
        piece, holder = piece[same], holder[same]
    a, b = boxes[piece], boxes[holder]
    inter_w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    inter_h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(inter_w, 0, None) * np.clip(inter_h, 0, None)
    area = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = np.where(area > 0, inter / area, 0.0) >= containment
    dropped = set(piece[inside].tolist())
    log.debug(
        "prefer_whole: %d of %d findings cut, %d of them covered by whole views",
        int(cut.sum()),
        len(findings),
        len(dropped),
    )
    return [f for i, f in enumerate(findings) if i not in dropped]
