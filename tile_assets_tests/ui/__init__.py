"""The Dagster web UI as users see it, checked in a real browser."""
