"""Benchmarks of tile_assets against plain baselines: `python -m bench` prints the table."""
