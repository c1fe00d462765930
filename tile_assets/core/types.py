"""Small, frozen, JSON-able descriptors that cross step boundaries, and option types.

Pixel containers never appear here: these are what Dagster steps hand each
other (scene info, tile windows, batch plans, findings, tile results).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, Self

MatchMetric = Literal["iou", "ios"]
MergeStrategy = Literal["nms", "greedy_nmm", "none"]
EdgeMode = Literal["shift", "pad"]
TileStatus = Literal["ok", "failed"]

Box = tuple[float, float, float, float]
"""Pixel box (x0, y0, x1, y1), x to the right, y down, x1/y1 exclusive."""


class _JsonMixin:
    """to_dict / from_dict for dataclasses of plain values (tuples become lists in JSON)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        for name, value in data.items():
            if name not in names:
                continue
            kwargs[name] = tuple(value) if isinstance(value, list) else value
        return cls(**kwargs)


@dataclass(frozen=True)
class ObjectInfo(_JsonMixin):
    """One object in a store listing: where it is and which version it is."""

    uri: str
    size: int
    etag: str
    last_modified: float = 0.0


@dataclass(frozen=True)
class SceneInfo(_JsonMixin):
    """What `source_images` learns about an image without keeping its pixels."""

    uri: str
    partition_key: str
    fingerprint: str
    driver: str
    width: int
    height: int
    count: int
    dtype: str
    size_bytes: int
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    bounds: tuple[float, float, float, float] | None = None
    bounds_wgs84: tuple[float, float, float, float] | None = None
    nodata: float | str | None = None
    """A number, or "nan", "inf", "-inf": JSON has no non-finite numbers."""
    colorinterp: tuple[str, ...] = ()
    has_alpha: bool = False
    has_internal_mask: bool = False
    block_shape: tuple[int, int] | None = None
    resolution: tuple[float, float] | None = None
    last_modified: float = 0.0
    source_version: str = ""
    """The object's listing version when it was described (ETag on S3, size and
    mtime locally): cheap to compare with a `Store.head` before trusting pixels
    read later. Empty in descriptors written before it was recorded."""

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None and self.transform is not None

    @property
    def megapixels(self) -> float:
        return self.width * self.height / 1e6


@dataclass(frozen=True)
class TileWindow(_JsonMixin):
    """One tile of the grid: its id, grid position and pixel window in the scene."""

    tile_id: str
    row: int
    col: int
    col_off: int
    row_off: int
    width: int
    height: int

    def to_dict(self) -> dict[str, Any]:
        """The fields by name: a batch plan carries thousands, and `asdict`'s deep copy took 13 ms for 2,401."""
        return {
            "tile_id": self.tile_id, "row": self.row, "col": self.col, "col_off": self.col_off,
            "row_off": self.row_off, "width": self.width, "height": self.height,
        }

    @property
    def box(self) -> Box:
        return (
            float(self.col_off),
            float(self.row_off),
            float(self.col_off + self.width),
            float(self.row_off + self.height),
        )


@dataclass(frozen=True)
class GridSpec(_JsonMixin):
    """How a scene is cut: tile size, overlap (ratio < 1 or pixels >= 1) and edge handling."""

    tile_size: int = 512
    overlap: float = 0.2
    edge: EdgeMode = "shift"

    def overlap_pixels(self) -> int:
        """Overlap in pixels: a value below 1 is a ratio of the tile size."""
        if self.overlap < 1:
            return int(round(self.overlap * self.tile_size))
        return int(self.overlap)


@dataclass(frozen=True)
class Finding(_JsonMixin):
    """One object a model found, in scene pixel coordinates.

    `to_dict` / `from_dict` are written out (same JSON as the generic ones):
    they run for every cached finding, and the generic reflection and
    `asdict` deep copy cost several times more.
    """

    label: str
    score: float
    box: Box
    tile_id: str = ""
    area_px: float = 0.0
    model: str = ""
    model_version: str = ""
    attributes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The fields in order; `attributes` copied one level deep (`asdict` deep-copies)."""
        return {
            "label": self.label,
            "score": self.score,
            "box": self.box,
            "tile_id": self.tile_id,
            "area_px": self.area_px,
            "model": self.model,
            "model_version": self.model_version,
            "attributes": dict(self.attributes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(
            label=data["label"],
            score=data["score"],
            box=tuple(data["box"]),  # type: ignore[arg-type]
            tile_id=data.get("tile_id", ""),
            area_px=data.get("area_px", 0.0),
            model=data.get("model", ""),
            model_version=data.get("model_version", ""),
            attributes=data.get("attributes", {}),
        )


@dataclass(frozen=True)
class TileResult(_JsonMixin):
    """What one tile produced: findings and cover fractions, or the reason it failed."""

    tile_id: str
    status: TileStatus
    findings: tuple[Finding, ...] = ()
    cover: dict[str, float] = field(default_factory=dict)
    valid_pixels: int = 0
    error_type: str = ""
    error_message: str = ""
    from_cache: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "tile_id": self.tile_id,
            "status": self.status,
            "findings": [f.to_dict() for f in self.findings],
            "cover": dict(self.cover),
            "valid_pixels": self.valid_pixels,
            "error_type": self.error_type,
            "error_message": self.error_message,
            "from_cache": self.from_cache,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        return cls(
            tile_id=data["tile_id"],
            status=data["status"],
            findings=tuple(Finding.from_dict(f) for f in data.get("findings", [])),
            cover=data.get("cover", {}),
            valid_pixels=data.get("valid_pixels", 0),
            error_type=data.get("error_type", ""),
            error_message=data.get("error_message", ""),
            from_cache=data.get("from_cache", False),
        )
