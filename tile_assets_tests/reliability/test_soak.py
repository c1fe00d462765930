"""A bounded soak: 200 small images dropped into the inbox in batches while the sensor keeps ticking.

The sensor is evaluated in a loop as the daemon would (cursor carried over,
partition requests applied) while a thread drops batches of 25 images (each
written under a temporary name, then renamed into place, as an uploader
should). Every run request is executed as a real `process_scene` run, two
at a time in worker processes; the catalog is refreshed at the end. Every
image must then be in the catalog exactly once, complete, and no run key may
have been requested twice.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor
from functools import cache
from multiprocessing import get_context
from pathlib import Path

import dagster as dg
import geopandas as gpd
import pytest
import rasterio
from rasterio.io import MemoryFile
from rasterio.windows import Window

from tile_assets.core.keys import scene_key
from tile_assets.definitions import build_definitions
from tile_assets.jobs import process_scene, refresh_catalog
from tile_assets.partitions import scenes
from tile_assets.sensors import new_images_sensor
from tile_assets.settings import Settings
from tile_assets_tests.reliability.corpus import NAIP

IMAGES = 200
BATCH = 25
SIDE = 64
STEP = 32
"""Crops start every 32 px of the NAIP scene: 200 distinct 64 x 64 images."""
WORKERS = 2
PAUSE_S = 0.2
"""Between two sensor ticks."""
DEADLINE_S = 600.0
EXECUTION = {"execution": {"config": {"in_process": {}}}}


def tiny_images() -> list[bytes]:
    """`IMAGES` georeferenced 64 x 64 GeoTIFFs cut from the NAIP sample."""
    images = []
    with rasterio.open(NAIP) as src:
        columns = (src.width - SIDE) // STEP + 1
        for number in range(IMAGES):
            window = Window(number % columns * STEP, number // columns * STEP, SIDE, SIDE)
            profile = {
                **src.profile, "width": SIDE, "height": SIDE, "transform": src.window_transform(window),
                "blockxsize": SIDE, "blockysize": SIDE, "photometric": "MINISBLACK",
            }
            with MemoryFile() as memory:
                with memory.open(**profile) as dst:
                    dst.write(src.read(window=window))
                images.append(memory.read())
    return images


def drop(inbox: Path, images: list[bytes], ticked: threading.Event, done: threading.Event) -> None:
    """Batches of `BATCH` images, each written as `.part` then renamed into place.

    Each batch waits for a tick to start, so batches land during and between
    ticks however fast or slow the sensor is.
    """
    try:
        for start in range(0, len(images), BATCH):
            ticked.wait(timeout=DEADLINE_S)
            ticked.clear()
            folder = inbox / f"drop-{start // BATCH:02d}"
            folder.mkdir(parents=True)
            for number in range(start, min(start + BATCH, len(images))):
                partial = folder / f".image-{number:03d}.tif.part"
                partial.write_bytes(images[number])
                os.replace(partial, folder / f"image-{number:03d}.tif")
    finally:
        done.set()


def quiet() -> None:
    """Worker start-up: no console output (Dagster logs every event at DEBUG)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)


@cache
def worker_job(settings: Settings) -> tuple[dg.JobDefinition, dg.DagsterInstance]:
    """The scene job and an in-memory instance, built once per worker process."""
    return build_definitions(settings).resolve_job_def(process_scene.name), dg.DagsterInstance.ephemeral()


def run_scene(settings: Settings, partition_key: str, tags: dict[str, str]) -> bool:
    """One `process_scene` run, as the daemon would launch it for a run request."""
    job, instance = worker_job(settings)
    instance.add_dynamic_partitions(scenes.name, [partition_key])
    result = job.execute_in_process(
        run_config=EXECUTION, instance=instance, partition_key=partition_key, tags=tags, raise_on_error=False
    )
    return result.success


@pytest.mark.slow
def test_200_images_dropped_while_the_sensor_runs_are_each_in_the_catalog_once(tmp_path: Path) -> None:
    inbox, catalog = tmp_path / "inbox", tmp_path / "catalog"
    inbox.mkdir()
    settings = Settings(inbox=str(inbox), catalog=str(catalog))
    defs = build_definitions(settings)
    images = tiny_images()
    assert len(set(images)) == IMAGES
    ticked, done = threading.Event(), threading.Event()
    dropper = threading.Thread(target=drop, args=(inbox, images, ticked, done), name="dropper")
    requested: list[str] = []
    runs: list[Future[bool]] = []
    ticks = 0
    deadline = time.monotonic() + DEADLINE_S
    with dg.instance_for_test() as instance, ProcessPoolExecutor(
        WORKERS, mp_context=get_context("spawn"), initializer=quiet
    ) as pool:
        dropper.start()
        cursor = None
        while time.monotonic() < deadline:
            finished = done.is_set()  # read before the tick: a tick after the last drop must see it
            ticked.set()
            with dg.build_sensor_context(instance=instance, cursor=cursor, resources=defs.resources) as context:
                result = new_images_sensor(context)
            ticks += 1
            assert isinstance(result, dg.SensorResult), result
            for request in result.dynamic_partitions_requests or []:
                assert isinstance(request, dg.AddDynamicPartitionsRequest)
                instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
            for request in result.run_requests or []:
                assert request.job_name == process_scene.name and request.partition_key
                requested.append(request.run_key or "")
                runs.append(pool.submit(run_scene, settings, request.partition_key, dict(request.tags)))
            cursor = result.cursor
            if finished and not result.run_requests:
                break
            time.sleep(PAUSE_S)
        dropper.join()
        assert done.is_set() and time.monotonic() < deadline
        assert all(run.result(timeout=DEADLINE_S) for run in runs)
        refreshed = build_definitions(settings).resolve_job_def(refresh_catalog.name).execute_in_process(
            run_config=EXECUTION, instance=instance
        )
        assert refreshed.success
        partitions = set(instance.get_dynamic_partitions(scenes.name))

    expected = {scene_key(str(path)) for path in inbox.glob("drop-*/image-*.tif")}
    assert len(expected) == IMAGES
    assert ticks > IMAGES // BATCH  # the drops were spread over the ticks
    assert [key for key, count in Counter(requested).items() if count > 1] == []
    assert {run_key.split(":", 1)[0] for run_key in requested} == expected and len(requested) == IMAGES
    assert partitions == expected
    table = gpd.read_parquet(catalog / "scenes.parquet")
    assert sorted(table["id"]) == sorted(expected)  # each exactly once
    assert set(table["status"]) == {"complete"}
    assert len(list(catalog.glob("scenes/*/item.json"))) == IMAGES


@pytest.mark.parametrize("number", [0, IMAGES - 1])
def test_tiny_images_are_real_crops(number: int) -> None:
    with MemoryFile(tiny_images()[number]) as memory, memory.open() as image:
        assert (image.width, image.height, image.count) == (SIDE, SIDE, 4)
        assert image.crs is not None and image.read().std() > 0
