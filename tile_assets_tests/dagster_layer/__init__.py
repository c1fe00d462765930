"""Tests for the Dagster layer through its public APIs."""
