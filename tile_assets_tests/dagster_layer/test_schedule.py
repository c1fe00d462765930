"""`retry_incomplete_scenes`: real failed, rejected and complete scene runs on a temporary instance.

Retries back off exponentially from the start of the previous retry and stop
after MAX_ATTEMPTS; each tick is evaluated at a chosen scheduled time.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.test_utils import create_run_for_test

import tile_assets.schedules
from tile_assets.checks import COVERAGE_THRESHOLD
from tile_assets.core.store import LocalStore
from tile_assets.schedules import (
    BASE_BACKOFF_SECONDS,
    MAX_ATTEMPTS,
    RETRY_TAG,
    needs_retry,
    recent_runs,
    retry_due,
    retry_incomplete_scenes,
)
from tile_assets_tests.dagster_layer.fixtures import (
    BAD,
    INBOX,
    copy_images,
    definitions_for,
    register_image,
    run_scene,
)

MINUTE = dt.timedelta(minutes=1)


@dataclass
class Scenes:
    instance: dg.DagsterInstance
    defs: dg.Definitions
    missing: str
    """its source vanished after registration: fails in source_images with a StoreError (not a rejection)"""
    rejected: str
    """all-nodata.tif: rejected in tiles (UnsupportedRasterError)"""
    complete: str
    never_run: str
    start: dt.datetime
    """a scheduled time just before any retry was launched"""

    def tick(self, at: dt.datetime) -> list[dg.RunRequest]:
        with dg.build_schedule_context(
            instance=self.instance,
            resources=self.defs.resources,
            scheduled_execution_time=at,
        ) as context:
            result = retry_incomplete_scenes(context)
        if isinstance(result, dg.SkipReason):
            return []
        return list(result)

    def launch(self, request: dg.RunRequest) -> dg.ExecuteInProcessResult:
        """Run a retry request as the daemon would: its partition and tags."""
        assert request.partition_key is not None
        return run_scene(
            self.defs, self.instance, request.partition_key, tags=dict(request.tags)
        )


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenes]:
    root = tmp_path_factory.mktemp("schedule")
    inbox, catalog = root / "inbox", root / "catalog"
    missing, nodata, good, never = copy_images(
        inbox,
        INBOX / "colorado_aerial_cl1.tif",
        BAD / "all-nodata.tif",
        INBOX / "rgb-byte-tenth.tif",
        INBOX / "page_text.png",
    )
    defs = definitions_for(inbox, catalog)
    with dg.instance_for_test() as instance:
        missing_key, rejected, complete, never_run = (
            register_image(instance, catalog, image)
            for image in (missing, nodata, good, never)
        )
        missing.unlink()
        outcomes = [
            run_scene(defs, instance, key).success
            for key in (missing_key, rejected, complete)
        ]
        assert outcomes == [False, False, True]
        yield Scenes(
            instance,
            defs,
            missing=missing_key,
            rejected=rejected,
            complete=complete,
            never_run=never_run,
            start=dt.datetime.now(dt.UTC),
        )


def test_only_the_failed_scene_is_retried(scenes: Scenes) -> None:
    [request] = scenes.tick(scenes.start)
    assert request.partition_key == scenes.missing
    assert request.tags[RETRY_TAG] == "retry"
    assert request.run_key == f"{scenes.missing}:retry:1:"


def test_retries_back_off_and_stop(scenes: Scenes) -> None:
    """Retry n+1 waits BASE_BACKOFF_SECONDS * 2**(n-1) after retry n started (all start just after `start`)."""
    at = scenes.start
    for attempt in range(1, MAX_ATTEMPTS + 1):
        [request] = scenes.tick(at)
        assert request.partition_key == scenes.missing
        assert request.run_key == f"{scenes.missing}:retry:{attempt}:"
        retry = scenes.launch(request)
        assert not retry.success  # the source is still missing
        assert retry.dagster_run.tags["dagster/partition"] == scenes.missing
        assert retry.dagster_run.tags[RETRY_TAG] == "retry"
        backoff = dt.timedelta(seconds=BASE_BACKOFF_SECONDS * 2 ** (attempt - 1))
        assert scenes.tick(scenes.start + backoff - 5 * MINUTE) == []
        at = scenes.start + backoff + 10 * MINUTE
    assert scenes.tick(at) == []
    assert scenes.tick(scenes.start + dt.timedelta(days=30)) == []


def test_needs_retry() -> None:
    failed = {
        "status": "failed",
        "stage": "tiles",
        "error_type": "StoreError",
        "reason": "access denied",
    }
    assert needs_retry(failed, last_run_failed=True) == "tiles failed: access denied"
    for rejection in (
        "InvalidSourceError",
        "UnsupportedRasterError",
        "RasterReadError",
        "RejectedSceneError",
    ):
        assert (
            needs_retry({**failed, "error_type": rejection}, last_run_failed=True)
            is None
        )
    assert (
        needs_retry(None, last_run_failed=True) == "last run failed"
    )  # transient: no status written
    assert needs_retry(None, last_run_failed=False) is None
    complete = {"status": "complete", "coverage": 1.0}
    assert needs_retry(complete, last_run_failed=False) is None
    assert needs_retry(complete, last_run_failed=True) == "last run failed"
    low = {"status": "complete", "coverage": COVERAGE_THRESHOLD - 0.1}
    reason = needs_retry(low, last_run_failed=False)
    assert reason is not None and "coverage" in reason


def test_retry_due() -> None:
    now = 1_000_000.0
    assert retry_due([], now)
    assert not retry_due([now - BASE_BACKOFF_SECONDS + 1], now)
    assert retry_due([now - BASE_BACKOFF_SECONDS], now)
    two = [now - 10 * BASE_BACKOFF_SECONDS, now - BASE_BACKOFF_SECONDS]
    assert not retry_due(two, now)  # the second retry waits twice as long
    assert retry_due([two[0], now - 2 * BASE_BACKOFF_SECONDS], now)
    assert not retry_due([now - 100 * BASE_BACKOFF_SECONDS] * MAX_ATTEMPTS, now)


def test_scenes_not_failed_are_left_alone(scenes: Scenes) -> None:
    keys = {r.partition_key for r in scenes.tick(scenes.start + dt.timedelta(days=365))}
    assert scenes.never_run not in keys
    assert scenes.complete not in keys and scenes.rejected not in keys


def test_runs_are_fetched_for_many_scenes_at_once_newest_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """One query per `SCENES_PER_QUERY` scenes, not per scene; each scene keeps its newest runs."""
    monkeypatch.setattr(tile_assets.schedules, "SCENES_PER_QUERY", 2)
    monkeypatch.setattr(tile_assets.schedules, "RUNS_PER_SCENE", 3)
    with dg.instance_for_test() as instance:
        made: dict[str, list[str]] = {}
        for i in range(16):  # interleaved across scenes, as runs come; scene-0 has 4
            key = f"scene-{i % 5}"
            run = create_run_for_test(
                instance, job_name="process_scene", status=DagsterRunStatus.SUCCESS, tags={"dagster/partition": key}
            )
            made.setdefault(key, []).append(run.run_id)
        create_run_for_test(instance, job_name="refresh_catalog", tags={"dagster/partition": "scene-0"})
        queries = []
        fetch = instance.get_run_records
        monkeypatch.setattr(instance, "get_run_records", lambda **kw: queries.append(kw) or fetch(**kw))
        runs = recent_runs(instance, [f"scene-{i}" for i in range(6)])
    assert len(queries) == 3  # 6 scenes, 2 a query
    assert {key: [r.dagster_run.run_id for r in records] for key, records in runs.items()} == {
        key: list(reversed(ids))[:3] for key, ids in made.items()
    }


def test_a_scene_whose_last_run_met_its_coverage_check_is_not_read(
    scenes: Scenes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its `tile_coverage` check passed in that run: nothing to retry, and no GET for its status on S3."""
    read = LocalStore.read_bytes
    statuses: list[str] = []

    def counted(self: LocalStore, uri: str) -> bytes:
        if uri.endswith("status.json"):
            statuses.append(uri)
        return read(self, uri)

    monkeypatch.setattr(LocalStore, "read_bytes", counted)
    scenes.tick(scenes.start + dt.timedelta(days=365))
    read_keys = {Path(uri).parent.name for uri in statuses}
    assert scenes.complete not in read_keys
    assert {scenes.missing, scenes.rejected} <= read_keys  # their last runs failed: the reason is in the file
