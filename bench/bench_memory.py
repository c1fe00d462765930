"""3. Peak RSS of each pipeline process on 100 and 400 Mpix scenes, against the decoded image size.

The pipeline runs of `bench_pipeline` (multiprocess executor: one process
per step) are sampled from /proc; for every step process the growth is its
peak RSS during the step above its RSS when the step started (imports
done), and for the run process (the one that orchestrates) its peak above
its RSS before `execute_job`. The worst process is compared with the
decoded size of the scene (width x height x bands x bytes per sample):
target at most 1/8, and flat as the scene grows 4x. The note splits the
worst step's growth, as sampled, into anonymous memory (private to the
process: heap, arrays, caches) and file-backed pages (library code and data
a forked process faults in on first use; shared with every process mapping
them, so RSS counts them but they take no memory of their own). A context
row gives the growth of the plainest loop doing the same work (rasterio
reads through a 32 MB GDAL cache and the model, one process, no Dagster) on
the 100 Mpix scene: what the work itself costs a process.
"""

from __future__ import annotations

import sys
from typing import Any

from bench.harness import MB, Progress, Row, emit, peak, reset_peak, rss, run_side
from bench.scenes import mosaic

SIDES = (10_000, 20_000)
TARGET = 1 / 8
FLAT = 1.25
"""Worst growth on the 400 Mpix scene over the worst on the 100 Mpix scene, at most."""


def processes(result: dict[str, Any]) -> list[tuple[str, int]]:
    """(process, growth in bytes) for every step process and the run process."""
    steps = [(s["step"], int(s["growth"])) for s in result["steps"]]
    return [*steps, ("run process", int(result["run_process"]["growth"]))]


def _by_kind(procs: list[tuple[str, int]]) -> str:
    """The worst growth per kind of process, e.g. "infer_batch +117 MB"."""
    worst: dict[str, int] = {}
    for name, growth in procs:
        kind = name.split(".")[-1].split("[")[0]
        worst[kind] = max(worst.get(kind, 0), growth)
    return ", ".join(f"{kind} +{growth / MB:.0f}" for kind, growth in sorted(worst.items(), key=lambda kv: -kv[1]))


def split_of(result: dict[str, Any], step: str) -> str:
    """The sampled anonymous / file-backed growth of one step process, e.g. "+104 anon, +22 file"."""
    for s in result["steps"]:
        if s["step"] == step and "anon_growth" in s:
            return f"+{s['anon_growth'] / MB:.0f} MB anonymous, +{s['file_growth'] / MB:.0f} MB file-backed"
    return "not sampled"


def side_plain_loop(scene: str) -> None:
    """The plainest program doing an inference step's work, for context: rasterio windowed reads of
    every tile in grid order through GDAL's cache bounded as the pipeline bounds it (32 MB), and the
    default model tile by tile; no Dagster, no read order, nothing written. Its peak RSS above its
    RSS once the model is loaded and one tile predicted (code paths faulted in)."""
    import rasterio
    from rasterio.windows import Window

    from tile_assets.core.grid import plan_grid
    from tile_assets.core.image import TileImage
    from tile_assets.core.models.registry import DEFAULT_MODEL, load_model
    from tile_assets.core.raster import GDAL_CACHE_BYTES, band_names
    from tile_assets.core.types import GridSpec, TileWindow

    model = load_model(DEFAULT_MODEL)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_BYTES), rasterio.open(scene) as ds:
        names = band_names(ds)

        def findings(w: TileWindow) -> int:
            data = ds.read(window=Window(w.col_off, w.row_off, w.width, w.height), masked=True)
            return sum(len(p.findings) for p in model.predict([TileImage(w, data, names, 255.0)]))

        windows = plan_grid(ds.width, ds.height, GridSpec(512, 0.2))
        findings(windows[0])
        base = rss()
        reset_peak()
        found = sum(findings(w) for w in windows)
        emit({"tiles": len(windows), "findings": found, "growth": peak() - base})


def plain_loop_row(side: int, decoded: int, progress: Progress) -> Row:
    """Context for row 3: what the same work costs a process without the pipeline."""
    progress(f"memory: the plainest loop over the {side:,}² scene, its own peak")
    growth = int(run_side("bench.bench_memory", ["plain_loop", str(mosaic(side))])["growth"])
    ratio = growth / decoded
    return Row(
        metric=f"3. context: plain loop (rasterio reads + model, 32 MB cache), {side * side / 1e6:.0f} Mpix scene",
        ours=f"+{growth / MB:.0f} MB",
        baseline=f"{decoded / MB:.0f} MB decoded",
        ratio=ratio,
        ratio_text=f"{ratio:.3f}",
        target="",
        met=None,
        note=(
            "one process, no Dagster, tile by tile in grid order: what the reads and the model cost a "
            "process with the cache row 1 needs, whatever runs them"
        ),
    )


def run(progress: Progress) -> list[Row]:
    from bench.bench_pipeline import pipeline_runs

    rows = []
    worst: dict[int, int] = {}
    decoded_of: dict[int, int] = {}
    for side in SIDES:
        (result,) = pipeline_runs(side, 1, progress)
        decoded = decoded_of[side] = int(result["decoded"])
        procs = processes(result)
        name, growth = max(procs, key=lambda p: p[1])
        infer = max(g for n, g in procs if "infer_batch" in n)
        worst[side] = growth
        ratio = growth / decoded
        rows.append(
            Row(
                metric=f"3. peak RSS above baseline, {side * side / 1e6:.0f} Mpix scene: worst process",
                ours=f"+{growth / MB:.0f} MB ({name.split('.')[-1]})",
                baseline=f"{decoded / MB:.0f} MB decoded",
                ratio=ratio,
                ratio_text=f"{ratio:.3f} (infer {infer / decoded:.3f})",
                target=f"<= {TARGET:.3f}",
                met=ratio <= TARGET,
                note=(
                    f"{len(procs)} processes, worst by kind (MB): {_by_kind(procs)}; "
                    f"{name.split('.')[-1]}: {split_of(result, name)}"
                ),
            )
        )
    small, big = SIDES
    rows.append(plain_loop_row(small, decoded_of[small], progress))
    growth_ratio = worst[big] / worst[small]
    rows.append(
        Row(
            metric=f"3. worst process growth, {big * big / 1e6:.0f} vs {small * small / 1e6:.0f} Mpix scene",
            ours=f"+{worst[big] / MB:.0f} MB",
            baseline=f"+{worst[small] / MB:.0f} MB",
            ratio=growth_ratio,
            ratio_text=f"{growth_ratio:.2f}",
            target=f"<= {FLAT} (flat)",
            met=growth_ratio <= FLAT,
        )
    )
    return rows


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "plain_loop":
        side_plain_loop(*sys.argv[2:])
