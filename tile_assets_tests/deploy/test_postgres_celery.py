"""deploy/postgres-celery on the real engines: PostgreSQL storage, Redis broker, two Celery workers.

One scene goes through `process_scene` with the Celery executor (six batches,
so six inference steps shared by the workers); its findings must equal an
in-process run's, its history must be in PostgreSQL, and its inference steps
must have run in the worker processes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import geopandas as gpd
import pandas as pd
import psycopg2
import pytest
import redis
import yaml
from celery import Celery
from psycopg2 import sql

from tile_assets.cli import scene_job
from tile_assets.core.keys import scene_key
from tile_assets.core.registry import register_scene
from tile_assets.core.store import open_store
from tile_assets.definitions import build_definitions
from tile_assets.executors import scene_executor
from tile_assets.jobs import process_scene
from tile_assets.partitions import scenes
from tile_assets.settings import Settings
from tile_assets_tests.deploy.two_steps import two_steps

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY = REPO_ROOT / "deploy" / "postgres-celery"
PROJECT_INSTANCE_YAML = REPO_ROOT / "dagster.yaml"
INBOX = REPO_ROOT / "data" / "inbox"
SCENE = INBOX / "naip_2018.tif"
VENV_BIN = Path(sys.executable).parent

PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "test"}
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
WORKERS = 2
WORKER_READY_SECONDS = 180

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def celery_scene_job() -> dg.JobDefinition:
    """`process_scene` as every process builds it (the CLI's function), on the project's executor.

    Celery workers rebuild the job through this function. Once definitions.py
    passes `executor=scene_executor`, `scene_job` already has it and this is `scene_job`.
    """
    return scene_job().with_executor_def(scene_executor)


def batching_config(max_tiles_per_batch: int) -> dict[str, Any]:
    return {"tile_findings": {"ops": {"plan_batches": {"config": {"max_tiles_per_batch": max_tiles_per_batch}}}}}


def celery_block() -> dict[str, Any]:
    """The workers' `execution: config:` block from deploy/postgres-celery/celery.yaml."""
    return yaml.safe_load((DEPLOY / "celery.yaml").read_text())["execution"]["config"]


@pytest.fixture(scope="module")
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for this module, dropped at the end."""
    try:
        admin = psycopg2.connect(**PG, connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG['host']}:{PG['port']}: {exc}")
    admin.autocommit = True
    name = f"tile_assets_deploy_{uuid.uuid4().hex[:10]}"
    with admin.cursor() as cur:
        cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        with admin.cursor() as cur:
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        admin.close()


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    """A Redis database of our own (empty when taken, flushed after), so no stale task reaches our workers."""
    client = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_HOST}:{REDIS_PORT}: {exc}")
    free = [db for db in range(15, 0, -1) if redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db).dbsize() == 0]
    if not free:
        pytest.skip("no empty Redis database to use as this test's broker")
    db = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=free[0])
    db.flushdb()
    try:
        yield f"redis://{REDIS_HOST}:{REDIS_PORT}/{free[0]}"
    finally:
        db.flushdb()


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, pg_database: str, broker_url: str
) -> Iterator[dict[str, str]]:
    """The environment of every process of the deployment, set in this process too."""
    root = tmp_path_factory.mktemp("postgres_celery")
    home = root / "dagster_home"
    home.mkdir()
    shutil.copy(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    env = {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": PG["host"],
        "DAGSTER_PG_PORT": str(PG["port"]),
        "DAGSTER_PG_USER": PG["user"],
        "DAGSTER_PG_PASSWORD": "",
        "DAGSTER_PG_DB": pg_database,
        "DAGSTER_CELERY_BROKER_URL": broker_url,
        "DAGSTER_CELERY_BACKEND_URL": broker_url,
        "TILE_ASSETS_INBOX": str(INBOX),
        "TILE_ASSETS_CATALOG": str(root / "catalog"),
        # The worker command runs `celery` from PATH.
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        yield env


@dataclass
class Workers:
    names: list[str]
    logs: list[Path]


def stop(process: subprocess.Popen[bytes]) -> None:
    """End a worker's process group (the CLI, celery's main process and its pool child)."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def wait_until_ready(broker: str, names: list[str], processes: list[subprocess.Popen[bytes]], logs: list[Path]) -> None:
    """Ping the workers through the broker until all answer; fail early when one exits."""
    app = Celery(broker=broker, backend=broker)
    deadline = time.monotonic() + WORKER_READY_SECONDS
    answered: set[str] = set()
    while time.monotonic() < deadline:
        for process, log in zip(processes, logs):
            if process.poll() is not None:
                pytest.fail(f"celery worker exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        replies = app.control.ping(timeout=1.0) or []
        answered = {name for reply in replies for name in reply}
        if all(any(a.startswith(f"{n}@") for a in answered) for n in names):
            return
        time.sleep(1.0)
    tails = "\n".join(log.read_text()[-2000:] for log in logs)
    pytest.fail(f"celery workers {names} not ready after {WORKER_READY_SECONDS}s (answered: {answered}):\n{tails}")


@pytest.fixture(scope="module")
def celery_workers(deployment: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Workers]:
    """Two dagster-celery workers, one slot each, started exactly as deploy/README.md says."""
    log_dir = tmp_path_factory.mktemp("celery_logs")
    token = uuid.uuid4().hex[:6]
    names = [f"tile-assets-{token}-{i}" for i in range(WORKERS)]
    logs = [log_dir / f"{name}.log" for name in names]
    command = [str(VENV_BIN / "dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
    # The tables first, once: two workers creating them at once on the empty database race.
    subprocess.run(
        [str(VENV_BIN / "dagster"), "instance", "migrate"],
        cwd=REPO_ROOT, env={**os.environ, **deployment}, check=True, capture_output=True, timeout=300,
    )
    processes = []
    try:
        for name, log in zip(names, logs):
            with log.open("wb") as out:
                processes.append(
                    subprocess.Popen(
                        [*command, "-y", str(DEPLOY / "celery.yaml"), "-n", name, "--", "--concurrency=1"],
                        cwd=REPO_ROOT,
                        env={**os.environ, **deployment},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        wait_until_ready(deployment["DAGSTER_CELERY_BROKER_URL"], names, processes, logs)
        yield Workers(names=names, logs=logs)
    finally:
        for process in processes:
            stop(process)


def register(instance: dg.DagsterInstance, catalog: str) -> str:
    """Register the sample scene in a catalog and as a partition, as the CLI does."""
    obj = open_store(str(INBOX)).head(str(SCENE))
    key = scene_key(obj.uri)
    register_scene(open_store(catalog), catalog, key, obj)
    instance.add_dynamic_partitions(scenes.name, [key])
    return key


def sorted_findings(catalog: str, key: str) -> pd.DataFrame:
    """A scene's findings as plain columns (geometry as WKT), in a total order."""
    frame = gpd.read_parquet(Path(catalog) / "scenes" / key / "findings.parquet")
    plain = pd.DataFrame(frame.drop(columns=frame.geometry.name))
    plain["geometry_wkt"] = frame.geometry.to_wkt()
    for column in plain.columns:
        if plain[column].map(lambda v: isinstance(v, (dict, list))).any():
            plain[column] = plain[column].map(repr)
    return plain.sort_values(list(plain.columns)).reset_index(drop=True)


@dataclass
class Runs:
    key: str
    celery: dg.ExecuteJobResult
    celery_seconds: float
    in_process_catalog: str
    in_process_seconds: float


@pytest.fixture(scope="module")
def runs(deployment: dict[str, str], celery_workers: Workers, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runs]:
    """The same scene once on the Celery workers and once in-process, each in its own catalog."""
    run_config = {"execution": {"config": {"celery": celery_block()}}, "ops": batching_config(1)}
    with dg.DagsterInstance.get() as instance:
        key = register(instance, deployment["TILE_ASSETS_CATALOG"])
        start = time.perf_counter()
        celery = dg.execute_job(
            dg.reconstructable(celery_scene_job),
            instance,
            run_config=run_config,
            tags={"dagster/partition": key, "tile_assets/trigger": "test"},
            raise_on_error=False,
        )
        celery_seconds = time.perf_counter() - start

    in_process_catalog = str(tmp_path_factory.mktemp("in_process") / "catalog")
    job = build_definitions(Settings(inbox=str(INBOX), catalog=in_process_catalog)).resolve_job_def(process_scene.name)
    with dg.instance_for_test() as local:
        register(local, in_process_catalog)
        start = time.perf_counter()
        in_process = job.execute_in_process(
            run_config={"ops": batching_config(1)}, instance=local, partition_key=key, raise_on_error=False
        )
        in_process_seconds = time.perf_counter() - start
    assert in_process.success
    print(f"\nprocess_scene on {SCENE.name}: celery {celery_seconds:.1f} s, in-process {in_process_seconds:.1f} s")
    yield Runs(key, celery, celery_seconds, in_process_catalog, in_process_seconds)


def test_celery_run_succeeds_with_the_in_process_findings(runs: Runs, deployment: dict[str, str]) -> None:
    failures = [e.message for e in runs.celery.all_events if e.is_step_failure or e.is_failure]
    assert runs.celery.success, failures
    celery_findings = sorted_findings(deployment["TILE_ASSETS_CATALOG"], runs.key)
    in_process_findings = sorted_findings(runs.in_process_catalog, runs.key)
    assert len(in_process_findings) > 0
    pd.testing.assert_frame_equal(celery_findings, in_process_findings)


def test_inference_steps_ran_in_the_workers(runs: Runs, celery_workers: Workers) -> None:
    successes = [e for e in runs.celery.all_events if e.is_step_success]
    inference = [e for e in successes if e.step_key and e.step_key.startswith("tile_findings.infer_batch[")]
    assert len(inference) == 6, [e.step_key for e in successes]
    assert all(e.pid is not None and e.pid != os.getpid() for e in inference)
    # dagster-celery reports, per step, the worker that took it.
    with dg.DagsterInstance.get() as instance:
        records = instance.all_logs(runs.celery.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
    hosts: dict[str, str] = {}
    for record in records:
        event = record.dagster_event
        metadata = event.event_specific_data.metadata if event and event.event_specific_data else {}
        worker = metadata.get("Celery worker")
        if event and event.step_key and worker is not None:
            hosts[event.step_key] = str(worker.value)
    assert {e.step_key for e in inference} <= set(hosts)
    assert all(host.split("@")[0] in celery_workers.names for host in hosts.values()), hosts
    print(f"\nsteps per worker: { {n: sum(h.startswith(n + '@') for h in hosts.values()) for n in celery_workers.names} }")


def test_run_history_is_in_postgres(runs: Runs, deployment: dict[str, str]) -> None:
    with psycopg2.connect(**{**PG, "dbname": deployment["DAGSTER_PG_DB"]}) as conn, conn.cursor() as cur:
        cur.execute("SELECT status, pipeline_name FROM runs WHERE run_id = %s", (runs.celery.run_id,))
        assert cur.fetchone() == ("SUCCESS", process_scene.name)
        cur.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'STEP_SUCCESS'",
            (runs.celery.run_id,),
        )
        (step_successes,) = cur.fetchone()
    # source_images, tiles, plan_batches, six infer_batch, merge_findings, scene_synthesis
    assert step_successes >= 11


def test_deploy_instance_is_the_project_instance_on_postgres() -> None:
    """Only storage differs from the project's dagster.yaml: same queue, pools, monitoring and retries."""
    deploy = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    project = yaml.safe_load(PROJECT_INSTANCE_YAML.read_text())
    assert set(deploy.pop("storage")) == {"postgres"}
    assert deploy == project


def test_executor_is_chosen_by_run_config() -> None:
    """Multiprocess by default as before; `in_process`, `multiprocess` or `celery` by run config, one at a time."""
    job = celery_scene_job()

    def executor_of(execution: dict[str, Any] | None) -> dict[str, Any]:
        run_config = {} if execution is None else {"execution": {"config": execution}}
        return dg.validate_run_config(job, run_config)["execution"][scene_executor.name]

    assert list(executor_of(None)) == ["multiprocess"]
    assert list(executor_of({"in_process": {}})) == ["in_process"]
    assert executor_of({"celery": {"broker": "redis://broker:6379/0"}})["celery"]["broker"] == "redis://broker:6379/0"
    for wrong in ({"celery": {"no_such_key": 1}}, {"in_process": {}, "celery": {}}, {"k8s": {}}):
        with pytest.raises(dg.DagsterInvalidConfigError):
            executor_of(wrong)


@pytest.mark.parametrize(("execution", "processes"), [(None, 2), ({"in_process": {}}, 1)])
def test_default_and_in_process_executors_still_run(execution: dict[str, Any] | None, processes: int) -> None:
    """The selector builds Dagster's own executors: a process per step by default, one process in-process."""
    run_config = {} if execution is None else {"execution": {"config": execution}}
    with dg.instance_for_test() as instance, dg.execute_job(
        dg.reconstructable(two_steps), instance, run_config=run_config
    ) as result:
        assert result.success
        assert result.output_for_node("plus_one") == 2
        assert len({e.pid for e in result.all_events if e.is_step_success}) == processes
