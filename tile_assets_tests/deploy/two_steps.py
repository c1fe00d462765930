"""A two-op job on the project's executor, in a module light enough for a process per step."""

import dagster as dg

from tile_assets.executors import scene_executor


@dg.op
def one() -> int:
    return 1


@dg.op
def plus_one(value: int) -> int:
    return value + 1


@dg.job(executor_def=scene_executor)
def two_steps() -> None:
    plus_one(one())
