"""The ``tood-ablate`` command line over :mod:`orchestration.launch` (run, resume, status) and :mod:`reports`
(report, diagnose, compare, publish: each with its own arguments; the MLflow stores they name are checked here first)."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections import Counter

from orchestration.grid import parse_seeds
from orchestration.launch import LaunchOptions, run_suite, suite_grids
from orchestration.resume import launch_status, resume_launch
from orchestration.folders import DEFAULT_STORAGE
from tood.config import ConfigError, parse_override


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in ``--help``, except ``None`` ones: their help text says what applies then."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tood-ablate", description="TOOD ablation grids on Ray Tune, tracked in MLflow")
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="launch a grid file (experiments/*.yaml)", formatter_class=_Help)
    r.add_argument("grid", nargs="*", help="grid files (several: one launch, identical trials trained once)")
    r.add_argument("--all", action="store_true", help="every paper study in experiments/ (all grids but smoke) in one launch")
    r.add_argument("--rerun", action="store_true", help="train every trial, even one whose key has a finished run in the store")
    r.add_argument("--rerun-stale", action="store_true", help="train the trials whose key's finished run was trained by other "
                                                              "code than this checkout's tood/ (reused by default, marked in "
                                                              "`status` and the report)")
    r.add_argument("--profile", default="proxy", help="config profile of base.yaml: proxy (CPU, synthetic, 16 epochs), proxy_long "
                                                      "(the same, 32 epochs), proxy_budget (24 epochs, lr linear to "
                                                      "zero), smoke (any grid in a couple of minutes: tiny "
                                                      "synthetic data, 2 epochs) or coco (data.root: a COCO 2017 folder)")
    r.add_argument("--seeds", help="comma-separated seeds replacing the grid's, e.g. 0,1 (default: the grid's seeds)")
    r.add_argument("--address", help="join a Ray cluster: auto, host:port or ray://host:port; with token authentication "
                                     "(`ray start --head`'s default) the token comes from $RAY_AUTH_TOKEN or "
                                     "~/.ray/auth_token (default: a local Ray runtime)")
    r.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions allowed, e.g. 0.5 (per worker with --workers-per-trial)")
    r.add_argument("--cpus-per-trial", type=float, default=1.0, help="per worker with --workers-per-trial")
    r.add_argument("--workers-per-trial", type=int, default=1, help="data-parallel Ray Train workers per trial (DDP)")
    r.add_argument("--max-concurrent", type=int, default=0, help="trials at once (0: as many as resources allow)")
    r.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial from its last checkpoint (-1: no "
                                                               "limit); a config or dataset error fails the trial at once")
    r.add_argument("--tracking-uri", help="MLflow store: sqlite:////abs/path.db (a relative sqlite:///path is resolved against "
                                          "this folder), http(s)://host:port, a folder, databricks (default: "
                                          "$MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlruns.db)")
    r.add_argument("--name", help="launch name (default: <study>-<date>-<time>)")
    r.add_argument("--storage-path", help=f"Tune results and checkpoints; shared storage on a cluster (default: <cwd>/{DEFAULT_STORAGE})")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override for every trial")
    r.add_argument("--log-checkpoints", action="store_true", help="also log each trial's final checkpoint to MLflow")
    r.add_argument("--no-share-prefix", action="store_true", help="train every trial in full (default: trials that start "
                                                                  "with the same epochs, e.g. TAL's ATSS warm-up, train "
                                                                  "them once and branch)")
    r.add_argument("--until-decided", action="store_true", help="train seeds in rounds, only for rows whose claims are "
                                                                "undecided and still decidable (tood_ablate.sequential)")
    r.add_argument("--max-seeds", type=int, default=12, help="with --until-decided: the most seeds a row gets")
    r.add_argument("--looks", default="3,5,8,12", help="with --until-decided: the seed counts at which claims are tested")
    r.add_argument("--alpha", type=float, default=0.05, help="with --until-decided: each claim's one-sided error rate over "
                                                             "all its looks (Bonferroni split)")
    r.add_argument("--quiet", action="store_true", help="no progress output")
    for name, text in (("resume", "finish an interrupted launch (finished trials are not re-run)"),
                       ("status", "the trials of a launch, their state and AP")):
        s = sub.add_parser(name, help=text, formatter_class=_Help)
        s.add_argument("name", help="the launch's name (`run --name`, or the one its first line printed)")
        s.add_argument("--storage-path", help=f"as given to `run` (default: <cwd>/{DEFAULT_STORAGE})")
        if name == "resume":
            s.add_argument("--address", help="Ray cluster to join, as for `run` (default: the launch's)")
            s.add_argument("--quiet", action="store_true", default=None, help="no progress output (default: as the launch)")
    sub.add_parser("report", help="tables, plots and HTML from MLflow (`tood-ablate report --help`)", add_help=False)
    sub.add_parser("diagnose", help="PCC diagnostics of a grid's checkpoints (`tood-ablate diagnose --help`)", add_help=False)
    sub.add_parser("compare", help="the paper's claims under two or more recipes, side by side (`tood-ablate compare --help`)",
                   add_help=False)
    sub.add_parser("publish", help="write a results folder and its index entry from a store (`tood-ablate publish --help`)",
                   add_help=False)
    sub.add_parser("plan", help="what `run` would train, without training: counts, shared prefixes, time "
                                "(`tood-ablate plan --help`)", add_help=False)
    sub.add_parser("claims", help="where the claims of a store stand and what the next --until-decided round adds "
                                  "(`tood-ablate claims --help`)", add_help=False)
    sub.add_parser("doctor", help="will a launch work here, and how long will it take? (`tood-ablate doctor --help`)",
                   add_help=False)
    sub.add_parser("slurm", help="write an sbatch script that runs a launch on a Slurm allocation (`tood-ablate slurm --help`)",
                   add_help=False)
    return p


def _options(args: argparse.Namespace) -> LaunchOptions:
    seeds = parse_seeds(args.seeds)
    return LaunchOptions(
        profile=args.profile, seeds=seeds, address=args.address, gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial, workers_per_trial=args.workers_per_trial, max_concurrent=args.max_concurrent,
        tracking_uri=args.tracking_uri, name=args.name, storage_path=args.storage_path,
        overrides=dict(parse_override(o) for o in args.overrides), max_failures=args.max_failures, quiet=args.quiet,
        log_checkpoints=args.log_checkpoints, rerun=args.rerun, rerun_stale=args.rerun_stale,
        share_prefix=not args.no_share_prefix)


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
    stale = sum(bool(r["stale"]) for r in rows)
    if stale:
        print(f"  {stale} result(s) reused across a code change (STALE below; `tood-ablate run ... --rerun-stale` retrains them)")
    multi = len(info.get("studies", [])) > 1
    for r in rows:
        ap = "-" if r["AP"] is None else f"{r['AP']:.1f}"
        epoch = "-" if r["epoch"] is None else str(r["epoch"])
        name = f"{r['study']}/{r['name']}" if multi else r["name"]
        print(f"  {r['status']:9s} {name:60s} epoch {epoch:>3s}  AP {ap:>5s}  attempts {r['attempts']}"
              + (f"  reused from run {r['reused_from']}" if r["reused_from"] else "")
              + (f"  STALE: {r['stale']}" if r["stale"] else "")
              + (f"  error: {r['error'][:120]}" if r["error"] and r["status"] != "FINISHED" else ""))


# Commands with their own argument parser: the module whose main(argv) runs them.
REPORT_COMMANDS = {"report": "reports.render", "diagnose": "reports.alignment_diagnostics",
                   "compare": "reports.compare_recipes", "publish": "reports.publish", "doctor": "orchestration.doctor",
                   "plan": "orchestration.plan", "claims": "tood_ablate.claims"}


def checked_store_args(argv: list[str]) -> list[str]:
    """``argv`` of a report command with each MLflow store it names (``--tracking-uri X``,
    ``--tracking-uri=X``, compare's ``--recipe LABEL URI``; else ``$MLFLOW_TRACKING_URI``)
    checked and normalised by :func:`orchestration.uris.check_tracking_uri`."""
    from orchestration.uris import check_tracking_uri

    out = list(argv)
    for i, arg in enumerate(out):
        if arg == "--tracking-uri" and i + 1 < len(out):
            out[i + 1] = check_tracking_uri(out[i + 1], "--tracking-uri")
        elif arg.startswith("--tracking-uri="):
            out[i] = "--tracking-uri=" + check_tracking_uri(arg.split("=", 1)[1], "--tracking-uri")
        elif arg == "--recipe" and i + 2 < len(out) and not out[i + 1].startswith("-") and not out[i + 2].startswith("-"):
            out[i + 2] = check_tracking_uri(out[i + 2], f"--recipe {out[i + 1]}")
    named = any(a == "--tracking-uri" or a.startswith("--tracking-uri=") for a in out)
    if not named and os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = check_tracking_uri(os.environ["MLFLOW_TRACKING_URI"], "$MLFLOW_TRACKING_URI")
    return out


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # reports read a parent's grid.yaml in `run --until-decided`, `claims` and `publish`: no progress bars
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        if argv[:1] == ["slurm"]:  # checks the tracking URI's form only: the server need not answer the login node
            from orchestration.slurm import main as slurm_main

            return slurm_main(argv[1:])
        if argv[:1] and argv[0] in REPORT_COMMANDS:
            rest = checked_store_args(argv[1:])
            return importlib.import_module(REPORT_COMMANDS[argv[0]]).main(rest) or 0
        args = build_parser().parse_args(argv)
        if args.command == "run":
            if bool(args.grid) == bool(args.all):
                raise ConfigError("tood-ablate run: give grid files or --all (expected one of the two)")
            grids = suite_grids() if args.all else args.grid
            if args.until_decided:
                from tood_ablate.sequential import parse_looks, run_until_decided

                return run_until_decided(grids, _options(args), args.max_seeds, parse_looks(args.looks), args.alpha)
            result = run_suite(grids, _options(args))
        elif args.command == "resume":
            result = resume_launch(args.name, args.storage_path, args.address, args.quiet)
        else:
            _print_status(args.name, args.storage_path)
            return 0
        from reports.render import render_launch  # each study: report logged to its parent, summary refreshed

        lines = render_launch(result.name, result.path.parent, result.tracking_uri)
        if lines:
            print("tood-ablate: the answer in the MLflow UI:\n" + "\n".join(lines), file=sys.stderr)
        return 0 if result.ok else 1
    except ConfigError as e:
        print(f"tood-ablate: error: {e}", file=sys.stderr)
        return 2
