"""Shared fixtures: paths to the real sample images and the fixture plugins."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = [
    "tile_assets_tests.fixtures.rasters",
    "tile_assets_tests.fixtures.s3",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
INBOX = REPO_ROOT / "data" / "inbox"
BAD = Path(__file__).resolve().parent / "data" / "bad"


@pytest.fixture(scope="session")
def inbox() -> Path:
    """The bundled sample images (real, with provenance in data/PROVENANCE.md)."""
    return INBOX


@pytest.fixture(scope="session")
def bad_dir() -> Path:
    """Real broken images: corrupt.tif (opens, fails on read) and all-nodata.tif."""
    return BAD
