"""Catalog formats on a real scene: GeoParquet findings, STAC Item/Collection, items table.

STAC core schemas ship with pystac and are validated offline with jsonschema;
extension schemas (projection, label) need the network, so their fields are
checked by hand here.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import replace
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pystac
import pytest
import rasterio
import shapely
from geopandas.testing import assert_geodataframe_equal
from pystac.validation import validate_dict
from rasterio.transform import Affine
from rasterio.warp import transform_bounds
from shapely.geometry import box, shape

from tile_assets.core.catalog import (
    build_collection,
    findings_arrow,
    items_frame,
    read_geoparquet,
    read_json,
    read_parquet,
    scene_item,
    write_findings,
    write_geoparquet,
    write_json,
    write_parquet,
    write_stac_json,
)
from tile_assets.core import catalog
from tile_assets.core.findings_table import empty_findings, findings_table
from tile_assets.core.findings_table import BOX_COLUMNS
from tile_assets.core.geo import (
    WGS84, box_corners, box_polygons, box_wkb, crs_to_wgs84, scene_affine, scene_crs, valid_wkb,
)
from tile_assets.core.store import LocalStore, join_uri
from tile_assets.core.synthesis import synthesize
from tile_assets.core.types import Finding, SceneInfo, TileResult

INBOX = Path(__file__).resolve().parents[2] / "data" / "inbox"
WHEN = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)


def _scene(path: Path) -> SceneInfo:
    """SceneInfo built by hand from the file, as `source_images` would."""
    with rasterio.open(path) as ds:
        epsg = ds.crs.to_epsg() if ds.crs else None
        return SceneInfo(
            uri=str(path),
            partition_key=f"{path.stem.replace('.', '_')}-test",
            fingerprint="sha256:test",
            driver=ds.driver,
            width=ds.width,
            height=ds.height,
            count=ds.count,
            dtype=ds.dtypes[0],
            size_bytes=path.stat().st_size,
            crs=f"EPSG:{epsg}" if epsg else None,
            transform=tuple(ds.transform)[:6] if ds.crs else None,
            bounds=tuple(ds.bounds) if ds.crs else None,
            bounds_wgs84=transform_bounds(ds.crs, "EPSG:4326", *ds.bounds) if ds.crs else None,
            nodata=ds.nodata,
        )


@pytest.fixture(scope="module")
def geo_scene() -> SceneInfo:
    return _scene(INBOX / "RGB.byte.tif")


@pytest.fixture(scope="module")
def plain_scene() -> SceneInfo:
    return _scene(INBOX / "no_geo_photo.jpg")


def _findings(scene: SceneInfo) -> list[Finding]:
    w, h = scene.width, scene.height
    return [
        Finding("building", 0.9, (10, 20, 60, 80), "t0", 3000.0, "classical", "1", {"ndvi": 0.1}),
        Finding(
            "water", 0.7, (w / 2, h / 2, w / 2 + 40, h / 2 + 30), "t1", 1200.0, "classical", "1"
        ),
        Finding("building", 0.5, (w - 50, h - 40, w, h), "t3", 2000.0, "classical", "1"),
    ]


def findings_frame(scene: SceneInfo, table: pa.Table) -> gpd.GeoDataFrame:
    """What findings.parquet holds for `table`, as `findings_arrow` encodes it, read by geopandas."""
    encoded = findings_arrow(scene, table).table
    crs = scene_crs(scene) if scene.georeferenced else None
    wkb = encoded.column("geometry").to_numpy(zero_copy_only=False)
    frame = encoded.drop_columns(["geometry"]).to_pandas()
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries.from_wkb(wkb, crs=crs), crs=crs)


def shapely_frame(scene: SceneInfo, table: pa.Table) -> gpd.GeoDataFrame:
    """The same rows built the plain way, one shapely polygon per box (oriented, made valid): the reference."""
    transform = scene_affine(scene) if scene.georeferenced else None
    crs = scene_crs(scene) if scene.georeferenced else None
    boxes = np.column_stack([table.column(c).to_numpy() for c in BOX_COLUMNS]).reshape(-1, 4)
    xs, ys = box_corners(boxes, transform)
    n = len(boxes)
    data = {c: table.column(c).to_pandas() for c in ("tile_id", "label", "score", "area_px", "model", "model_version", "attributes")}
    data.update({c: boxes[:, i] for i, c in enumerate(BOX_COLUMNS)})
    data["scene_key"] = [scene.partition_key] * n
    data["coord_space"] = ["crs" if crs is not None else "pixel"] * n
    lonlat = np.full((n, 4), np.nan)
    if crs is not None and n:
        lon, lat = (a.reshape(xs.shape) for a in crs_to_wgs84(crs, xs.ravel(), ys.ravel()))
        lonlat = np.column_stack([lon.min(1), lat.min(1), lon.max(1), lat.max(1)])
    data.update({c: lonlat[:, i] for i, c in enumerate(("lon_min", "lat_min", "lon_max", "lat_max"))})
    columns = [f.name for f in catalog.FINDINGS_PARQUET_SCHEMA if f.name != "geometry"]
    frame = pd.DataFrame({c: pd.Series(data[c], dtype="str" if c in _TEXT else "float64") for c in columns})
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries(box_polygons(xs, ys), crs=crs), crs=crs)


_TEXT = {"scene_key", "tile_id", "label", "model", "model_version", "attributes", "coord_space"}


def _synthesis(scene: SceneInfo, findings: list[Finding]) -> dict:
    manifest = pd.DataFrame(
        [
            {
                "tile_id": "t0",
                "col_off": 0,
                "row_off": 0,
                "width": scene.width,
                "height": scene.height,
            }
        ]
    )
    results = [TileResult("t0", "ok", tuple(findings), {"water": 0.25}, scene.width * scene.height)]
    return synthesize(scene, manifest, results, [findings_table(findings)])


def test_findings_frame_georeferenced(geo_scene: SceneInfo) -> None:
    gdf = findings_frame(geo_scene, findings_table(_findings(geo_scene)))
    assert gdf.crs.to_epsg() == 32618
    assert len(gdf) == 3 and gdf.geometry.is_valid.all()
    assert set(gdf["coord_space"]) == {"crs"}
    assert box(*geo_scene.bounds).buffer(1e-6).contains(gdf.geometry).all()
    # Box corners go through the transform: the first box's upper-left corner.
    t = geo_scene.transform
    x0, _, _, y1 = gdf.geometry.iloc[0].bounds
    assert x0 == pytest.approx(t[2] + 10 * t[0]) and y1 == pytest.approx(t[5] + 20 * t[4])
    lon0, lat0, lon1, lat1 = geo_scene.bounds_wgs84
    assert (gdf["lon_min"] >= lon0).all() and (gdf["lon_max"] <= lon1).all()
    assert (gdf["lat_min"] >= lat0).all() and (gdf["lat_max"] <= lat1).all()
    assert (gdf["lon_min"] < gdf["lon_max"]).all() and (gdf["lat_min"] < gdf["lat_max"]).all()
    assert json.loads(gdf["attributes"].iloc[0]) == {"ndvi": 0.1}


def test_findings_frame_pixel_space_and_empty(plain_scene: SceneInfo, geo_scene: SceneInfo) -> None:
    gdf = findings_frame(plain_scene, findings_table(_findings(plain_scene)))
    assert gdf.crs is None and set(gdf["coord_space"]) == {"pixel"}
    assert gdf.geometry.iloc[0].equals(box(10, 20, 60, 80))
    assert gdf[["lon_min", "lat_min", "lon_max", "lat_max"]].isna().all().all()

    empty = findings_frame(geo_scene, empty_findings())
    full = findings_frame(geo_scene, findings_table(_findings(geo_scene)))
    assert len(empty) == 0
    assert list(empty.columns) == list(full.columns)
    assert empty.dtypes.astype(str).to_dict() == full.dtypes.astype(str).to_dict()
    assert empty.crs == full.crs


def test_findings_frame_rotated_grid_and_degenerate_box(geo_scene: SceneInfo) -> None:
    """Columns built in bulk match the per-geometry reprojection, also on a rotated grid."""
    a, b, c, d, e, f = geo_scene.transform
    rotated = replace(geo_scene, transform=(a * 0.8, a * 0.6, c, d - e * 0.6, e * 0.8, f))
    findings = [*_findings(rotated), Finding("line", 0.4, (30.0, 30.0, 30.0, 90.0))]
    gdf = findings_frame(rotated, findings_table(findings))
    assert gdf.geometry.is_valid.all()
    assert gdf.geometry.iloc[-1].geom_type == "LineString"
    assert (shapely.is_ccw(gdf.geometry.iloc[:-1].exterior)).all()
    expected = gdf.geometry.to_crs(WGS84).bounds.to_numpy()
    assert np.array_equal(gdf[["lon_min", "lat_min", "lon_max", "lat_max"]].to_numpy(), expected)



@pytest.mark.parametrize(
    "transform",
    [
        None,
        Affine(0.6, 0.0, 500_000.0, 0.0, -0.6, 5_200_000.0),  # north up: pixel rings turn clockwise
        Affine(0.48, 0.36, 500_000.0, 0.36, -0.48, 5_200_000.0),  # rotated
        Affine(0.6, 0.0, 500_000.0, 0.0, 0.6, 5_200_000.0),  # south up: no flip
    ],
    ids=["pixel", "north_up", "rotated", "south_up"],
)
def test_box_wkb_is_byte_for_byte_shapelys(transform: Affine | None) -> None:
    """The WKB written from arrays equals shapely's oriented, made-valid polygons, slivers and empty boxes included."""
    rng = np.random.default_rng(7)
    n = 5_000
    x0, y0 = rng.uniform(0, 20_000, n), rng.uniform(0, 20_000, n)
    w, h = rng.uniform(0.5, 300, n), rng.uniform(0.5, 300, n)
    w[::97], h[::101], w[::503], h[::499] = 0.0, 0.0, 1e-12, 1e-13  # lines and slivers
    w[::1000], h[::1000] = 0.0, 0.0  # points
    xs, ys = box_corners(np.column_stack([x0, y0, x0 + w, y0 + h]), transform)

    wkb, types = box_wkb(xs, ys)

    expected = box_polygons(xs, ys)
    assert wkb.type == pa.binary()
    assert wkb.to_pylist() == shapely.to_wkb(expected).tolist()
    assert types == set(shapely.get_type_id(expected).tolist()) == {0, 1, 3}
    empty, no_types = box_wkb(xs[:0], ys[:0])
    assert len(empty) == 0 and no_types == set()

def _ring_wkb(xy: list[tuple[float, float]], order: str = "<") -> bytes:
    """A one-ring polygon's WKB as written, whatever the ring: unclosed, folded or not finite."""
    flag = b"\x01" if order == "<" else b"\x00"
    return flag + np.array([3, 1, len(xy)], dtype=f"{order}u4").tobytes() + np.array(xy, dtype=f"{order}f8").tobytes()


def test_valid_wkb_agrees_with_geos() -> None:
    """Boxes are told valid from their bytes; every other shape gets GEOS's answer, row for row."""
    rng = np.random.default_rng(3)
    x0, y0 = rng.uniform(-1e6, 1e6, 400), rng.uniform(-1e6, 1e6, 400)
    xs, ys = box_corners(np.column_stack([x0, y0, x0 + 30, y0 + 20]), Affine(0.5, 0.2, 10, 0.1, -0.5, 20))
    boxes, _ = box_wkb(xs, ys)
    square = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.0, 0.0)]
    odd = [
        _ring_wkb(square),
        _ring_wkb(square[::-1]),  # clockwise: still valid
        _ring_wkb(square, ">"),  # big-endian
        _ring_wkb([(0, 0), (1, 1), (1, 0), (0, 1), (0, 0)]),  # bow tie
        _ring_wkb([(0, 0), (1, 0), (2, 0), (3, 0), (0, 0)]),  # no area
        _ring_wkb([(0, 0), (1, 0), (1, 1), (0, 1), (0, 0.5)]),  # not closed
        _ring_wkb([(0, 0), (1, 0), (np.nan, 1), (0, 1), (0, 0)]),
        _ring_wkb([(0, 0), (1, 0), (np.inf, 1), (0, 1), (0, 0)]),
        _ring_wkb([(0, 0), (2, 0), (1, 0.5), (1, 2), (0, 0)]),  # concave: valid, decided by GEOS
        _ring_wkb([(0, 0), (1, 0), (1, 0), (0, 1), (0, 0)]),  # a repeated corner
        shapely.to_wkb(shapely.Point(1, 2)),
        shapely.to_wkb(box(0, 0, 1, 1).difference(box(0.4, 0.4, 0.6, 0.6))),  # with a hole
        shapely.to_wkb(shapely.MultiPolygon([box(0, 0, 1, 1), box(0.5, 0.5, 2, 2)])),  # overlapping parts
        b"\x01" * 93,  # a box's size, not a box
        b"not wkb",
        None,
    ]
    column = pa.chunked_array([boxes.slice(7), pa.array(odd, pa.binary()), boxes.slice(0, 7)])
    expected = shapely.is_valid(shapely.from_wkb(column.to_numpy(zero_copy_only=False), on_invalid="ignore"))
    got = valid_wkb(column)
    assert got.tolist() == expected.tolist()
    assert got[:393].all() and got[-7:].all()
    assert np.flatnonzero(got[393:-7]).tolist() == [0, 1, 2, 8, 9, 10, 11]  # squares, concave, repeated, point, hole
    assert valid_wkb(pa.array([], pa.binary())).tolist() == []


@pytest.mark.parametrize("which", ["geo", "plain", "empty"])
def test_geoparquet_round_trip(
    tmp_path: Path, geo_scene: SceneInfo, plain_scene: SceneInfo, which: str
) -> None:
    scene = plain_scene if which == "plain" else geo_scene
    table = findings_table([] if which == "empty" else _findings(scene))
    gdf = shapely_frame(scene, table)
    store, uri = LocalStore(), join_uri(str(tmp_path), "findings", f"{which}.parquet")
    parts = [table.slice(0, 1), table.slice(1, 0), table.slice(1)]  # streamed in parts, one empty
    assert write_findings(store, uri, scene, parts) == len(gdf)

    assert_geodataframe_equal(read_geoparquet(store, uri), gdf)
    on_disk = gpd.read_parquet(uri)
    assert_geodataframe_equal(on_disk, gdf)
    geo_meta = json.loads(pq.read_schema(uri).metadata[b"geo"])
    assert geo_meta["primary_column"] == "geometry"
    assert geo_meta["columns"]["geometry"]["encoding"] == "WKB"
    if len(gdf):
        assert geo_meta["columns"]["geometry"]["bbox"] == pytest.approx(list(gdf.total_bounds))
        assert geo_meta["columns"]["geometry"]["geometry_types"] == ["Polygon"]


def test_findings_are_written_a_row_group_at_a_time(
    tmp_path: Path, geo_scene: SceneInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Parts are buffered and cut into row groups of 4; the file reads back as one table in order."""
    monkeypatch.setattr(catalog, "FINDINGS_ROW_GROUP", 4)
    table = findings_table(_findings(geo_scene) * 5)
    uri = join_uri(str(tmp_path), "findings.parquet")
    parts = [table.slice(0, 3), table.slice(3, 9), table.slice(12, 0), table.slice(12, 1), table.slice(13)]
    write_findings(LocalStore(), uri, geo_scene, parts)
    metadata = pq.read_metadata(uri)
    assert [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)] == [4, 4, 4, 3]
    assert_geodataframe_equal(gpd.read_parquet(uri), shapely_frame(geo_scene, table))
    group = metadata.row_group(0)
    dictionary = {
        group.column(i).path_in_schema
        for i in range(group.num_columns)
        if "RLE_DICTIONARY" in group.column(i).encodings
    }
    assert dictionary == {"scene_key", "tile_id", "label", "model", "model_version", "attributes", "coord_space"}


def test_parquet_and_json_round_trip(tmp_path: Path) -> None:
    store = LocalStore()
    df = pd.DataFrame({"tile_id": ["a", "b"], "valid_fraction": [1.0, 0.25], "row": [0, 1]})
    write_parquet(store, join_uri(str(tmp_path), "m.parquet"), df)
    pd.testing.assert_frame_equal(read_parquet(store, join_uri(str(tmp_path), "m.parquet")), df)

    doc = {"b": [1, 2], "a": "é", "nested": {"z": 1, "y": None}}
    uri = join_uri(str(tmp_path), "doc.json")
    write_json(store, uri, doc)
    assert read_json(store, uri) == doc
    text = Path(uri).read_text(encoding="utf-8")
    assert text.index('"a"') < text.index('"b"') and "é" in text and '\n  "a"' in text


def _item(scene: SceneInfo, root: str) -> pystac.Item:
    findings = _findings(scene)
    base = join_uri(root, scene.partition_key)
    hrefs = {
        "findings": join_uri(base, "findings.parquet"),
        "preview": join_uri(base, "preview.png"),
        "synthesis": join_uri(base, "synthesis.json"),
        "item": join_uri(base, "item.json"),
    }
    return scene_item(scene, _synthesis(scene, findings), hrefs, WHEN)


def test_stac_item_fields_validate_and_round_trip(tmp_path: Path, geo_scene: SceneInfo) -> None:
    item = _item(geo_scene, "s3://bucket/catalog")
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    validate_dict(d, extensions=[])  # STAC core, offline

    assert d["id"] == geo_scene.partition_key
    assert d["properties"]["datetime"] == "2024-05-01T12:00:00Z"
    footprint = shape(d["geometry"])
    assert footprint.is_valid
    assert box(*d["bbox"]).buffer(1e-9).contains(footprint)
    assert d["bbox"] == pytest.approx(list(geo_scene.bounds_wgs84))

    props = d["properties"]
    assert props["proj:code"] == "EPSG:32618"
    assert props["proj:shape"] == [geo_scene.height, geo_scene.width]
    assert props["proj:transform"] == pytest.approx(list(geo_scene.transform))
    assert props["proj:bbox"] == pytest.approx(list(geo_scene.bounds))
    assert props["label:type"] == "vector" and props["label:tasks"] == ["detection"]
    assert props["label:properties"] == ["label"]
    assert props["label:classes"] == [{"name": "label", "classes": ["building", "water"]}]
    assert props["label:overviews"][0]["counts"] == [
        {"name": "building", "count": 2},
        {"name": "water", "count": 1},
    ]
    assert props["tile_assets:counts"] == {"building": 2, "water": 1}
    assert props["tile_assets:coverage"] == 1.0
    assert "3 objects" in props["tile_assets:description"]
    assert props["model"] == {"name": "classical", "version": "1"}
    assert any("projection" in e for e in d["stac_extensions"])
    assert any("label" in e for e in d["stac_extensions"])

    assets = d["assets"]
    assert assets["source"]["href"] == geo_scene.uri and assets["source"]["roles"] == ["data"]
    assert assets["findings"]["href"].startswith("s3://bucket/catalog/")
    assert assets["findings"]["roles"] == ["labels"]
    assert assets["findings"]["type"] == "application/x-parquet"
    assert assets["preview"]["roles"] == ["overview", "thumbnail"]
    assert assets["synthesis"]["roles"] == ["metadata"]

    # Written to a local file but claiming an s3 self href: hrefs stay absolute.
    store, uri = LocalStore(), join_uri(str(tmp_path), "item.json")
    write_stac_json(store, uri, item)
    written = read_json(store, uri)
    assert all(link["rel"] != "self" for link in written["links"])
    assert (
        written["assets"]["preview"]["href"]
        == "s3://bucket/catalog/" + f"{geo_scene.partition_key}/preview.png"
    )
    back = pystac.Item.from_dict(written)
    assert back.to_dict(include_self_link=False, transform_hrefs=False) == written

    # Written where its self href points: the self link is kept, absolute.
    local_item = _item(geo_scene, str(tmp_path))
    write_stac_json(store, local_item.get_self_href(), local_item)
    again = pystac.Item.from_file(local_item.get_self_href())
    assert again.get_self_href() == local_item.get_self_href()
    assert again.assets["findings"].get_absolute_href() == join_uri(
        str(tmp_path), geo_scene.partition_key, "findings.parquet"
    )


def test_stac_item_not_georeferenced(plain_scene: SceneInfo) -> None:
    d = _item(plain_scene, "/cat").to_dict(include_self_link=False, transform_hrefs=False)
    validate_dict(d, extensions=[])
    assert d["geometry"] is None and "bbox" not in d
    assert d["properties"]["proj:code"] is None
    assert d["properties"]["proj:shape"] == [2000, 2000]
    assert "proj:transform" not in d["properties"]
    assert "pixel coordinates" in d["properties"]["tile_assets:description"]


def test_collection_extent_covers_items(
    tmp_path: Path, geo_scene: SceneInfo, plain_scene: SceneInfo
) -> None:
    naip = _scene(INBOX / "naip_2018.tif")
    items = [_item(s, str(tmp_path)) for s in (geo_scene, plain_scene, naip)]
    later = _item(naip, str(tmp_path / "later"))
    later.datetime = WHEN + dt.timedelta(days=3)
    items.append(later)
    collection = build_collection(items, href=join_uri(str(tmp_path), "collection.json"))
    d = collection.to_dict(include_self_link=False, transform_hrefs=False)
    validate_dict(d, extensions=[])

    extent = box(*d["extent"]["spatial"]["bbox"][0])
    for it in items:
        if it.bbox:
            assert extent.buffer(1e-9).contains(box(*it.bbox))
    assert d["extent"]["temporal"]["interval"] == [["2024-05-01T12:00:00Z", "2024-05-04T12:00:00Z"]]
    item_links = [link["href"] for link in d["links"] if link["rel"] == "item"]
    assert item_links == [it.get_self_href() for it in items]

    store = LocalStore()
    uri = join_uri(str(tmp_path), "collection.json")
    write_stac_json(store, uri, collection)
    back = pystac.Collection.from_dict(read_json(store, uri))
    assert back.extent.to_dict() == collection.extent.to_dict()

    world = build_collection([_item(plain_scene, str(tmp_path))])
    assert world.extent.spatial.bboxes == [[-180.0, -90.0, 180.0, 90.0]]


def test_items_frame_round_trip_and_query(
    tmp_path: Path, geo_scene: SceneInfo, plain_scene: SceneInfo
) -> None:
    items = [_item(geo_scene, str(tmp_path)), _item(plain_scene, str(tmp_path))]
    gdf = items_frame(items)
    assert gdf.crs.to_epsg() == 4326
    assert list(gdf["id"]) == [geo_scene.partition_key, plain_scene.partition_key]
    assert gdf.geometry.iloc[1] is None and gdf.geometry.iloc[0].is_valid

    store, uri = LocalStore(), join_uri(str(tmp_path), "catalog", "items.parquet")
    write_geoparquet(store, uri, gdf)
    assert_geodataframe_equal(read_geoparquet(store, uri), gdf)

    df = pd.read_parquet(uri)
    assert df["datetime"].dt.tz is not None
    hits = df[(df["count_building"] >= 2) & (df["coverage"] == 1.0)].sort_values("id")
    assert list(hits["id"]) == sorted([geo_scene.partition_key, plain_scene.partition_key])
    assert json.loads(df["counts"].iloc[0]) == {"building": 2, "water": 1}
    assert df["href_preview"].str.endswith("preview.png").all()

    empty = items_frame([])
    assert len(empty) == 0 and "coverage" in empty.columns and empty.crs.to_epsg() == 4326
    assert np.isnan(gdf.loc[gdf["id"] == plain_scene.partition_key, "coverage"]).sum() == 0
