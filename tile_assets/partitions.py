"""The `scenes` dynamic partitions: one partition per source image."""

import dagster as dg

scenes = dg.DynamicPartitionsDefinition(name="scenes")
