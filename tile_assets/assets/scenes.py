"""`source_images`: each scene's object validated and described, its version fingerprinted."""


from dataclasses import replace

import dagster as dg

from tile_assets.assets import CODE_VERSION, GROUP
from tile_assets.assets.failures import scene_failure
from tile_assets.core.catalog import write_json
from tile_assets.core.errors import TileAssetsError
from tile_assets.core.raster import describe, open_raster
from tile_assets.core.registry import lookup_scene
from tile_assets.partitions import scenes
from tile_assets.resources import ImageryStore


def scene_metadata(info: dict) -> dict[str, object]:
    """What a user scans on the partition page: size, bands, dtype, CRS, where it is."""
    return {
        "uri": dg.MetadataValue.path(info["uri"]),
        "width": info["width"],
        "height": info["height"],
        "megapixels": round(info["width"] * info["height"] / 1e6, 2),
        "bands": info["count"],
        "band_names": ", ".join(info["colorinterp"]),
        "dtype": info["dtype"],
        "crs": info["crs"] or "none (pixel coordinates)",
        "nodata": str(info["nodata"]),
        "size_bytes": info["size_bytes"],
        "fingerprint": info["fingerprint"],
    }


@dg.asset(
    partitions_def=scenes,
    group_name=GROUP,
    code_version=CODE_VERSION,
    kinds={"rasterio", "json"},
    owners=["team:imagery"],
)
def source_images(context: dg.AssetExecutionContext, imagery: ImageryStore) -> dg.Output[dict]:
    """The source image of a scene, opened with rasterio and validated.

    Checks that the object is a readable raster with a supported dtype and
    band count and within the pixel limits (decompression-bomb guard), then
    records its size, bands, CRS, transform, nodata and a content fingerprint
    (sha256 for local files, the ETag on S3). No pixels leave this step.
    Writes `scenes/<key>/source.json`.
    """
    key = context.partition_key
    catalog_store = imagery.catalog_store()
    try:
        registered = lookup_scene(catalog_store, imagery.catalog, key)
        store = imagery.store_for(registered.uri)
        head = store.head(registered.uri)
        fingerprint = store.fingerprint(registered.uri)
        with open_raster(store, registered.uri) as ds:
            described = describe(ds, registered.uri, key, fingerprint, head.size)
        info = replace(described, last_modified=head.last_modified).to_dict()
    except TileAssetsError as exc:
        raise scene_failure(imagery, key, "source_images", exc) from exc
    write_json(catalog_store, imagery.scene_uri(key, "source.json"), info)
    context.log.info(
        f"{registered.uri}: {info['width']}x{info['height']} x{info['count']} {info['dtype']}"
    )
    return dg.Output(
        info,
        data_version=dg.DataVersion(fingerprint),
        metadata=scene_metadata(info),
    )
