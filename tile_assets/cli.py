"""`tile-assets`: run the pipeline over a prefix through Dagster, resume a failed run.

Runs go through the configured Dagster instance (`$DAGSTER_HOME`, by default
`./.dagster_home` with the project's dagster.yaml), so every run shows up in
the web UI's history exactly as sensor-launched runs do.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tile_assets.assets import CODE_VERSION
from tile_assets.assets.findings import BatchingConfig
from tile_assets.core.errors import PolicyError, StoreError, TileAssetsError
from tile_assets.core.inbox import SceneChange, ignore_reason, object_version
from tile_assets.core.keys import model_key, scene_key
from tile_assets.core.models.registry import DEFAULT_MODEL, load_model
from tile_assets.core.registry import register_scene, registered_fingerprint
from tile_assets.core.store import Store, is_s3_uri, join_uri
from tile_assets.definitions import build_definitions, catalog_job, scene_job
from tile_assets.executors import FORKSERVER
from tile_assets.jobs import process_scene
from tile_assets.partitions import scenes
from tile_assets.resources import GateResource, ImageryStore
from tile_assets.sensors import scene_run_tags
from tile_assets.settings import Settings, absolute_uri

PROJECT_INSTANCE_YAML = Path(__file__).resolve().parent.parent / "dagster.yaml"
PARENT_OUTCOME_TAGS = frozenset(
    {"dagster/failure_reason", "dagster/will_retry", "dagster/retry_number", "dagster/is_resume_retry",
     "dagster/auto_retry_run_id"}
)
"""How the parent run ended; not carried over to its re-execution (the UI's re-execute drops them too)."""
LOCATION_TAGS = {"tile_assets/inbox": "TILE_ASSETS_INBOX", "tile_assets/catalog": "TILE_ASSETS_CATALOG"}
"""Run tags naming the inbox and catalog a CLI run used, and the variables `resume` restores them to."""
REQUEST_TAG = "tile_assets/request"
"""Run tag: digest of what a CLI scene run computes from besides the image (`request_digest`)."""
console = Console(stderr=True)


def ensure_dagster_home() -> Path:
    """Use $DAGSTER_HOME, or ./.dagster_home seeded with the project's dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or ".dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists() and PROJECT_INSTANCE_YAML.exists():
        shutil.copy(PROJECT_INSTANCE_YAML, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@dataclass
class SceneOutcome:
    key: str
    uri: str
    run_id: str
    success: bool
    tiles: int = 0
    findings: int = 0
    coverage: float = 0.0
    reason: str = ""
    rejected: bool = False
    up_to_date: bool = False
    """Not run: its last run stands (`last_outcome`)."""


IN_PROCESS_BATCHING = {"target_steps": 1, "max_tiles_per_batch": 4096}
"""Batching for `--executor in_process`, which runs one step at a time: a second inference step
per scene buys no parallelism, only its step overhead and the decoding again of the blocks it
shares with the previous one (2,401 tiles: the fan-out took 17 % longer than a plain loop in 4
steps, 5 % in one). At 4,096 windows a batch's plan, its step's input, stays near 1 MB of JSON."""


def batching_defaults(executor: str) -> dict[str, int]:
    """`plan_batches` config when the flags leave it: one step per scene in process, else the op's
    default (twice the `tile_inference` pool limit, so the pool's slots are kept busy)."""
    if executor == "in_process":
        return dict(IN_PROCESS_BATCHING)
    return BatchingConfig().model_dump()


def run_config(args: argparse.Namespace) -> dict:
    """Run config from the CLI flags: executor, tiling, model and batching."""
    batching = batching_defaults(args.executor)
    if args.target_steps is not None:
        batching["target_steps"] = args.target_steps
    if args.max_tiles_per_batch is not None:
        batching["max_tiles_per_batch"] = args.max_tiles_per_batch
    config: dict = {
        "execution": {"config": {args.executor: FORKSERVER if args.executor == "multiprocess" else {}}},
        "ops": {
            "tiles": {"config": {"tile_size": args.tile_size, "overlap": args.overlap, "edge": args.edge}},
            "tile_findings": {
                "ops": {
                    "plan_batches": {"config": batching},
                    "merge_findings": {
                        "config": {
                            "strategy": args.merge,
                            "metric": args.match,
                            "threshold": args.match_threshold,
                            "full_image_pass": args.full_image_pass,
                        }
                    },
                }
            },
        },
        "resources": {"tile_model": {"config": {"name": args.model, "params_json": args.model_params}}},
    }
    return config


def discover(imagery: ImageryStore, inbox: str) -> list[SceneChange]:
    """Every image under the inbox, with its partition key and version; says which objects it skips and why.

    A local file the catalog already describes or registered at its current
    size and mtime keeps the content hash recorded then instead of being read
    whole again.
    """
    store, catalog_store = imagery.inbox_store(), imagery.catalog_store()
    changes = []
    for obj in store.list(inbox):
        reason = ignore_reason(obj)
        if reason is None:
            key = scene_key(obj.uri)
            known = (
                []
                if is_s3_uri(obj.uri)
                else imagery.recorded_fingerprints(key, registered_fingerprint(catalog_store, imagery.catalog, key))
            )
            version, fingerprint = object_version(store, obj, known)
            changes.append(SceneChange(key, obj, version, is_new=True, fingerprint=fingerprint))
        elif reason != "folder marker":
            console.print(f"[yellow]skipped[/yellow] {escape(obj.uri)}: {reason}")
    return changes


def result_options(config: dict) -> dict:
    """The run config without what does not change a scene's results: the executor and batching."""
    options = {k: v for k, v in config.items() if k != "execution"}
    ops = dict(options.get("ops", {}))
    if "tile_findings" in ops:
        findings_ops = {k: v for k, v in ops["tile_findings"].get("ops", {}).items() if k != "plan_batches"}
        ops["tile_findings"] = {**ops["tile_findings"], "ops": findings_ops}
    return {**options, "ops": ops}


def request_digest(config: dict, gate_policy: str | None) -> str:
    """What a scene's results depend on besides its image: the run config (not the executor nor the
    batching), the model's identity (name, version, params, as the tile cache keys it), the content
    gate's policy (`gate_policy`: its settings and policy files) and the assets' code version.

    "" when the model does not load or the gate's policy cannot be read
    (`gate_policy` None): no run is then taken as up to date, and each
    scene's run reports why.
    """
    model_config = config["resources"]["tile_model"]["config"]
    try:
        model = load_model(model_config["name"], json.loads(model_config["params_json"]))
    except Exception:  # noqa: BLE001 - the scene runs report it, each with its reason
        return ""
    if gate_policy is None:
        return ""
    what = {
        "config": result_options(config),
        "model": model_key(model.name, model.version, model.params()),
        "gate": gate_policy,
        "code_version": CODE_VERSION,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def last_outcome(
    instance: dg.DagsterInstance, imagery: ImageryStore, change: SceneChange, request: str
) -> SceneOutcome | None:
    """The scene as its last run left it, when a new run would redo the same work; else None.

    That is when the partition's latest run (from anywhere: CLI, sensor, UI)
    is a successful CLI run of the same request and image version, and the
    catalog still says the scene is complete with every tile analysed and
    its STAC Item is there. A scene with failed tiles always runs again.
    """
    if not request:
        return None
    key = change.partition_key
    runs = instance.get_runs(
        filters=dg.RunsFilter(job_name=process_scene.name, tags={"dagster/partition": key}), limit=1
    )
    if not runs:
        return None
    last = runs[0]
    if not last.is_success or (last.tags.get(REQUEST_TAG), last.tags.get("tile_assets/version")) != (
        request, change.version
    ):
        return None
    store = imagery.catalog_store()
    status = read_json(store, imagery.scene_uri(key, "status.json"))
    if status.get("status") != "complete" or status.get("coverage") != 1.0:
        return None
    if not store.exists(str(status.get("item", ""))):
        return None
    synthesis = read_json(store, imagery.scene_uri(key, "synthesis.json"))
    return SceneOutcome(key, change.obj.uri, last.run_id, True, **synthesis_counts(synthesis), up_to_date=True)


def synthesis_counts(synthesis: dict) -> dict:
    """The summary's figures of a scene, from its synthesis.json."""
    return {
        "tiles": int(synthesis.get("tiles_planned", 0)),
        "findings": int(synthesis.get("total_findings", 0)),
        "coverage": float(synthesis.get("coverage", 0.0)),
    }


def read_json(store: Store, uri: str) -> dict:
    try:
        return json.loads(store.read_bytes(uri))
    except (StoreError, ValueError):
        return {}


def outcome_of(imagery: ImageryStore, change: SceneChange, result: dg.ExecuteJobResult) -> SceneOutcome:
    """What the CLI summary says of one scene, from the files its run wrote."""
    store = imagery.catalog_store()
    key = change.partition_key
    status = read_json(store, imagery.scene_uri(key, "status.json"))
    synthesis = read_json(store, imagery.scene_uri(key, "synthesis.json")) if result.success else {}
    rejected = not result.success and status.get("status") == "rejected"
    reason = status.get("reason", "") if status.get("status") == "failed" or rejected else ""
    if not result.success and not reason:
        failures = [e for e in result.all_events if e.is_step_failure]
        reason = failures[0].event_specific_data.error.message.strip().splitlines()[0] if failures else "run failed"
    return SceneOutcome(
        key=key,
        uri=change.obj.uri,
        run_id=result.run_id,
        success=result.success,
        **synthesis_counts(synthesis),
        reason=reason,
        rejected=rejected,
    )


def print_summary(outcomes: list[SceneOutcome], catalog: str) -> None:
    table = Table(title="tile_assets run")
    for column in ("scene", "tiles", "findings", "coverage", "status"):
        table.add_column(column, overflow="fold")  # a scene key cut short by "…" cannot be looked up
    for o in outcomes:
        status = "[green]ok[/green]" if o.success else f"[red]failed[/red]: {o.reason}"
        if o.up_to_date:
            status = "[green]up to date[/green]"
        if o.rejected:
            status = f"[yellow]{escape(o.reason)}[/yellow]"  # "rejected by <check>: <reasons>"
        table.add_row(o.key, str(o.tiles), str(o.findings), f"{o.coverage:.0%}" if o.success else "-", status)
    out = Console()
    out.print(table)
    # Paths and the command on lines of their own, never wrapped: they are copied and pasted.
    lines = [
        f"Catalog: {catalog}",
        f"  collection: {join_uri(catalog, 'collection.json')}",
        f"  scenes table: {join_uri(catalog, 'scenes.parquet')}",
        f"Web UI: DAGSTER_HOME={os.environ['DAGSTER_HOME']} .venv/bin/dagster dev -w workspace.yaml"
        "   (then open http://127.0.0.1:3000)",
    ]
    for line in lines:
        out.print(line, soft_wrap=True, markup=False, highlight=False)


def resolved_imagery(defs: dg.Definitions) -> ImageryStore:
    """The imagery resource as a run sees it: its `EnvVar` fields (AWS_*) resolved.

    Neither it nor its S3 resource holds anything to tear down, so it stays
    usable after the context closes.
    """
    with dg.build_resources({"imagery": (defs.resources or {})["imagery"]}) as resources:
        imagery: ImageryStore = resources.imagery
    return imagery


def gate_policy(defs: dg.Definitions, imagery: ImageryStore) -> str | None:
    """The content gate's fingerprint (settings and policy files' bytes), None when a policy file cannot be read.

    A changed blocklist or area policy can reject a scene that passed, or
    pass one that was rejected: its last run no longer stands.
    """
    gate: GateResource = (defs.resources or {})["gate"]
    try:
        return gate.fingerprint(imagery)
    except PolicyError:
        return None


def command_run(args: argparse.Namespace) -> int:
    ensure_dagster_home()
    settings = Settings.from_environment()
    inbox = absolute_uri(args.prefix) if args.prefix else settings.inbox
    catalog = absolute_uri(args.catalog) if args.catalog else settings.catalog
    os.environ["TILE_ASSETS_INBOX"] = inbox
    os.environ["TILE_ASSETS_CATALOG"] = catalog
    defs = build_definitions(Settings.from_environment())
    imagery = resolved_imagery(defs)
    instance = dg.DagsterInstance.get()
    try:
        changes = discover(imagery, inbox)
    except TileAssetsError as exc:
        console.print(f"[red]error[/red]: {exc}")
        return 2
    if not changes:
        console.print(f"[yellow]no images found under {inbox}[/yellow]")
        return 1
    catalog_store = imagery.catalog_store()
    for change in changes:
        register_scene(catalog_store, catalog, change.partition_key, change.obj, change.fingerprint)
    instance.add_dynamic_partitions(scenes.name, [c.partition_key for c in changes])
    config = run_config(args)
    request = request_digest(config, gate_policy(defs, imagery))
    locations = {tag: os.environ[variable] for tag, variable in LOCATION_TAGS.items()}
    outcomes = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("scenes", total=len(changes))
        for change in changes:
            previous = None if args.force else last_outcome(instance, imagery, change, request)
            if previous is not None:
                outcomes.append(previous)
                progress.advance(task)
                continue
            progress.update(task, description=f"scene {change.partition_key}")
            tags = {**scene_run_tags(change), **locations, "tile_assets/trigger": "cli",
                    "dagster/partition": change.partition_key, REQUEST_TAG: request}
            result = dg.execute_job(
                dg.reconstructable(scene_job), instance, run_config=config, tags=tags, raise_on_error=False
            )
            outcomes.append(outcome_of(imagery, change, result))
            progress.advance(task)
        progress.update(task, description="catalog")
        catalog_result = dg.execute_job(
            dg.reconstructable(catalog_job),
            instance,
            run_config={"execution": config["execution"]},
            tags={**locations, "tile_assets/trigger": "cli"},
            raise_on_error=False,
        )
    print_summary(outcomes, catalog)
    current = sum(o.up_to_date for o in outcomes)
    if current:
        console.print(
            f"{current} of {len(outcomes)} scenes up to date: their last runs stand (--force runs them again)"
        )
    if not catalog_result.success:
        console.print("[red]the catalog refresh failed; see the run in the web UI[/red]")
        return 1
    return 0 if all(o.success for o in outcomes) else 1


def command_resume(args: argparse.Namespace) -> int:
    """Re-execute a failed or killed run from failure: succeeded steps are not redone."""
    ensure_dagster_home()
    instance = dg.DagsterInstance.get()
    parent = instance.get_run_by_id(args.run_id)
    if parent is None:
        console.print(f"[red]error[/red]: no run {args.run_id} in {os.environ['DAGSTER_HOME']}")
        return 2
    # Steps rebuild the definitions from the environment: point it at the run's own inbox and catalog.
    for tag, variable in LOCATION_TAGS.items():
        if tag in parent.tags:
            os.environ[variable] = parent.tags[tag]
    if parent.is_finished:
        # A killed run never gave back its pool slots (no cleanup ran); it is over, so they are stale.
        instance.event_log_storage.free_concurrency_slots_for_run(parent.run_id)
    target = scene_job if parent.job_name == process_scene.name else catalog_job
    tags = {k: v for k, v in parent.tags.items() if k not in PARENT_OUTCOME_TAGS}
    tags.update({"dagster/parent_run_id": parent.run_id, "dagster/root_run_id": parent.root_run_id or parent.run_id})
    result = dg.execute_job(
        dg.reconstructable(target),
        instance,
        run_config=parent.run_config,
        tags=tags,
        reexecution_options=dg.ReexecutionOptions.from_failure(args.run_id, instance),
        raise_on_error=False,
    )
    Console().print(f"re-execution {result.run_id}: {'succeeded' if result.success else 'failed'}")
    return 0 if result.success else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tile-assets", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run", help="register every image under PREFIX and materialize the assets of the new, changed or incomplete ones"
    )
    run.add_argument("prefix", nargs="?", help="inbox folder or s3://bucket/prefix (default $TILE_ASSETS_INBOX or data/inbox)")
    run.add_argument("--catalog", help="catalog root, folder or s3:// (default $TILE_ASSETS_CATALOG or data/catalog)")
    run.add_argument("--tile-size", type=int, default=512, help="tile side in pixels; 0 chooses from image size and resolution")
    run.add_argument("--overlap", type=float, default=0.2, help="overlap: a ratio below 1, or pixels")
    run.add_argument("--edge", choices=["shift", "pad"], default="shift", help="edge tiles shifted inward or padded")
    run.add_argument("--model", default=DEFAULT_MODEL, help="tile model (entry point in tile_assets.models)")
    run.add_argument("--model-params", default="{}", help="model params as JSON")
    run.add_argument("--merge", choices=["greedy_nmm", "nms", "none"], default="greedy_nmm", help="cross-tile merge")
    run.add_argument("--match", choices=["ios", "iou"], default="ios", help="box matching metric of the merge")
    run.add_argument("--match-threshold", type=float, default=0.5)
    run.add_argument("--full-image-pass", action="store_true", help="also run the model on the whole scene, downsampled")
    in_process, pooled = batching_defaults("in_process"), batching_defaults("multiprocess")
    run.add_argument(
        "--target-steps", type=int,
        help=f"about this many inference steps per scene (default {in_process['target_steps']} in process, "
        f"{pooled['target_steps']} multiprocess)",
    )
    run.add_argument(
        "--max-tiles-per-batch", type=int,
        help=f"at most this many tiles per inference step (default {in_process['max_tiles_per_batch']} in process, "
        f"{pooled['max_tiles_per_batch']} multiprocess)",
    )
    run.add_argument("--executor", choices=["in_process", "multiprocess"], default="in_process")
    run.add_argument(
        "--force", action="store_true",
        help="run every scene, also those whose last run of the same image and options is complete",
    )
    run.set_defaults(func=command_run)
    resume = sub.add_parser("resume", help="re-execute a failed or killed run from failure")
    resume.add_argument("run_id")
    resume.set_defaults(func=command_resume)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
