"""deploy/k8s, checked as far as a machine without a cluster or helm allows.

The run config for the step-per-pod executor is validated by Dagster against
`process_scene` with dagster-k8s's real `k8s_job_executor` schema. The Helm
values are checked for structure: the chart's keys, a user deployment that
loads this project's Definitions with the settings it reads, and instance
settings equal to the project's dagster.yaml. (Neither helm nor the chart's
values.schema.json can be installed from the package registries here.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

import tile_assets.definitions
from tile_assets.assets.findings import BatchingConfig
from tile_assets.cli import scene_job
from tile_assets.executors import SCENE_EXECUTORS, selector_executor
from tile_assets.settings import S3_ENV_VARS, Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
PROJECT_INSTANCE = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
DEPLOY_INSTANCE = yaml.safe_load((REPO_ROOT / "deploy" / "postgres-celery" / "dagster.yaml").read_text())

CHART_TOP_LEVEL_KEYS = {
    "dagsterWebserver", "dagster-user-deployments", "postgresql", "generatePostgresqlPasswordSecret",
    "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress", "imagePullSecrets",
    "computeLogManager", "scheduler", "runLauncher", "pythonLogs", "dagsterDaemon", "busybox", "migrate",
    "telemetry", "serviceAccount", "global", "retention", "concurrency", "additionalInstanceConfig",
}  # fmt: skip
"""Top-level keys of the chart's values schema (DagsterHelmValues); its models forbid unknown keys."""


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load((K8S / "values.yaml").read_text())


@pytest.fixture(scope="module")
def job_executor_run_config() -> dict[str, Any]:
    return yaml.safe_load((K8S / "job-executor.yaml").read_text())


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def camel_keys(value: Any) -> Any:
    """dagster.yaml's snake_case settings as the chart spells them."""
    if isinstance(value, dict):
        return {camel(k): camel_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [camel_keys(v) for v in value]
    return value


def test_job_executor_run_config_is_valid_for_process_scene_on_k8s(job_executor_run_config: dict[str, Any]) -> None:
    """What a Kubernetes code location runs: the project's selector plus dagster-k8s's `k8s` executor."""
    dagster_k8s = pytest.importorskip("dagster_k8s", reason="dagster-k8s==0.29.27 is not installed")
    executor = selector_executor({**SCENE_EXECUTORS, "k8s": dagster_k8s.k8s_job_executor})
    job = scene_job().with_executor_def(executor)
    resolved = dg.validate_run_config(job, job_executor_run_config)
    k8s = resolved["execution"][executor.name]["k8s"]
    assert k8s["job_namespace"] == "tile-assets"
    assert set(k8s["per_step_k8s_config"]) <= {node.name for node in job.all_node_defs}
    assert "infer_batch" in k8s["per_step_k8s_config"]
    batching = resolved["ops"]["tile_findings.plan_batches"]["config"]
    # Bigger batches than the local default: a pod is slow to start.
    assert batching["max_tiles_per_batch"] > BatchingConfig().max_tiles_per_batch

    broken = yaml.safe_load((K8S / "job-executor.yaml").read_text())
    broken["execution"]["config"]["k8s"]["step_k8s_config"]["no_such_key"] = {}
    with pytest.raises(dg.DagsterInvalidConfigError):
        dg.validate_run_config(job, broken)


def test_values_use_only_chart_keys_and_the_k8s_run_launcher(values: dict[str, Any]) -> None:
    assert set(values) <= CHART_TOP_LEVEL_KEYS
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    assert set(launcher["config"]) == {"k8sRunLauncher"}
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["computeLogManager"]["type"] == "S3ComputeLogManager"
    assert not any(values[broker]["enabled"] for broker in ("rabbitmq", "redis", "flower"))


def test_user_deployment_loads_this_projects_definitions(values: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    args = deployment["dagsterApiGrpcArgs"]
    module = args[args.index("--module-name") + 1]
    attribute = args[args.index("--attribute") + 1]
    assert module == tile_assets.definitions.__name__
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True

    env = {item["name"]: item["value"] for item in deployment["env"]}
    assert set(env) <= {"TILE_ASSETS_INBOX", "TILE_ASSETS_CATALOG", *S3_ENV_VARS.values()}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_environment()
    assert settings.inbox.startswith("s3://") and settings.catalog.startswith("s3://")
    assert "region_name" in settings.s3_env
    # What the code server loads from these args and this environment.
    defs = getattr(tile_assets.definitions, attribute)()
    dg.Definitions.validate_loadable(defs)
    assert defs.resources["imagery"].catalog == env["TILE_ASSETS_CATALOG"]


def test_values_postgres_matches_the_deploy_instance(values: dict[str, Any]) -> None:
    postgres = values["postgresql"]
    assert postgres["enabled"] is False
    assert postgres["postgresqlScheme"] == DEPLOY_INSTANCE["storage"]["postgres"]["postgres_db"]["scheme"]
    assert postgres["postgresqlHost"] and postgres["postgresqlDatabase"] and postgres["service"]["port"] == 5432


def test_values_instance_settings_equal_the_projects(values: dict[str, Any]) -> None:
    """Same run queue, tag limits, pool default, run monitoring and run retries as dagster.yaml."""
    concurrency = values["concurrency"]
    assert concurrency["enabled"] is True
    assert {k: v for k, v in concurrency.items() if k != "enabled"} == camel_keys(PROJECT_INSTANCE["concurrency"])
    daemon = values["dagsterDaemon"]
    # The chart's runMonitoring has no freeSlotsAfterRunEndSeconds (values.yaml says so).
    monitoring = {k: v for k, v in PROJECT_INSTANCE["run_monitoring"].items() if k != "free_slots_after_run_end_seconds"}
    assert daemon["runMonitoring"] == camel_keys(monitoring)
    assert daemon["runRetries"] == camel_keys(PROJECT_INSTANCE["run_retries"])
    assert daemon["sensors"] == camel_keys(PROJECT_INSTANCE["sensors"])
    assert daemon["schedules"] == camel_keys(PROJECT_INSTANCE["schedules"])
    assert values["telemetry"] == PROJECT_INSTANCE["telemetry"]
