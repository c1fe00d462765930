"""Helpers for the Dagster-layer tests: definitions for temp folders, registering and running scenes."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg

from tile_assets.core.keys import scene_key
from tile_assets.core.registry import register_scene
from tile_assets.core.store import LocalStore
from tile_assets.definitions import build_definitions
from tile_assets.jobs import process_scene
from tile_assets.partitions import scenes
from tile_assets.settings import Settings

HERE = Path(__file__).resolve().parent
INBOX = HERE.parent.parent / "data" / "inbox"
BAD = HERE.parent / "data" / "bad"
SCENE_FILES = (
    "source.json",
    "tiles.parquet",
    "findings.parquet",
    "tile_results.parquet",
    "synthesis.json",
    "item.json",
    "preview.png",
    "status.json",
)
"""Every file a complete scene leaves under `<catalog>/scenes/<key>/`."""


def definitions_for(inbox: Path, catalog: Path) -> dg.Definitions:
    """The project's Definitions over a temp inbox and catalog (no S3 variables)."""
    return build_definitions(Settings(inbox=str(inbox), catalog=str(catalog)))


def copy_images(dest: Path, *sources: Path) -> list[Path]:
    """Writable copies of real sample images (the originals are read-only)."""
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for source in sources:
        target = dest / source.name
        shutil.copyfile(source, target)
        copies.append(target)
    return copies


def register_image(instance: dg.DagsterInstance, catalog: Path, image: Path) -> str:
    """Register an image as a scene partition, as the sensor and the CLI do; its key."""
    store = LocalStore()
    obj = store.head(str(image))
    key = scene_key(obj.uri)
    register_scene(store, str(catalog), key, obj)
    instance.add_dynamic_partitions(scenes.name, [key])
    return key


def run_scene(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    key: str,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    """Run `process_scene` for one partition in process, recorded on `instance`."""
    job = defs.resolve_job_def(process_scene.name)
    return job.execute_in_process(
        instance=instance, partition_key=key, tags=tags, raise_on_error=False
    )
