"""The Dagster layer over S3, end to end against a real SeaweedFS server."""
