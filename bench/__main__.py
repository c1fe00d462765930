"""`python -m bench`: every benchmark in one run, then one table of ratios against the baselines.

    cd /work/main && .venv/bin/python -m bench            # all of them (~20 min on 2 cores)
    .venv/bin/python -m bench --only merge sahi          # a subset
    .venv/bin/python -m bench --only fanout              # bench_fanout.py's rows (not in the default run)

Progress goes to stderr; the table (Markdown) to stdout and to
bench/.work/results.md, the rows as JSON to bench/.work/results.json.
Inputs are built under bench/.work/ on first use and reused.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from dataclasses import asdict
from types import ModuleType

from bench import bench_memory, bench_merge, bench_pipeline, bench_read, bench_sahi
from bench.harness import WORK, Row
from bench.scenes import mosaic, scene_path

BENCHMARKS: dict[str, ModuleType] = {
    "read": bench_read,
    "pipeline": bench_pipeline,
    "memory": bench_memory,
    "sahi": bench_sahi,
    "merge": bench_merge,
}
OPTIONAL = {"fanout": "bench.bench_fanout"}
"""Benchmarks with the same `run(progress)` that take long enough to be asked for by name."""


def _machine() -> str:
    load = os.getloadavg()
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return f"{os.cpu_count()} CPUs, {mem_gb:.0f} GB RAM, load average {load[0]:.1f}/{load[1]:.1f}/{load[2]:.1f}"


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table, their notes below it."""
    lines = [
        "| metric | ours | baseline | ratio | target | met? |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        met = "—" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.metric} | {row.ours} | {row.baseline} | {row.ratio_text} | {row.target} | {met} |")
    notes = [f"- {row.metric.split(' ')[0]} {row.note}" for row in rows if row.note]
    return "\n".join([*lines, "", *notes])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=[*BENCHMARKS, *OPTIONAL], help="run only these")
    args = parser.parse_args(argv)
    started = time.monotonic()

    def progress(message: str) -> None:
        minutes, seconds = divmod(int(time.monotonic() - started), 60)
        print(f"[{minutes:02d}:{seconds:02d}] {message}", file=sys.stderr, flush=True)

    progress(f"start: {_machine()}")
    selected = args.only or list(BENCHMARKS)
    for side in (10_000, 20_000) if set(selected) & {"read", "pipeline", "memory", "sahi"} else ():
        if not scene_path(side).exists():
            progress(f"building the {side:,}² input scene (once; cached in {scene_path(side).parent})")
            mosaic(side)
    rows: list[Row] = []
    for name in selected:
        progress(f"--- {name}")
        try:
            module = BENCHMARKS.get(name) or importlib.import_module(OPTIONAL[name])
            rows += module.run(progress)
        except Exception as exc:  # noqa: BLE001 - one broken benchmark must not hide the others
            progress(f"{name} failed: {exc}")
            rows.append(Row(name, "error", "", 0.0, "—", "", False, str(exc).splitlines()[0][:300]))
    elapsed = time.monotonic() - started
    command = "cd /work/main && .venv/bin/python -m bench" + (f" --only {' '.join(args.only)}" if args.only else "")
    header = f"`{command}` — {time.strftime('%Y-%m-%d %H:%M')}, {elapsed / 60:.1f} min; end: {_machine()}"
    text = f"{header}\n\n{table(rows)}\n"
    WORK.mkdir(parents=True, exist_ok=True)
    (WORK / "results.md").write_text(text)
    (WORK / "results.json").write_text(json.dumps([asdict(r) for r in rows], indent=1))
    print(text)
    return 0 if all(r.met is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
