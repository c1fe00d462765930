"""`retry_incomplete_scenes`: relaunch scenes that failed or came out incomplete, with backoff.

A scene is retried when its last run failed for a reason other than a
rejection of the image itself, or when it completed below the coverage
threshold; a scene the content gate rejected, only once the gate's policy
has changed. Each retry waits twice as long as the one before, and after
`MAX_ATTEMPTS` the scene is left alone (a broken image never loops forever)
until its object changes, which the sensor picks up as a new version.
"""


import json
import time
from collections.abc import Mapping, Sequence

import dagster as dg
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus

from tile_assets.checks import COVERAGE_THRESHOLD, tile_coverage
from tile_assets.core.errors import StoreError, TileAssetsError
from tile_assets.core.store import Store
from tile_assets.jobs import process_scene
from tile_assets.partitions import scenes
from tile_assets.resources import GateResource, ImageryStore

MAX_ATTEMPTS = 3
BASE_BACKOFF_SECONDS = 15 * 60
REJECTIONS = frozenset(
    {"InvalidSourceError", "UnsupportedRasterError", "RasterReadError", "RejectedSceneError"}
)
"""Errors that are facts about the image version: retrying cannot help until it changes."""
RETRY_TAG = "tile_assets/trigger"


def needs_retry(status: dict | None, last_run_failed: bool, gate_policy: str = "") -> str | None:
    """Why a scene should be retried, or None (complete, rejected, or never run).

    A scene the content gate rejected is retried only once the gate policy
    differs from the one it was rejected under (`gate_policy`, the current one).
    """
    if status is None:
        return "last run failed" if last_run_failed else None
    if status.get("status") == "rejected":
        rejected_under = status.get("policy", "")
        changed = bool(rejected_under and gate_policy and rejected_under != gate_policy)
        return "the gate policy changed since the rejection" if changed else None
    if status.get("status") == "failed" and status.get("error_type") not in REJECTIONS:
        return f"{status.get('stage')} failed: {status.get('reason', '')}"
    if status.get("status") == "complete" and float(status.get("coverage", 1.0)) < COVERAGE_THRESHOLD:
        return f"coverage {status['coverage']:.3f} below {COVERAGE_THRESHOLD}"
    if last_run_failed and status.get("status") != "failed":
        return "last run failed"
    return None


def retry_due(attempts: list[float], now: float) -> bool:
    """Whether another attempt is allowed now, given the start times of earlier retries."""
    if len(attempts) >= MAX_ATTEMPTS:
        return False
    if not attempts:
        return True
    return now - max(attempts) >= BASE_BACKOFF_SECONDS * 2 ** (len(attempts) - 1)


RUNS_PER_SCENE = 20
"""A scene's most recent runs looked at: its last run and the retries of its version."""
SCENES_PER_QUERY = 200
"""Scenes whose runs one query fetches: a query per scene took ~3 ms on SQLite, 31.7 s for 10,000."""


def recent_runs(instance: dg.DagsterInstance, keys: Sequence[str]) -> dict[str, list[dg.RunRecord]]:
    """Each scene's `process_scene` runs, newest first, at most `RUNS_PER_SCENE`."""
    runs: dict[str, list[dg.RunRecord]] = {}
    for start in range(0, len(keys), SCENES_PER_QUERY):
        chunk = list(keys[start : start + SCENES_PER_QUERY])
        records = instance.get_run_records(
            filters=dg.RunsFilter(tags={"dagster/partition": chunk}, job_name=process_scene.name)
        )
        for record in records:  # newest first
            scene_runs = runs.setdefault(record.dagster_run.tags.get("dagster/partition", ""), [])
            if len(scene_runs) < RUNS_PER_SCENE:
                scene_runs.append(record)
    return runs


def coverage_met(instance: dg.DagsterInstance, last_runs: Mapping[str, dg.DagsterRun]) -> set[str]:
    """Scenes whose last run succeeded and whose `tile_coverage` check passed in that very run.

    Nothing about such a scene calls for a retry, so its status.json need not
    be read (a GET per scene every tick on S3). One query covers every
    partition of the check: the event log storage's own method, since the
    instance's public one (`get_latest_asset_check_evaluation_record`) takes
    no partition.
    """
    succeeded = {key: run.run_id for key, run in last_runs.items() if run.is_success}
    if not succeeded:
        return set()
    infos = instance.event_log_storage.get_asset_check_partition_info([tile_coverage.check_key])
    return {
        info.partition_key
        for info in infos
        if info.partition_key in succeeded
        and info.latest_planned_run_id == succeeded[info.partition_key]
        and info.latest_execution_status == AssetCheckExecutionRecordStatus.SUCCEEDED
    }


def read_statuses(imagery: ImageryStore, keys: Sequence[str]) -> list[dict | None]:
    """Each scene's status.json, None where it is missing or unreadable."""

    def read(store: Store, key: str) -> dict | None:
        try:
            return json.loads(store.read_bytes(imagery.scene_uri(key, "status.json")))
        except (StoreError, ValueError):
            return None

    return imagery.read_scenes(keys, read)


@dg.schedule(
    job=process_scene,
    cron_schedule="*/15 * * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Relaunches failed or incomplete scenes with exponential backoff, at most 3 times per version.",
)
def retry_incomplete_scenes(
    context: dg.ScheduleEvaluationContext, imagery: ImageryStore, gate: GateResource
):
    # The tick's own time, so a late or replayed tick decides as it would have on time.
    scheduled = context.scheduled_execution_time
    now = scheduled.timestamp() if scheduled else time.time()
    try:
        gate_policy = gate.fingerprint(imagery)
    except TileAssetsError as exc:
        context.log.warning(f"gate policy unreadable, rejected scenes are not retried: {exc}")
        gate_policy = ""
    requests = []
    keys = context.instance.get_dynamic_partitions(scenes.name)
    runs = recent_runs(context.instance, keys)
    finished = {key: runs[key] for key in keys if key in runs and runs[key][0].dagster_run.is_finished}
    covered = coverage_met(context.instance, {key: records[0].dagster_run for key, records in finished.items()})
    todo = {key: records for key, records in finished.items() if key not in covered}
    for (key, records), status in zip(todo.items(), read_statuses(imagery, list(todo)), strict=True):
        last = records[0].dagster_run
        reason = needs_retry(status, last.is_failure, gate_policy)
        if reason is None:
            continue
        version = last.tags.get("tile_assets/version", "")
        attempts = [
            r.create_timestamp.timestamp() for r in records
            if r.dagster_run.tags.get(RETRY_TAG) == "retry"
            and r.dagster_run.tags.get("tile_assets/version", "") == version
        ]
        if not retry_due(attempts, now):
            continue
        context.log.info(f"retrying {key} (attempt {len(attempts) + 1}/{MAX_ATTEMPTS}): {reason}")
        requests.append(
            dg.RunRequest(
                run_key=f"{key}:retry:{len(attempts) + 1}:{version}",
                partition_key=key,
                tags={**{k: v for k, v in last.tags.items() if k.startswith("tile_assets/")}, RETRY_TAG: "retry"},
            )
        )
    return requests or dg.SkipReason("no failed or incomplete scene is due for a retry")
