"""Pure core: grid math, raster I/O, models, merge, synthesis and catalog writers. No Dagster import."""
