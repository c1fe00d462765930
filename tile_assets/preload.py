"""What the multiprocess executor's forkserver does once, before it forks any step process.

Named in `executors.FORKSERVER`'s `preload_modules` after Dagster and the
project's definitions. Importing it decodes a small tiled DEFLATE GeoTIFF in
memory, writes and reads a small zstd Parquet table and loads the default
model, so GDAL's drivers and codecs, Arrow's Parquet reader, the installed
model plugins (entry points) and the default model's module (with
scipy.ndimage) are ready in the server: every step process forked from it
starts with them instead of paying each on first use (measured in a forked
step: 25 MB and 24 ms for GDAL's first open and read, 21 MB and 18 ms for
Parquet's first write and read, 4.4 MB and 47 ms for loading the default
model). Nothing is left open and no thread is started but the one scipy's own
OpenBLAS starts when it loads, as numpy's does; OpenBLAS stops its pool at
fork, so forking stays safe.
"""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rasterio.io import MemoryFile
from rasterio.transform import from_origin

from tile_assets.core.models.registry import DEFAULT_MODEL, load_model


def warm_gdal() -> None:
    """Open and decode a tiled, DEFLATE-compressed GeoTIFF in memory, as scenes usually are."""
    profile = {
        "driver": "GTiff", "width": 256, "height": 256, "count": 3, "dtype": "uint8",
        "tiled": True, "blockxsize": 256, "blockysize": 256, "compress": "deflate", "nodata": 0,
        "crs": "EPSG:3857", "transform": from_origin(0.0, 256.0, 1.0, 1.0),
    }
    with MemoryFile() as memory:
        with memory.open(**profile) as ds:
            ds.write(np.ones((3, 256, 256), dtype=np.uint8))
        with memory.open() as ds:
            ds.read()
            ds.dataset_mask()


def warm_parquet() -> None:
    """Write and read back a small zstd Parquet table on this thread, as the tile cache does."""
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table({"score": [0.5], "label": ["warm"]}), sink, compression="zstd")
    pq.ParquetFile(pa.BufferReader(sink.getvalue())).read(use_threads=False)


def warm_default_model() -> None:
    """Read the model plugins' entry points and import the default model, as an inference step does."""
    load_model(DEFAULT_MODEL)


warm_gdal()
warm_parquet()
warm_default_model()
