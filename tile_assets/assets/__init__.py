"""Software-defined assets, one module per asset family."""

GROUP = "imagery"
"""Every asset of the pipeline lives in this group in the UI."""

CODE_VERSION = "1"
"""Bumped when an asset's logic changes, so the UI marks its partitions stale."""
