"""2. End-to-end scene materialization against the same reads + model in a plain Python loop.

Ours materializes every per-scene asset of one scene (source_images,
tiles, tile_findings with its batched fan-out, scene_synthesis) through
Dagster: job `process_scene`, default model, multiprocess executor, a fresh
SQLite instance with the project's dagster.yaml, exactly as `tile-assets run
--executor multiprocess` does. The plain loop opens the scene with the same
reader and runs the same model over every tile of the same grid in chunks of
`PREDICT_CHUNK`, in one process, writing nothing. Overhead = ours / loop - 1,
on wall time; total CPU time (all processes) is reported beside it.

While the pipeline runs, a sampler thread reads VmRSS/VmHWM (and VmRSS's
anonymous and file-backed parts) of every child process from /proc;
afterwards the event log says which step ran in which process and when it
started, which gives each step process's peak above its own RSS at step
start (imports done). `bench_memory` reports those.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    WORK,
    Progress,
    Row,
    emit,
    peak,
    reset_peak,
    rss,
    run_side,
    status,
)
from bench.scenes import decoded_bytes, mosaic

SIDE = 10_000
RUNS = 1
"""Pipeline runs (a 400 Mpix one follows for bench_memory); the loop is cheap and runs twice."""
LOOP_RUNS = 2
TARGET_OVERHEAD = 0.10
SAMPLE_S = 0.05
_pipeline_results: dict[int, list[dict[str, Any]]] = {}


def _descendants(root: int) -> list[int]:
    """Pids below `root`: step processes (the forkserver's children) and the forkserver itself."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU of a process so far, from /proc/<pid>/stat; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """Samples (time, VmRSS, VmHWM, RssAnon, RssFile) and CPU of every descendant of this process until stopped.

    Step processes are the forkserver's children, not ours, so their CPU never
    reaches RUSAGE_CHILDREN: it is the last value sampled (up to SAMPLE_S short).
    """

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: dict[int, list[tuple[float, int, int, int, int]]] = {}
        self.cpu: dict[int, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        me = os.getpid()
        while not self._halt.is_set():
            for pid in _descendants(me):
                mem, cpu = status(str(pid)), _cpu_seconds(pid)
                if mem:
                    sample = (time.time(), mem["VmRSS"], mem["VmHWM"], mem["RssAnon"], mem["RssFile"])
                    self.samples.setdefault(pid, []).append(sample)
                if cpu is not None:
                    self.cpu[pid] = cpu
            self._halt.wait(SAMPLE_S)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def step_growth(self, pid: int, start: float, end: float) -> dict[str, int] | None:
        """RSS at step start and the peak above it, from this pid's samples; and the sampled growth of
        its anonymous (private) and file-backed (shared library pages) parts."""
        series = self.samples.get(pid, [])
        before = [s for s in series if s[0] <= start]
        during = [s for s in series if start < s[0] <= end + SAMPLE_S]
        if not series or not (before or during):
            return None
        at_start = before[-1] if before else during[0]
        last = series[-1]
        sampled = max((s[1] for s in during), default=at_start[1])
        # VmHWM is the exact peak when the step itself set it (it rose after the step began).
        top = max(sampled, last[2]) if last[2] > at_start[2] else sampled
        anon = max((s[3] for s in during), default=at_start[3]) - at_start[3]
        files = max((s[4] for s in during), default=at_start[4]) - at_start[4]
        return {
            "baseline": at_start[1], "peak": top, "growth": max(0, top - at_start[1]),
            "anon_growth": max(0, anon), "file_growth": max(0, files),
        }


def side_pipeline(scene: str, work: str) -> None:
    """Materialize one scene through Dagster (multiprocess); time, CPU and per-process memory."""
    root = Path(work)
    shutil.rmtree(root, ignore_errors=True)
    inbox, catalog, home = root / "inbox", root / "catalog", root / "home"
    inbox.mkdir(parents=True)
    os.link(scene, inbox / Path(scene).name)
    os.environ.update(
        DAGSTER_HOME=str(home), TILE_ASSETS_INBOX=str(inbox), TILE_ASSETS_CATALOG=str(catalog)
    )

    import dagster as dg

    from tile_assets import cli
    from tile_assets.core.registry import register_scene
    from tile_assets.resources import ImageryStore

    cli.ensure_dagster_home()
    args = cli.build_parser().parse_args(["run", str(inbox), "--executor", "multiprocess"])
    imagery: ImageryStore = cli.build_definitions(cli.Settings.from_environment()).resources["imagery"]  # type: ignore[assignment]
    (change,) = cli.discover(imagery, str(inbox))
    instance = dg.DagsterInstance.get()
    register_scene(imagery.catalog_store(), str(catalog), change.partition_key, change.obj, change.fingerprint)
    instance.add_dynamic_partitions("scenes", [change.partition_key])

    base = rss()
    reset_peak()
    sampler = Sampler()
    sampler.start()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    result = dg.execute_job(
        dg.reconstructable(cli.scene_job),
        instance,
        run_config=cli.run_config(args),
        tags={"dagster/partition": change.partition_key},
        raise_on_error=False,
    )
    seconds = time.perf_counter() - start
    sampler.stop()
    me = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (me.ru_utime - cpu0.ru_utime) + (me.ru_stime - cpu0.ru_stime) + sum(sampler.cpu.values())
    if not result.success:
        raise SystemExit(f"pipeline run {result.run_id} failed")

    steps = []
    starts = {}
    for record in instance.all_logs(result.run_id):
        event = record.dagster_event
        if event is None or event.step_key is None:
            continue
        if event.event_type_value == "STEP_START":
            starts[event.step_key] = (event.pid, record.timestamp)
        elif event.event_type_value == "STEP_SUCCESS" and event.step_key in starts:
            pid, begun = starts[event.step_key]
            mem = sampler.step_growth(pid, begun, record.timestamp)
            if mem:
                steps.append({"step": event.step_key, "seconds": record.timestamp - begun, **mem})
    synthesis = cli.read_json(imagery.catalog_store(), imagery.scene_uri(change.partition_key, "synthesis.json"))
    emit(
        {
            "seconds": seconds,
            "cpu": cpu,
            "tiles": int(synthesis.get("tiles_planned", 0)),
            "findings": int(synthesis.get("total_findings", 0)),
            "run_process": {"baseline": base, "growth": peak() - base},
            "steps": steps,
            "decoded": decoded_bytes(Path(scene)),
        }
    )


def side_loop(scene: str) -> None:
    """The same reads and model in a plain loop: one process, no orchestration, nothing written."""
    from tile_assets.core.grid import plan_grid
    from tile_assets.core.inference import PREDICT_CHUNK
    from tile_assets.core.models.registry import load_model
    from tile_assets.core.raster import TileReader
    from tile_assets.core.store import LocalStore
    from tile_assets.core.types import GridSpec

    model = load_model("classical")
    spec = GridSpec(512, 0.2)
    base = rss()
    reset_peak()
    cpu0 = time.process_time()
    start = time.perf_counter()
    findings = 0
    with TileReader(LocalStore(), scene) as reader:
        ds = reader.dataset
        windows = reader.in_read_order(plan_grid(ds.width, ds.height, spec))
        for i in range(0, len(windows), PREDICT_CHUNK):
            tiles = [reader.read(w, spec) for w in windows[i : i + PREDICT_CHUNK]]
            findings += sum(len(p.findings) for p in model.predict(tiles))
    emit(
        {
            "seconds": time.perf_counter() - start,
            "cpu": time.process_time() - cpu0,
            "tiles": len(windows),
            "findings": findings,
            "growth": peak() - base,
        }
    )


def pipeline_runs(side: int, runs: int, progress: Progress) -> list[dict[str, Any]]:
    """`runs` instrumented pipeline runs on the `side` scene (memoized for bench_memory)."""
    done = _pipeline_results.setdefault(side, [])
    scene = str(mosaic(side))
    while len(done) < runs:
        progress(f"pipeline: {side:,}² scene, multiprocess run {len(done) + 1}/{runs}")
        done.append(run_side("bench.bench_pipeline", ["pipeline", scene, str(WORK / "pipeline" / str(side))]))
        (WORK / "pipeline" / f"result-{side}-{len(done)}.json").write_text(json.dumps(done[-1], indent=1))
    return done[:runs]


def run(progress: Progress) -> list[Row]:
    scene = str(mosaic(SIDE))
    loops = []
    for attempt in range(LOOP_RUNS):
        progress(f"pipeline: plain loop {attempt + 1}/{LOOP_RUNS} over the {SIDE:,}² scene")
        loops.append(run_side("bench.bench_pipeline", ["loop", scene]))
    ours = min(pipeline_runs(SIDE, RUNS, progress), key=lambda r: r["seconds"])
    loop = min(loops, key=lambda r: r["seconds"])
    overhead = ours["seconds"] / loop["seconds"] - 1
    cpu_overhead = ours["cpu"] / loop["cpu"] - 1
    return [
        Row(
            metric=f"2. scene end to end, {SIDE:,}², {ours['tiles']} tiles (s, overhead)",
            ours=f"{ours['seconds']:.1f} s",
            baseline=f"{loop['seconds']:.1f} s",
            ratio=overhead,
            ratio_text=f"{overhead:+.0%}",
            target=f"<= +{TARGET_OVERHEAD:.0%}",
            met=overhead <= TARGET_OVERHEAD,
            note=(
                f"CPU, all processes: {ours['cpu']:.0f} s vs {loop['cpu']:.0f} s ({cpu_overhead:+.0%}); "
                f"findings {ours['findings']} (merged) vs {loop['findings']} (raw)"
            ),
        )
    ]


if __name__ == "__main__":
    {"pipeline": side_pipeline, "loop": side_loop}[sys.argv[1]](*sys.argv[2:])
