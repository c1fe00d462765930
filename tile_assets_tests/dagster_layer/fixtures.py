"""Helpers for the Dagster-layer tests: definitions for temp folders, registering and running scenes."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
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


@dataclass
class RegisteredImage:
    """A writable copy of a sample image, registered as a scene on a test instance."""

    instance: dg.DagsterInstance
    defs: dg.Definitions
    catalog: Path
    image: Path
    key: str

    def materialize(self, asset: str, run_config: dict, *upstream: str) -> dict[str, object]:
        """Run `asset` (after `upstream`) of this scene alone; its materialization's metadata and data version."""
        job = self.defs.resolve_job_def(process_scene.name)
        result = job.execute_in_process(
            instance=self.instance,
            partition_key=self.key,
            asset_selection=[dg.AssetKey(name) for name in (*upstream, asset)],
            run_config=run_config,
        )
        [materialization] = result.asset_materializations_for_node(asset)
        return {
            **{name: value.value for name, value in materialization.metadata.items()},
            "data_version": materialization.tags.get("dagster/data_version"),
        }

    def scene_file(self, name: str) -> Path:
        return self.catalog / "scenes" / self.key / name


@contextmanager
def registered_image(folder: Path, sample: str) -> Iterator[RegisteredImage]:
    """`sample` copied into `folder`/inbox and registered on a fresh test instance, catalog in `folder`/catalog."""
    inbox, catalog = folder / "inbox", folder / "catalog"
    [image] = copy_images(inbox, INBOX / sample)
    with dg.instance_for_test() as instance:
        key = register_image(instance, catalog, image)
        yield RegisteredImage(instance, definitions_for(inbox, catalog), catalog, image, key)
