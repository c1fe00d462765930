"""Importing tile_assets points Arrow at the C library's malloc, unless the environment chose a pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys

SCRIPT = """
import io, json, os, subprocess, sys
import tile_assets
import pyarrow as pa, pyarrow.parquet as pq
sink = io.BytesIO()
pq.write_table(pa.table({"label": [str(i) for i in range(10_000)]}), sink)
table = pq.read_table(io.BytesIO(sink.getvalue()))
child = subprocess.run(
    [sys.executable, "-c", "import pyarrow as pa; print(pa.default_memory_pool().backend_name)"],
    capture_output=True, text=True, check=True,
)
print(json.dumps({
    "pool": pa.default_memory_pool().backend_name,
    "system_bytes": pa.system_memory_pool().bytes_allocated(),
    "child_pool": child.stdout.strip(),
}))
"""


def run_fresh(env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_arrow_allocates_with_malloc_here_and_in_the_processes_started() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    got = run_fresh(env)
    assert got["pool"] == "system" and got["child_pool"] == "system"
    assert got["system_bytes"] > 0  # the Parquet read's table lives in the system pool


def test_a_pool_chosen_in_the_environment_is_kept() -> None:
    got = run_fresh({**os.environ, "ARROW_DEFAULT_MEMORY_POOL": "jemalloc"})
    assert got["pool"] == "jemalloc" and got["child_pool"] == "jemalloc"
