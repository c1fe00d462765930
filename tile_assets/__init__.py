"""tile_assets: tiled imagery inference as Dagster software-defined assets."""

import os

import pyarrow as pa

# Arrow allocates through the C library's malloc, not its bundled mimalloc, unless
# ARROW_DEFAULT_MEMORY_POOL says otherwise: mimalloc keeps what a thread freed for that thread,
# and the tile cache's writer threads and the merge each kept megabytes of a step's peak. Set for
# this process's Python calls, and in the environment for the processes it starts (step
# processes, the forkserver), whose Arrow reads the variable when it first allocates.
if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    pa.set_memory_pool(pa.system_memory_pool())
