"""The one `Definitions` object of tile_assets, loaded by workspace.yaml."""

from __future__ import annotations

import functools
import gc
import json

import dagster as dg
from dagster_aws.s3 import S3Resource

from tile_assets.assets.catalog import imagery_catalog
from tile_assets.assets.findings import tile_findings
from tile_assets.assets.scenes import source_images
from tile_assets.assets.synthesis import scene_synthesis
from tile_assets.assets.tiles import tiles
from tile_assets.checks import findings_schema, tile_coverage
from tile_assets.executors import scene_executor
from tile_assets.jobs import process_scene, refresh_catalog
from tile_assets.resources import CatalogJsonIOManager, GateResource, ImageryStore, TileModelResource
from tile_assets.schedules import retry_incomplete_scenes
from tile_assets.sensors import new_images_sensor
from tile_assets.settings import S3_ENV_VARS, Settings


def build_s3_resource(settings: Settings) -> S3Resource:
    """dagster-aws's S3Resource from the AWS_* variables that are set; the standard chain otherwise."""
    fields = {field: dg.EnvVar(S3_ENV_VARS[field]) for field in settings.s3_env}
    return S3Resource(use_ssl=settings.s3_use_ssl, **fields)


def build_definitions(settings: Settings) -> dg.Definitions:
    """Every asset, check, job, sensor, schedule and resource, for these settings."""
    s3 = build_s3_resource(settings)
    imagery = ImageryStore(inbox=settings.inbox, catalog=settings.catalog, s3=s3)
    return dg.Definitions(
        assets=[source_images, tiles, tile_findings, scene_synthesis, imagery_catalog],
        asset_checks=[tile_coverage, findings_schema],
        jobs=[process_scene, refresh_catalog],
        sensors=[new_images_sensor, dg.AutomationConditionSensorDefinition(
            "catalog_automation", target=dg.AssetSelection.assets(imagery_catalog),
            default_status=dg.DefaultSensorStatus.RUNNING,
        )],
        schedules=[retry_incomplete_scenes],
        executor=scene_executor,
        resources={
            # Top level (not only nested in `imagery`), so the UI's Resources page and launchpad
            # show which variables configure S3: their names, never their values.
            "s3": s3,
            "imagery": imagery,
            "tile_model": TileModelResource(),
            "gate": GateResource(**json.loads(settings.gate)),
            "io_manager": CatalogJsonIOManager(imagery=imagery),
        },
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(Settings.from_environment())


def scene_job() -> dg.JobDefinition:
    """The per-scene job for the environment's settings: what CLI runs pass to `dg.reconstructable`.

    It lives here, not in the CLI, so step processes rebuild it from a module
    the multiprocess executor's forkserver preloads.
    """
    return resolved_job(Settings.from_environment(), process_scene.name)


def catalog_job() -> dg.JobDefinition:
    return resolved_job(Settings.from_environment(), refresh_catalog.name)


@functools.lru_cache(maxsize=8)
def resolved_job(settings: Settings, name: str) -> dg.JobDefinition:
    """Built once per process and settings: a step process resolves its job twice (plan, then execution)."""
    return build_definitions(settings).resolve_job_def(name)


# What is loaded by now (Dagster, the libraries, these definitions: some 270,000 objects) lives as
# long as the process. Frozen, the cyclic collector's full passes skip it: in a run that creates
# findings by the hundred thousand, each pass took ~0.1 s and ran every few seconds, the model's
# thread waiting on it (0.45 -> 0.07 s of collection in the classical rerun of bench_fanout). Step
# processes forked from a forkserver freeze what they inherit as well (`executors`).
gc.freeze()
