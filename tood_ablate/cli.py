"""The ``tood-ablate`` command line over :mod:`orchestration.launch` (run, resume, status) and :mod:`reports` (report, diagnose, compare)."""
from __future__ import annotations

import argparse
import sys
from collections import Counter

from orchestration.launch import LaunchOptions, launch_status, resume_launch, run_suite, suite_grids
from tood.config import ConfigError, parse_override


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tood-ablate", description="TOOD ablation grids on Ray Tune, tracked in MLflow")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="launch a grid file (experiments/*.yaml)")
    r.add_argument("grid", nargs="*", help="grid files (several: one launch, identical trials trained once)")
    r.add_argument("--all", action="store_true", help="every paper study in experiments/ (all grids but smoke) in one launch")
    r.add_argument("--rerun", action="store_true", help="train every trial, even one whose key has a finished run in the store")
    r.add_argument("--profile", default="proxy", help="config profile of base.yaml: proxy (CPU, synthetic, 16 epochs), proxy_long (the same, 32 epochs) or coco")
    r.add_argument("--seeds", help="comma-separated seeds replacing the grid's, e.g. 0,1")
    r.add_argument("--address", help="join a Ray cluster: auto, host:port or ray://host:port (default: local Ray)")
    r.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed, e.g. 0.5 (per worker with --workers-per-trial)")
    r.add_argument("--cpus-per-trial", type=float, default=1.0, help="per worker with --workers-per-trial")
    r.add_argument("--workers-per-trial", type=int, default=1, help="data-parallel Ray Train workers per trial (DDP)")
    r.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0: as many as resources allow)")
    r.add_argument("--max-failures", type=int, default=2, help="retries of a failed trial from its last checkpoint (-1: no limit)")
    r.add_argument("--tracking-uri", help="MLflow URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns.db)")
    r.add_argument("--name", help="launch name (default: <study>-<date>-<time>)")
    r.add_argument("--storage-path", help="Tune results and checkpoints (default: <cwd>/runs/ray; shared storage on a cluster)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every trial")
    r.add_argument("--log-checkpoints", action="store_true", help="also log each trial's final checkpoint to MLflow")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    for name, text in (("resume", "finish an interrupted launch (finished trials are not re-run)"),
                       ("status", "the trials of a launch, their state and AP")):
        s = sub.add_parser(name, help=text)
        s.add_argument("name")
        s.add_argument("--storage-path", help="as given to `run` (default: <cwd>/runs/ray)")
        if name == "resume":
            s.add_argument("--address", help="Ray cluster to join (default: the launch's)")
            s.add_argument("--quiet", action="store_true", default=None)
    sub.add_parser("report", help="tables, plots and HTML from MLflow (`tood-ablate report --help`)", add_help=False)
    sub.add_parser("diagnose", help="PCC diagnostics of a grid's checkpoints (`tood-ablate diagnose --help`)", add_help=False)
    sub.add_parser("compare", help="the paper's claims under two or more recipes, side by side (`tood-ablate compare --help`)",
                   add_help=False)
    sub.add_parser("publish", help="write a results folder and its index entry from a store (`tood-ablate publish --help`)",
                   add_help=False)
    return p


def _options(args: argparse.Namespace) -> LaunchOptions:
    seeds = None
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise ConfigError(f"--seeds: got {args.seeds!r} (expected comma-separated integers, e.g. 0,1)") from None
    return LaunchOptions(
        profile=args.profile, seeds=seeds, address=args.address, gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial, workers_per_trial=args.workers_per_trial, max_concurrent=args.max_concurrent,
        tracking_uri=args.tracking_uri, name=args.name, storage_path=args.storage_path,
        overrides=dict(parse_override(o) for o in args.overrides), max_failures=args.max_failures, quiet=args.quiet,
        log_checkpoints=args.log_checkpoints, rerun=args.rerun)


def _print_status(name: str, storage_path: str | None) -> None:
    info, rows = launch_status(name, storage_path)
    studies = ", ".join(s["study"] for s in info.get("studies", [])) or info["study"]
    print(f"{info['name']} ({studies}): parent {info['parent_status']}, {len(rows)} trials, MLflow {info['tracking_uri']}")
    if "trainings" in info:
        t = info["trainings"]
        print(f"  {t['without_dedup']} child runs, {t['unique']} distinct trials, {t['unique'] - t['to_train']} reused from "
              f"earlier runs, {t['to_train']} for this launch to train")
    by_status = Counter(r["status"] for r in rows)
    print("  child runs by status: " + ", ".join(f"{s} {n}" for s, n in sorted(by_status.items())))
    multi = len(info.get("studies", [])) > 1
    for r in rows:
        ap = "-" if r["AP"] is None else f"{r['AP']:.1f}"
        epoch = "-" if r["epoch"] is None else str(r["epoch"])
        name = f"{r['study']}/{r['name']}" if multi else r["name"]
        print(f"  {r['status']:9s} {name:60s} epoch {epoch:>3s}  AP {ap:>5s}  attempts {r['attempts']}"
              + (f"  reused from run {r['reused_from']}" if r["reused_from"] else "")
              + (f"  error: {r['error'][:120]}" if r["error"] and r["status"] != "FINISHED" else ""))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        from reports.render import main as report_main

        return report_main(argv[1:]) or 0
    if argv[:1] == ["diagnose"]:
        from reports.alignment_diagnostics import main as diagnose_main

        return diagnose_main(argv[1:])
    if argv[:1] == ["compare"]:
        from reports.compare_recipes import main as compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["publish"]:
        from reports.publish import main as publish_main

        return publish_main(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            if bool(args.grid) == bool(args.all):
                raise ConfigError("tood-ablate run: give grid files or --all (expected one of the two)")
            return 0 if run_suite(suite_grids() if args.all else args.grid, _options(args)).ok else 1
        if args.command == "resume":
            return 0 if resume_launch(args.name, args.storage_path, args.address, args.quiet).ok else 1
        _print_status(args.name, args.storage_path)
        return 0
    except ConfigError as e:
        print(f"tood-ablate: error: {e}", file=sys.stderr)
        return 2

