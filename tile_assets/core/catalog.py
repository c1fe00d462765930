"""Catalog formats: findings as GeoParquet, scenes as STAC Items, the catalog as a Collection.

Every writer turns its object into bytes in memory and hands them to a
`Store`, so the same code publishes to a local folder or an S3 prefix. Hrefs
are kept absolute (local paths or s3:// URIs) so a document resolves from
wherever it is read.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
from pystac.extensions.label import (
    LabelClasses,
    LabelCount,
    LabelExtension,
    LabelOverview,
    LabelTask,
    LabelType,
)
from pystac.extensions.projection import ProjectionExtension
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from tile_assets.core.geo import (
    WGS84,
    box_corners,
    box_wkb,
    crs_to_wgs84,
    footprint_wgs84,
    scene_affine,
    scene_crs,
)
from tile_assets.core.findings_table import BOX_COLUMNS, empty_findings, table_boxes
from tile_assets.core.store import Store
from tile_assets.core.types import SceneInfo

log = logging.getLogger(__name__)

PARQUET_TYPE = "application/x-parquet"
JSON_TYPE = "application/json"
PNG_TYPE = "image/png"
WHOLE_WORLD = [-180.0, -90.0, 180.0, 90.0]
PREFIX = "tile_assets:"

_SOURCE_TYPES = {
    "GTiff": "image/tiff; application=geotiff",
    "COG": "image/tiff; application=geotiff; profile=cloud-optimized",
    "JPEG": "image/jpeg",
    "PNG": "image/png",
    "JP2OpenJPEG": "image/jp2",
}
_ASSETS: dict[str, tuple[str | None, list[str], str]] = {
    "findings": (PARQUET_TYPE, ["labels"], "Findings (GeoParquet)"),
    "preview": (PNG_TYPE, ["overview", "thumbnail"], "Preview with findings"),
    "synthesis": (JSON_TYPE, ["metadata"], "Scene synthesis"),
}
_TEXT, _DOUBLE = pa.string(), pa.float64()
FINDINGS_PARQUET_SCHEMA = pa.schema(
    [
        ("scene_key", _TEXT), ("tile_id", _TEXT), ("label", _TEXT), ("score", _DOUBLE),
        *((name, _DOUBLE) for name in BOX_COLUMNS),
        ("area_px", _DOUBLE), ("model", _TEXT), ("model_version", _TEXT), ("attributes", _TEXT),
        ("coord_space", _TEXT),
        *((name, _DOUBLE) for name in ("lon_min", "lat_min", "lon_max", "lat_max")),
        ("geometry", pa.binary()),
    ]
)
"""Columns of findings.parquet; the writer adds the GeoParquet `geo` metadata."""
_SAFE_COLUMN = re.compile(r"[^A-Za-z0-9_]+")


class RowGroup(NamedTuple):
    """A row group of findings.parquet, with what its `geo` metadata needs."""

    table: pa.Table
    geometry_types: set[int]
    """Shapely type ids (3, Polygon, unless a box had no area)."""
    bounds: np.ndarray
    """(xmin, ymin, xmax, ymax) of the geometries; infinite when there is none."""


def findings_arrow(scene: SceneInfo, findings: pa.Table) -> RowGroup:
    """A row group of findings.parquet: one row per finding, its box as a WKB polygon in the scene CRS plus a lon/lat bbox.

    Without georeferencing the geometry stays in pixel coordinates (y down),
    `coord_space` says "pixel" and the lon/lat columns are NaN. `attributes`
    is the finding's attribute dict as a JSON string. Built from arrays (see
    `box_wkb`), with the column types a GeoDataFrame of the same rows writes.
    """
    transform = scene_affine(scene) if scene.georeferenced else None
    crs = scene_crs(scene) if scene.georeferenced else None
    n = len(findings)
    boxes = table_boxes(findings)
    xs, ys = box_corners(boxes, transform)
    if crs is not None and n:
        # The bounds of the four corners in lon/lat, as to_crs(WGS84).bounds would give.
        lon, lat = crs_to_wgs84(crs, xs.ravel(), ys.ravel())
        lon, lat = lon.reshape(xs.shape), lat.reshape(ys.shape)
        bounds = np.column_stack([lon.min(1), lat.min(1), lon.max(1), lat.max(1)])
    else:
        bounds = np.full((n, 4), np.nan)
    geometry, types = box_wkb(xs, ys)
    columns: dict[str, Any] = {
        "scene_key": pa.array([scene.partition_key] * n, pa.string()),
        **{name: findings.column(name) for name in ("tile_id", "label", "score")},
        **{name: boxes[:, i] for i, name in enumerate(BOX_COLUMNS)},
        **{name: findings.column(name) for name in ("area_px", "model", "model_version", "attributes")},
        "coord_space": pa.array(["crs" if crs is not None else "pixel"] * n, pa.string()),
        **{name: bounds[:, i] for i, name in enumerate(("lon_min", "lat_min", "lon_max", "lat_max"))},
        "geometry": geometry,
    }
    bounds_of_all = np.array(
        [xs.min(initial=np.inf), ys.min(initial=np.inf), xs.max(initial=-np.inf), ys.max(initial=-np.inf)]
    )
    return RowGroup(pa.table(columns, schema=FINDINGS_PARQUET_SCHEMA), types, bounds_of_all)


FINDINGS_ROW_GROUP = 16_384
"""Findings per row group of findings.parquet: what the writer holds encoded at once."""
FINDINGS_DICTIONARY_COLUMNS = [f.name for f in FINDINGS_PARQUET_SCHEMA if pa.types.is_string(f.type)]
"""The columns findings.parquet dictionary-encodes: its strings (labels, tile ids, attributes that
repeat). Parquet's default tries every column, and on floats and WKB the dictionary overflows and
falls back: 299,563 findings took 0.20 s to write (26.3 MB) instead of 0.12 s (23.9 MB)."""


def write_findings(
    store: Store, uri: str, scene: SceneInfo, parts: Iterable[pa.Table], metadata: Mapping[str, str] | None = None
) -> int:
    """Write findings.parquet (GeoParquet 1.1, WKB) from findings tables as they come; the row count.

    Parts are buffered and cut into row groups of `FINDINGS_ROW_GROUP` rows, each
    encoded (`findings_arrow`) only when it is written, so memory holds a
    row group, not the scene. The `geo` metadata (geometry types, bbox, CRS) is completed
    once the last group is written, with `metadata` (more key-value pairs).
    """
    buf = io.BytesIO()
    writer: pq.ParquetWriter | None = None
    types: set[int] = set()
    bounds = np.array([np.inf, np.inf, -np.inf, -np.inf])
    crs = scene_crs(scene) if scene.georeferenced else None
    rows = 0

    def write(tables: list[pa.Table]) -> None:
        nonlocal writer, rows
        group = findings_arrow(scene, pa.concat_tables(tables) if tables else empty_findings())
        if writer is None:
            writer = pq.ParquetWriter(
                buf, group.table.schema, store_schema=False, use_dictionary=FINDINGS_DICTIONARY_COLUMNS
            )
        writer.write_table(group.table)
        rows += len(group.table)
        types.update(group.geometry_types)
        bounds[:2] = np.minimum(bounds[:2], group.bounds[:2])
        bounds[2:] = np.maximum(bounds[2:], group.bounds[2:])

    pending: list[pa.Table] = []
    held = 0
    for part in parts:
        while held + len(part) >= FINDINGS_ROW_GROUP:  # a large part is cut: no row group holds more
            room = FINDINGS_ROW_GROUP - held
            write([*pending, part.slice(0, room)])
            part, pending, held = part.slice(room), [], 0
        if len(part):
            pending.append(part)
            held += len(part)
    if pending or writer is None:
        write(pending)
    assert writer is not None
    column = {
        "encoding": "WKB",
        "geometry_types": sorted(_GEOMETRY_NAMES[t] for t in types),
        "crs": crs.to_json_dict() if crs is not None else None,
    }
    if rows:
        column["bbox"] = bounds.tolist()
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}
    writer.add_key_value_metadata({"geo": json.dumps(geo), **(metadata or {})})
    writer.close()
    store.write_bytes(uri, buf.getvalue(), content_type=PARQUET_TYPE)
    return rows


_GEOMETRY_NAMES = {
    0: "Point", 1: "LineString", 3: "Polygon", 4: "MultiPoint", 5: "MultiLineString",
    6: "MultiPolygon", 7: "GeometryCollection",
}
"""Shapely geometry type ids to GeoParquet's names."""


def write_geoparquet(store: Store, uri: str, gdf: gpd.GeoDataFrame) -> None:
    """Write a GeoDataFrame as GeoParquet (geo metadata, WKB geometry) through the store.

    GeoDataFrame.to_parquet writes the GeoParquet metadata itself, so this is
    `write_parquet` under the name callers read as "a geo table".
    """
    write_parquet(store, uri, gdf)


def read_geoparquet(store: Store, uri: str) -> gpd.GeoDataFrame:
    """Read a GeoParquet object written by `write_geoparquet` (or any GeoParquet)."""
    return gpd.read_parquet(io.BytesIO(store.read_bytes(uri)))


def write_parquet(store: Store, uri: str, df: pd.DataFrame) -> None:
    """Write a plain DataFrame as Parquet through the store."""
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    store.write_bytes(uri, buf.getvalue(), content_type=PARQUET_TYPE)


def read_parquet(store: Store, uri: str, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Read a Parquet object (all its columns, or only `columns`) into a plain DataFrame."""
    return pd.read_parquet(
        io.BytesIO(store.read_bytes(uri)), columns=list(columns) if columns is not None else None
    )


def dump_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, indent 2, UTF-8, no NaN."""
    return (
        json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    ).encode("utf-8")


def write_json(store: Store, uri: str, obj: Any) -> None:
    """Write a JSON document (canonical form, see `dump_json`) through the store."""
    store.write_bytes(uri, dump_json(obj), content_type=JSON_TYPE)


def read_json(store: Store, uri: str) -> Any:
    """Read a JSON document through the store."""
    return json.loads(store.read_bytes(uri).decode("utf-8"))


def scene_item(
    scene: SceneInfo, synthesis: Mapping[str, Any], hrefs: Mapping[str, str], datetime: dt.datetime
) -> pystac.Item:
    """A STAC Item for one scene: footprint, projection and label extensions, assets.

    `datetime` is the source's own time (acquisition, or the object's
    last-modified time), never the processing time, so rebuilding gives the
    same Item; a naive value is taken as UTC. `hrefs` holds absolute URIs for
    the "findings", "preview" and "synthesis" assets and, under "item", where
    this Item's JSON will live (its self link). Not georeferenced: geometry
    and bbox are null, as STAC allows.
    """
    when = datetime if datetime.tzinfo else datetime.replace(tzinfo=dt.UTC)
    footprint = footprint_wgs84(scene) if scene.georeferenced else None
    bbox = None
    if footprint is not None:
        bbox = list(scene.bounds_wgs84) if scene.bounds_wgs84 else list(footprint.bounds)
    counts: dict[str, int] = dict(synthesis.get("counts_by_label", {}))
    item = pystac.Item(
        id=scene.partition_key,
        geometry=mapping(footprint) if footprint is not None else None,
        bbox=bbox,
        datetime=when,
        properties={
            f"{PREFIX}coverage": synthesis.get("coverage"),
            f"{PREFIX}status": synthesis.get("status"),
            f"{PREFIX}counts": counts,
            f"{PREFIX}description": synthesis.get("description", ""),
            f"{PREFIX}tiles_planned": synthesis.get("tiles_planned"),
            f"{PREFIX}tiles_failed": synthesis.get("tiles_failed"),
            f"{PREFIX}georeferenced": scene.georeferenced,
            "model": synthesis.get("model", {}),
        },
    )
    _add_projection(item, scene)
    _add_labels(item, counts)
    item.add_asset(
        "source",
        pystac.Asset(
            href=scene.uri,
            media_type=_SOURCE_TYPES.get(scene.driver),
            roles=["data"],
            title="Source image",
        ),
    )
    for key, (media_type, roles, title) in _ASSETS.items():
        if key in hrefs:
            item.add_asset(
                key, pystac.Asset(href=hrefs[key], media_type=media_type, roles=roles, title=title)
            )
    if "item" in hrefs:
        item.set_self_href(hrefs["item"])
    return item


def _add_projection(item: pystac.Item, scene: SceneInfo) -> None:
    """proj:code (or proj:wkt2 for CRSs without a code), shape, transform, bbox."""
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    proj.shape = [scene.height, scene.width]
    crs = scene_crs(scene)
    if crs is None or scene.transform is None:
        proj.code = None
        return
    epsg = crs.to_epsg()
    if epsg is not None:
        proj.code = f"EPSG:{epsg}"
    else:
        proj.code = None
        proj.wkt2 = crs.to_wkt()
    proj.transform = [float(v) for v in scene.transform[:6]]
    if scene.bounds is not None:
        proj.bbox = [float(v) for v in scene.bounds]


def _add_labels(item: pystac.Item, counts: Mapping[str, int]) -> None:
    """Label extension: vector detections, the classes found and their counts."""
    classes = sorted(counts)
    LabelExtension.ext(item, add_if_missing=True).apply(
        label_description="Objects found by the per-tile model, merged across tile borders",
        label_type=LabelType.VECTOR,
        label_properties=["label"],
        label_classes=[LabelClasses.create(classes=classes, name="label")],
        label_tasks=[LabelTask.DETECTION],
        label_methods=["automated"],
        label_overviews=[
            LabelOverview.create(
                property_key="label",
                counts=[LabelCount.create(name=c, count=int(counts[c])) for c in classes],
            )
        ],
    )


def build_collection(
    items: Sequence[pystac.Item],
    collection_id: str = "tile-assets",
    description: str = "Scenes cut into tiles, analysed per tile and synthesized per scene.",
    href: str | None = None,
) -> pystac.Collection:
    """A Collection whose extent covers the items, linking each Item by its self href.

    Spatial extent: the union of the items' non-null bboxes, or the whole
    world when no item is georeferenced (STAC requires a bbox). Temporal
    extent: earliest to latest item datetime (open when there are no items).
    Items are linked, not embedded, so they must have a self href (set
    through `hrefs["item"]` in `scene_item`); items without one are skipped
    with a warning.
    """
    bboxes = np.array([it.bbox for it in items if it.bbox], dtype=np.float64).reshape(-1, 4)
    spatial = (
        [*bboxes[:, :2].min(axis=0).tolist(), *bboxes[:, 2:].max(axis=0).tolist()]
        if len(bboxes)
        else WHOLE_WORLD
    )
    times = sorted(it.datetime for it in items if it.datetime is not None)
    temporal: list[dt.datetime | None] = [times[0], times[-1]] if times else [None, None]
    collection = pystac.Collection(
        id=collection_id,
        description=description,
        extent=pystac.Extent(pystac.SpatialExtent([spatial]), pystac.TemporalExtent([temporal])),
        license="other",
    )
    for it in items:
        item_href = it.get_self_href()
        if item_href is None:
            log.warning("item %s has no self href; not linked from the collection", it.id)
            continue
        collection.add_link(
            pystac.Link("item", item_href, media_type=pystac.MediaType.GEOJSON, title=it.id)
        )
    if href is not None:
        collection.set_self_href(href)
    return collection


def items_frame(items: Sequence[pystac.Item]) -> gpd.GeoDataFrame:
    """The catalog as one queryable table: one row per scene, geometry in EPSG:4326.

    Columns: id, datetime (UTC), coverage, status, description, tiles_planned,
    tiles_failed, model, counts (JSON), one `count_<label>` column per label
    seen anywhere (0 where absent), one `href_<asset>` column per asset key,
    and geometry (None when not georeferenced). Written by hand with
    geopandas: stac-geoparquet 0.8.3 fails on Items with null geometry.
    """
    rows: list[dict[str, Any]] = []
    for it in items:
        props = it.properties
        counts = props.get(f"{PREFIX}counts", {})
        model = props.get("model", {})
        row: dict[str, Any] = {
            "id": it.id,
            "datetime": it.datetime,
            "coverage": props.get(f"{PREFIX}coverage"),
            "status": props.get(f"{PREFIX}status"),
            "description": props.get(f"{PREFIX}description"),
            "tiles_planned": props.get(f"{PREFIX}tiles_planned"),
            "tiles_failed": props.get(f"{PREFIX}tiles_failed"),
            "model": f"{model.get('name', '')} {model.get('version', '')}".strip(),
            "counts": json.dumps(counts, sort_keys=True),
            "geometry": shape(it.geometry) if it.geometry else None,
        }
        row.update({f"count_{_column_name(k)}": int(v) for k, v in counts.items()})
        row.update({f"href_{_column_name(k)}": a.href for k, a in it.assets.items()})
        rows.append(row)
    base = ["id", "datetime", "coverage", "status", "description", "tiles_planned", "tiles_failed"]
    base += ["model", "counts"]
    extra = sorted({k for r in rows for k in r} - {*base, "geometry"})
    frame = pd.DataFrame(rows, columns=[*base, *extra, "geometry"])
    count_cols = [c for c in extra if c.startswith("count_")]
    frame[count_cols] = frame[count_cols].fillna(0).astype("int64")
    frame["datetime"] = pd.to_datetime(frame["datetime"], utc=True)
    frame["coverage"] = frame["coverage"].astype("float64")
    geometry: list[BaseGeometry | None] = list(frame.pop("geometry"))
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(geometry, crs=WGS84), crs=WGS84)


def _column_name(key: str) -> str:
    return _SAFE_COLUMN.sub("_", key).strip("_").lower() or "unnamed"


def write_stac_json(
    store: Store, uri: str, stac_object: pystac.Item | pystac.Collection | pystac.Catalog
) -> None:
    """Write a STAC object as JSON with every href kept exactly as given (absolute).

    The self link is written only when it equals `uri`; pystac never
    rewrites hrefs relative to a local path.
    """
    include_self = stac_object.get_self_href() == uri
    data = stac_object.to_dict(include_self_link=include_self, transform_hrefs=False)
    write_json(store, uri, data)
