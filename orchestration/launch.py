"""``tood-ablate``: run, resume and inspect ablation grids; render reports."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tood.config import ConfigError, parse_override

LAUNCH_FILE = "tood_launch.json"


def _storage(path: str | None) -> Path:
    return Path(path or "runs/ray").resolve()


def _init_ray(address: str | None) -> None:
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, object_store_memory=200 * 1024**2)


def _fit(tuner, client, parent_id: str, quiet: bool) -> dict[str, int]:
    from orchestration.tracking import reconcile

    results = tuner.fit()
    errors = {}
    for r in results:
        if r.error is not None:
            errors[r.config["trial"]["run_id"]] = f"{type(r.error).__name__}: {r.error}"
    counts = reconcile(client, parent_id, errors)
    if not quiet:
        print(f"tood-ablate: trials by status: {counts}")
    return counts


def _tuner(trials: list[dict], storage: Path, name: str, args):
    from ray import tune

    from orchestration.trainable import run_trial

    resources = {"cpu": args.cpus_per_trial, "gpu": args.gpus_per_trial}
    trainable = tune.with_resources(run_trial, resources)
    return tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(trials)},
        tune_config=tune.TuneConfig(max_concurrent_trials=args.max_concurrent),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=tune.FailureConfig(max_failures=args.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0 if args.quiet else 1,
        ),
    )


def cmd_run(args) -> int:
    from mlflow.tracking import MlflowClient

    from orchestration.grid import expand_grid
    from orchestration.tracking import create_launch_runs, default_tracking_uri
    from tood.config import build_config
    from tood.data.loaders import ensure_synthetic

    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    overrides = dict(parse_override(o) for o in args.overrides)
    grid, specs = expand_grid(args.grid, profile=args.profile, seeds=seeds, overrides=overrides)
    for spec in {json.dumps(s.config["data"], sort_keys=True): s for s in specs}.values():
        ensure_synthetic(build_config(spec.config, spec.name).data)  # once, before trials start
    name = args.name or f"{grid.study}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = _storage(args.storage_path)
    tracking_uri = args.tracking_uri or default_tracking_uri()
    client = MlflowClient(tracking_uri)
    parent_id, run_ids = create_launch_runs(client, tracking_uri, grid, specs, name, args.profile)
    trials = [{**asdict(s), "run_id": rid, "tracking_uri": tracking_uri, "storage": str(storage / name)} for s, rid in zip(specs, run_ids)]
    (storage / name).mkdir(parents=True, exist_ok=True)
    launch = {"name": name, "grid": str(Path(args.grid).resolve()), "study": grid.study, "parent_run_id": parent_id, "tracking_uri": tracking_uri,
              "trials": len(trials), "args": {k: v for k, v in vars(args).items() if k != "fn"}}
    (storage / name / LAUNCH_FILE).write_text(json.dumps(launch, indent=2))
    if not args.quiet:
        print(f"tood-ablate: {len(trials)} trials of {grid.study} as '{name}'; MLflow {tracking_uri} parent run {parent_id}")
    _init_ray(args.address)
    counts = _fit(_tuner(trials, storage, name, args), client, parent_id, args.quiet)
    return 0 if not counts.get("FAILED") and not counts.get("KILLED") else 1


def _launch_info(name: str, storage_path: str | None) -> tuple[Path, dict]:
    path = _storage(storage_path) / name
    if not (path / LAUNCH_FILE).is_file():
        raise ConfigError(f"{path / LAUNCH_FILE}: no grid launch named '{name}' under {path.parent}")
    return path, json.loads((path / LAUNCH_FILE).read_text())


def cmd_resume(args) -> int:
    from mlflow.tracking import MlflowClient
    from ray import tune

    from orchestration.trainable import run_trial

    path, info = _launch_info(args.name, args.storage_path)
    saved = argparse.Namespace(**info["args"])
    _init_ray(args.address or saved.address)
    trainable = tune.with_resources(run_trial, {"cpu": saved.cpus_per_trial, "gpu": saved.gpus_per_trial})
    tuner = tune.Tuner.restore(str(path), trainable=trainable, resume_errored=True)
    client = MlflowClient(info["tracking_uri"])
    counts = _fit(tuner, client, info["parent_run_id"], args.quiet)
    return 0 if not counts.get("FAILED") and not counts.get("KILLED") else 1


def cmd_status(args) -> int:
    from mlflow.tracking import MlflowClient

    _, info = _launch_info(args.name, args.storage_path)
    client = MlflowClient(info["tracking_uri"])
    parent = client.get_run(info["parent_run_id"])
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{info['parent_run_id']}'", max_results=10000)
    print(f"{info['name']} ({info['study']}): parent {parent.info.status}, {len(runs)}/{info['trials']} trials")
    for r in sorted(runs, key=lambda r: r.info.run_name):
        ap = r.data.metrics.get("AP", r.data.metrics.get("epoch_AP"))
        print(f"  {r.info.status:9s} {r.info.run_name:45s} AP={'-' if ap is None else f'{ap:.1f}'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tood-ablate", description="TOOD ablation grids on Ray Tune, tracked in MLflow")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="launch a grid file (experiments/*.yaml)")
    r.add_argument("grid")
    r.add_argument("--profile", default="proxy", help="config profile: proxy (CPU, synthetic) or coco")
    r.add_argument("--seeds", help="comma-separated seeds replacing the grid's seeds, e.g. 0,1")
    r.add_argument("--address", help="join a Ray cluster (auto, host:port or ray://host:port); default: local Ray")
    r.add_argument("--gpus-per-trial", type=float, default=0.0)
    r.add_argument("--cpus-per-trial", type=float, default=1.0)
    r.add_argument("--max-concurrent", type=int, default=0, help="0 = as many as resources allow")
    r.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial from its last checkpoint")
    r.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///<cwd>/mlruns.db)")
    r.add_argument("--name", help="launch name (default <study>-<time>)")
    r.add_argument("--storage-path", help="Ray Tune results and checkpoints (default ./runs/ray; shared storage on a cluster)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every trial")
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(fn=cmd_run)
    for name, fn, text in (("resume", cmd_resume, "finish an interrupted launch"), ("status", cmd_status, "trials of a launch and their AP")):
        s = sub.add_parser(name, help=text)
        s.add_argument("name")
        s.add_argument("--storage-path")
        s.add_argument("--address")
        s.add_argument("--quiet", action="store_true")
        s.set_defaults(fn=fn)
    sub.add_parser("report", help="render tables/plots/HTML from MLflow (see `tood-ablate report --help`)", add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        from reports.render import main as report_main

        return report_main(argv[1:]) or 0
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as e:
        print(f"tood-ablate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
