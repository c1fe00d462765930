"""Tests for tile_assets; layout mirrors the package."""
