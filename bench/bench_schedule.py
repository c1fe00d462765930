"""One tick of `retry_incomplete_scenes` over thousands of scenes on a SQLite instance.

Creates `--scenes` partitions, each with one finished `process_scene` run
and a complete status.json in a local catalog, then evaluates the schedule
once, as the daemon would at its 15-minute tick (no scene is due, so the
tick looks at every scene and requests nothing). The runs carry no check
evaluations, so every status.json is read: the worst case. The daemon gives a
schedule evaluation 60 s by default (DAGSTER_SCHEDULE_GRPC_TIMEOUT_SECONDS).

    .venv/bin/python bench/bench_schedule.py [--scenes 10000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import tempfile
import time
from pathlib import Path

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRunStatus
from dagster._core.test_utils import create_run_for_test

from tile_assets.definitions import build_definitions
from tile_assets.jobs import process_scene
from tile_assets.partitions import scenes
from tile_assets.schedules import retry_incomplete_scenes
from tile_assets.settings import Settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-schedule-") as workdir:
        root = Path(workdir)
        catalog, home = root / "catalog", root / "home"
        home.mkdir()
        keys = [f"scene_{i:05d}-{i:08x}" for i in range(args.scenes)]
        for key in keys:
            (catalog / "scenes" / key).mkdir(parents=True)
            (catalog / "scenes" / key / "status.json").write_text(json.dumps({"status": "complete", "coverage": 1.0}))
        with dg.instance_for_test(temp_dir=str(home)) as instance:
            instance.add_dynamic_partitions(scenes.name, keys)
            for key in keys:
                create_run_for_test(
                    instance, job_name=process_scene.name, status=DagsterRunStatus.SUCCESS,
                    tags={"dagster/partition": key, "tile_assets/version": "v1"},
                )
            defs = build_definitions(Settings(inbox=str(root / "inbox"), catalog=str(catalog)))
            at = dt.datetime.now(dt.UTC)
            with dg.build_schedule_context(instance=instance, resources=defs.resources, scheduled_execution_time=at) as context:
                start = time.perf_counter()
                result = retry_incomplete_scenes(context)
                seconds = time.perf_counter() - start
    assert isinstance(result, dg.SkipReason), result
    print(f"{args.scenes:,} scenes: one schedule tick {seconds:.1f} s ({seconds / 60:.0%} of the daemon's 60 s)")


if __name__ == "__main__":
    main()
