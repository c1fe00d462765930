"""`new_images_sensor`: new or changed images in the inbox become partitions and runs.

Run keys are `partition_key:version` (ETag on S3, content hash locally), so a
re-listed object never starts a second run and an overwritten one starts
exactly one. Work per tick is bounded; the cursor resumes the listing and
names the file beside the catalog that holds each known scene's version
(`InboxState.save`).
"""


from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import TypeVar

import dagster as dg

from tile_assets.core.errors import StoreError, TileAssetsError, TransientStoreError
from tile_assets.core.inbox import InboxState, SceneChange, scan_inbox, state_folder
from tile_assets.core.registry import forget_scene, lookup_registration, register_scene
from tile_assets.core.store import Store, is_s3_uri, local_path
from tile_assets.jobs import process_scene, refresh_catalog
from tile_assets.partitions import scenes
from tile_assets.resources import ImageryStore

MAX_OBJECTS_PER_TICK = 1000
REGISTRY_WORKERS = 8
"""Registry writes in flight at once: one PUT per new scene would dominate a tick on S3."""
SIZE_CLASSES = ((50 * 2**20, "small"), (1 * 2**30, "large"))
T = TypeVar("T")


def size_class(size_bytes: int) -> str:
    """A coarse run tag so dagster.yaml can cap how many huge scenes run at once."""
    for limit, name in SIZE_CLASSES:
        if size_bytes < limit:
            return name
    return "huge"


def scene_run_tags(change: SceneChange) -> dict[str, str]:
    """Readable tags so the run list explains itself."""
    return {
        "tile_assets/source": change.obj.uri[-250:],
        "tile_assets/version": change.version,
        "tile_assets/size": size_class(change.obj.size),
        "tile_assets/trigger": "sensor",
    }


def run_all(call: Callable[[T], None], args: Iterable[T]) -> None:
    """Call `call` on every arg, a few at a time; the first error cancels the calls not yet started.

    With the store gone, each call would otherwise wait out its own retries
    and keep the tick running for many minutes.
    """
    with ThreadPoolExecutor(REGISTRY_WORKERS, thread_name_prefix="registry") as pool:
        futures = [pool.submit(call, arg) for arg in args]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def already_materialized(instance: dg.DagsterInstance, change: SceneChange) -> bool:
    """Whether this exact version was already processed, e.g. by `tile-assets run` before the sensor saw it.

    The data version of `source_images` is the fingerprint (`sha256:<hex>`
    locally, `etag:<etag>` on S3); the sensor's version is its short form.
    """
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("source_images"), asset_partitions=[change.partition_key]),
        limit=1,
    ).records
    materialization = records[0].asset_materialization if records else None
    if materialization is None:
        return False
    data_version = (materialization.tags or {}).get("dagster/data_version", "")
    return data_version.split(":", 1)[-1].startswith(change.version)


def restart_state(context: dg.SensorEvaluationContext, folder: str) -> InboxState:
    """A new pass when the state file the cursor names is gone, knowing every scene partition.

    Their versions are unknown, so each listed object is versioned again and
    reported; run keys and `already_materialized` keep that from running
    anything twice. Partitions not listed by the end of the pass are deleted
    if their registry entry names an object of this inbox (`registered_in`),
    as deletions always are: those are the deletions made while the state
    was lost.
    """
    known = {key: ["", ""] for key in scenes.get_partition_keys(dynamic_partitions_store=context.instance)}
    context.log.warning(
        f"the sensor state the cursor names is gone from {folder}; a new pass checks the inbox again "
        f"against the {len(known)} scene partitions"
    )
    return InboxState(known=known)


def registered_in(store: Store, imagery: ImageryStore, key: str) -> bool:
    """Whether a partition's registry entry names an object under this inbox. Partitions the CLI
    registered from elsewhere, or without an entry, are never deleted by this sensor."""
    try:
        obj, _ = lookup_registration(store, imagery.catalog, key)
    except TransientStoreError:
        raise  # the tick is skipped and its cursor kept: the deletion is decided again
    except (StoreError, ValueError, KeyError, TypeError):
        return False
    if is_s3_uri(imagery.inbox):
        return obj.uri.startswith(imagery.inbox.rstrip("/") + "/")
    return local_path(obj.uri).resolve().is_relative_to(local_path(imagery.inbox).resolve())


def scene_run_request(change: SceneChange) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"{change.partition_key}:{change.version}",
        partition_key=change.partition_key,
        job_name=process_scene.name,
        tags=scene_run_tags(change),
    )


@dg.sensor(
    jobs=[process_scene, refresh_catalog],
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Watches the inbox prefix (local folder or s3://) for new, changed and deleted images.",
)
def new_images_sensor(context: dg.SensorEvaluationContext, imagery: ImageryStore) -> dg.SensorResult | dg.SkipReason:
    folder = state_folder(imagery.catalog, imagery.inbox)
    try:
        catalog_store = imagery.catalog_store()
        loaded_from = context.cursor
        state = InboxState.load(catalog_store, folder, loaded_from)
        if state is None:
            loaded_from = None
            state = restart_state(context, folder)
        scan = scan_inbox(imagery.inbox_store(), imagery.inbox, state, MAX_OBJECTS_PER_TICK)
        deleted = [key for key in scan.deleted if registered_in(catalog_store, imagery, key)]
        run_all(
            lambda c: register_scene(catalog_store, imagery.catalog, c.partition_key, c.obj, c.fingerprint),
            scan.changes,
        )
        run_all(lambda key: forget_scene(catalog_store, imagery.catalog, key), deleted)
        cursor = scan.state.save(catalog_store, folder, loaded_from)
    except TileAssetsError as exc:
        context.log.error(f"inbox scan failed, cursor kept for the next tick: {exc}")
        return dg.SkipReason(f"inbox scan failed: {exc}")
    for uri, reason in scan.ignored[:20]:
        context.log.debug(f"ignored {uri}: {reason}")
    for key in deleted:
        context.log.warning(f"scene {key}: its object left the inbox; removed from the catalog")
    # One query for all keys: `has_dynamic_partition` per key cost ~30 ms each on SQLite.
    existing = set(scenes.get_partition_keys(dynamic_partitions_store=context.instance)) if scan.changes else set()
    new_keys = [c.partition_key for c in scan.changes if c.partition_key not in existing]
    # A scene first seen by this cursor but already done at this version (CLI runs) is not redone.
    todo = [c for c in scan.changes if not (c.partition_key in existing and already_materialized(context.instance, c))]
    requests = [scene_run_request(c) for c in todo]
    if deleted:
        requests.append(dg.RunRequest(run_key=None, job_name=refresh_catalog.name, tags={"tile_assets/trigger": "deletion"}))
    partition_requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if new_keys:
        partition_requests.append(scenes.build_add_request(new_keys))
    if deleted:
        partition_requests.append(scenes.build_delete_request(deleted))
    context.log.info(
        f"listed to {scan.state.after or 'end of pass'}: {len(scan.changes)} new/changed "
        f"({len(scan.changes) - len(todo)} already materialized at that version), "
        f"{len(deleted)} deleted, {len(scan.ignored)} ignored"
    )
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=partition_requests,
        cursor=cursor,
    )
