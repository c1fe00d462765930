"""`imagery_catalog`: the STAC Collection and the catalog-wide GeoParquet over all scenes."""


import json

import dagster as dg
import pandas as pd
import pystac

from tile_assets.assets import CODE_VERSION, GROUP
from tile_assets.assets.synthesis import scene_synthesis
from tile_assets.core.catalog import build_collection, items_frame, write_geoparquet, write_stac_json
from tile_assets.core.errors import StoreError, TransientStoreError
from tile_assets.core.store import Store
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


def _read_json(store: Store, uri: str) -> dict | None:
    """A scene's JSON file, or None when it is missing. A transient error is raised, so the catalog
    is not published with a complete scene listed as pending; so is a file that is not JSON."""
    try:
        data = store.read_bytes(uri)
    except TransientStoreError:
        raise
    except StoreError:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ValueError(f"{uri}: not JSON ({exc})") from exc


def _scene_files(imagery: ImageryStore, keys: list[str]) -> list[tuple[str, dict, dict | None]]:
    """Each scene's status.json (pending when absent) and, for a complete scene, its item.json.

    A scene whose file is not JSON is listed as unreadable, with the reason; the others go on.
    """

    def read(store: Store, key: str) -> tuple[str, dict, dict | None]:
        try:
            status = _read_json(store, imagery.scene_uri(key, "status.json")) or {"status": "pending"}
            item = _read_json(store, imagery.scene_uri(key, "item.json")) if status["status"] == "complete" else None
        except ValueError as exc:
            return key, {"status": "unreadable", "reason": str(exc)}, None
        return key, status, item

    return imagery.read_scenes(keys, read)


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
    for key, status, item in _scene_files(imagery, keys):
        if item is not None:
            # Written by this project at pystac's STAC version: no migration, no defensive copy
            # (together half of the ~1 ms an Item took to load).
            items.append(pystac.Item.from_dict(item, migrate=False, preserve_dict=False))
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
