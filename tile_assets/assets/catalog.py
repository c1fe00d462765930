"""`imagery_catalog`: the STAC Collection and the catalog-wide GeoParquet over all scenes."""


import json

import dagster as dg
import pandas as pd
import pystac

from tile_assets.assets import CODE_VERSION, GROUP
from tile_assets.assets.synthesis import scene_synthesis
from tile_assets.core.catalog import build_collection, items_frame, write_geoparquet, write_stac_json
from tile_assets.core.errors import StoreError
from tile_assets.partitions import scenes
from tile_assets.resources import ImageryStore

CATALOG_AUTOMATION = (
    (
        dg.AutomationCondition.newly_missing()
        | dg.AutomationCondition.any_deps_updated()
        | dg.AutomationCondition.any_deps_match(dg.AutomationCondition.execution_failed().newly_true())
    )
    .since_last_handled()
    & ~dg.AutomationCondition.any_deps_in_progress()
    & ~dg.AutomationCondition.in_progress()
).with_label("refresh after any scene changes")
"""Like `eager()`, but a failed or missing scene must not hold the catalog back, and a scene
that newly fails refreshes it too, so the catalog lists it as failed instead of leaving it out."""


def _read_json(imagery: ImageryStore, uri: str) -> dict | None:
    try:
        return json.loads(imagery.catalog_store().read_bytes(uri))
    except StoreError:
        return None


@dg.asset(
    deps=[scene_synthesis],
    group_name=GROUP,
    code_version=CODE_VERSION,
    kinds={"stac", "geoparquet"},
    owners=["team:imagery"],
    automation_condition=CATALOG_AUTOMATION,
)
def imagery_catalog(context: dg.AssetExecutionContext, imagery: ImageryStore) -> dg.MaterializeResult:
    """The whole catalog: a STAC Collection over every scene's Item, and `scenes.parquet`.

    One row per current scene partition, complete or not: complete scenes
    with their footprint, counts, coverage and description; failed or
    rejected scenes listed with their reason rather than silently missing.
    Refreshed automatically (automation condition) after scene partitions
    change; the CLI refreshes it at the end of each run.
    """
    keys = sorted(context.instance.get_dynamic_partitions(scenes.name))
    items: list[pystac.Item] = []
    others: list[dict] = []
    for key in keys:
        status = _read_json(imagery, imagery.scene_uri(key, "status.json")) or {"status": "pending"}
        item = _read_json(imagery, imagery.scene_uri(key, "item.json")) if status["status"] == "complete" else None
        if item is not None:
            items.append(pystac.Item.from_dict(item))
        else:
            others.append({"id": key, "status": status["status"], "description": status.get("reason", "")})
    collection = build_collection(items)
    store = imagery.catalog_store()
    collection_uri = imagery.catalog_uri("collection.json")
    write_stac_json(store, collection_uri, collection)
    frame = items_frame(items)
    if others:
        frame = pd.concat([frame, pd.DataFrame(others)], ignore_index=True)
        frame = frame.set_geometry("geometry") if "geometry" in frame else frame
    table_uri = imagery.catalog_uri("scenes.parquet")
    write_geoparquet(store, table_uri, frame)
    context.log.info(f"catalog: {len(items)} complete scene(s), {len(others)} not complete")
    return dg.MaterializeResult(
        metadata={
            "scenes": len(keys),
            "dagster/row_count": len(frame),
            "complete": len(items),
            "not_complete": len(others),
            "collection": dg.MetadataValue.path(collection_uri),
            "scenes_table": dg.MetadataValue.path(table_uri),
        }
    )
