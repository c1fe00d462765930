"""The executor every job runs on, chosen per run in run config: in-process, multiprocess or Celery.

Dagster's default executor offers `in_process` and `multiprocess`; this one
adds `celery` (dagster-celery) under the same `execution: config:` selector,
so a run goes to Celery workers by configuration alone, and the job's config
schema is the same in every process (code location, run worker, Celery
worker) whichever executor a run picks:

    execution:
      config:
        celery:
          broker: redis://broker-host:6379/0
          backend: redis://broker-host:6379/0

Kubernetes' step-per-pod executor is not offered by default: importing
dagster-k8s costs every step process about a second. A Kubernetes image adds
it with `selector_executor({**SCENE_EXECUTORS, "k8s": k8s_job_executor})`.

Importing this module also makes every process forked afterwards (the step
processes a forkserver forks) freeze the heap it inherits: see below.
"""

import gc
import os
from collections.abc import Mapping, Sequence
from typing import cast

import dagster as dg
from dagster_celery import celery_executor

SCENE_EXECUTORS: Mapping[str, dg.ExecutorDefinition] = {
    "in_process": dg.in_process_executor,
    "multiprocess": dg.multiprocess_executor,
    "celery": celery_executor,
}
"""The options of the `execution: config:` selector, by key."""

# A forkserver's children inherit everything it preloaded (dagster, the definitions, rasterio,
# pyarrow...). Unfrozen, that heap is walked by each step process's first full garbage collection:
# 0.3-0.9 s per step before STEP_START, measured on bench_fanout's runs. Frozen objects are never
# collected, and the preloaded modules live as long as the process anyway.
os.register_at_fork(after_in_child=gc.freeze)

FORKSERVER: Mapping[str, object] = {
    "start_method": {
        "forkserver": {"preload_modules": ["dagster", "tile_assets.definitions", "tile_assets.preload"]}
    }
}
"""Multiprocess config: step processes forked from a server that imported Dagster and the
project once, and initialised GDAL and Parquet (`tile_assets.preload`). Dagster's default,
spawn, imports them again in every step: 3-7 s between steps on bench_pipeline's runs,
against ~0.3 s forked."""

DEFAULT_EXECUTION: Mapping[str, Mapping[str, object]] = {"multiprocess": FORKSERVER}
"""As Dagster's own default executor, a process per step, forked from a preloaded server."""


def runs_in_process(run_config: Mapping[str, object]) -> bool:
    """Whether a run with this config executes its steps one at a time in its own process, so a
    step has the machine's other cores to itself (and inference reads ahead, `run_batch`).

    Only when the config picks `in_process`: the default is multiprocess, and
    `execute_in_process` runs, whose config names no executor, are taken for
    multiprocess too (they only miss the read-ahead).
    """
    execution = run_config.get("execution")
    chosen = execution.get("config") if isinstance(execution, Mapping) else None
    return isinstance(chosen, Mapping) and "in_process" in chosen


def selector_executor(options: Mapping[str, dg.ExecutorDefinition]) -> dg.ExecutorDefinition:
    """One executor whose config picks one of `options` by key and configures it."""

    def chosen(executor_config: Mapping[str, object]) -> tuple[dg.ExecutorDefinition, Mapping[str, object]]:
        ((key, config),) = executor_config.items()
        # The selector admits exactly one key, whose value is that executor's processed config.
        return options[key], cast(Mapping[str, object], config)

    def requirements(executor_config: Mapping[str, object]) -> Sequence[dg.ExecutorRequirement]:
        executor_def, config = chosen(executor_config)
        return executor_def.get_requirements(config)

    @dg.executor(
        name="scene_executor",
        config_schema=dg.Field(
            dg.Selector({key: executor_def.config_schema.as_field() for key, executor_def in options.items()}),
            default_value=DEFAULT_EXECUTION,
            description=f"One of {', '.join(options)} (default multiprocess), with that executor's config.",
        ),
        requirements=requirements,
    )
    def scene_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
        executor_def, config = chosen(init_context.executor_config)
        create = executor_def.executor_creation_fn
        if create is None:
            raise dg.DagsterInvariantViolationError(f"executor {executor_def.name!r} cannot be created")
        return create(
            dg.InitExecutorContext(
                job=init_context.job, executor_def=executor_def, executor_config=config, instance=init_context.instance
            )
        )

    return scene_executor


scene_executor = selector_executor(SCENE_EXECUTORS)
"""The executor of every job: `dg.Definitions(executor=scene_executor)`."""
