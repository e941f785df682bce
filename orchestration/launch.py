"""New launches of ablation grids on Ray Tune: :func:`run_suite` (one grid or several studies).

Python API: :func:`run_suite` here, :func:`orchestration.resume.resume_launch` and
:func:`orchestration.resume.launch_status`; the CLI (:mod:`tood_ablate.cli`) is a thin layer over
them. A launch lives in ``<storage>/<name>/``: Ray Tune's experiment state and checkpoints, plus
the launch record (:mod:`orchestration.record`).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from orchestration.folders import storage_root
from orchestration.payload import TrialPayload
from orchestration.record import LAUNCH_FILE, TRIALS_FILE, LaunchResult, finish_launch, fit_launch
from orchestration.tuner import make_tuner, ray_runtime, set_log_level
from tood.config import ConfigError

NOT_IN_SUITE = ("base", "smoke", "demo")  # experiments/ files that --all leaves out


@dataclass
class LaunchOptions:
    """How a grid runs (the ``tood-ablate run`` flags)."""

    profile: str = "proxy"
    seeds: list[int] | None = None
    address: str | None = None  # None: a local Ray runtime sized to this machine
    gpus_per_trial: float = 0.0  # per worker when workers_per_trial > 1
    cpus_per_trial: float = 1.0  # per worker when workers_per_trial > 1
    workers_per_trial: int = 1
    max_concurrent: int = 0  # 0: as many as the resources allow
    tracking_uri: str | None = None
    name: str | None = None
    storage_path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    max_failures: int = 2
    rerun: bool = False  # train every trial even if the store has a finished run of its key
    share_prefix: bool = True  # train the first epochs that several trials share once (orchestration.prefix)
    rerun_stale: bool = False  # ... and those whose finished run was trained by other code (orchestration.provenance)
    quiet: bool = False
    log_checkpoints: bool = False
    row_seeds: dict[str, list[int]] | None = None  # "study/row" -> its seeds (--until-decided rounds); None: every row all seeds
    parent_tags: dict[str, str] = field(default_factory=dict)  # more tags on the parent runs (the rounds' design)


def _seeds_of(grid: Any, opts: LaunchOptions) -> list[int] | None:
    """The seeds to expand ``grid`` with: ``--seeds``, or with per-row seeds their union over its rows."""
    if opts.row_seeds is None:
        return opts.seeds
    union = sorted({s for key, seeds in opts.row_seeds.items() if key.split("/", 1)[0] == grid.study for s in seeds})
    return union or opts.seeds


def _only_row_seeds(specs: list, row_seeds: dict[str, list[int]] | None) -> list:
    """``specs`` restricted to each row's own seeds (``row_seeds``; None keeps them all)."""
    if row_seeds is None:
        return specs
    return [s for s in specs if s.seed in row_seeds.get(f"{s.study}/{s.row_label}", ())]


def check_options(opts: LaunchOptions) -> None:
    """Resource and retry options that make sense, checked before any run is created."""
    problems = [
        (opts.workers_per_trial < 1, "--workers-per-trial", opts.workers_per_trial, "an integer >= 1"),
        (opts.cpus_per_trial < 0, "--cpus-per-trial", opts.cpus_per_trial, "a number >= 0"),
        (opts.gpus_per_trial < 0, "--gpus-per-trial", opts.gpus_per_trial, "a number >= 0"),
        (opts.cpus_per_trial == 0 and opts.gpus_per_trial == 0, "--cpus-per-trial", 0, "> 0 when --gpus-per-trial is 0"),
        (opts.max_failures < -1, "--max-failures", opts.max_failures, "an integer >= -1 (-1: no limit)"),
        (opts.max_concurrent < 0, "--max-concurrent", opts.max_concurrent, "an integer >= 0 (0: no limit)"),
    ]
    for bad, flag, value, expected in problems:
        if bad:
            raise ConfigError(f"{flag}: got {value} (expected {expected})")


def _prepare_data(specs: list) -> None:
    """Generate each synthetic proxy (and synthetically pre-trained backbone) the trials need,
    once, before any trial starts."""
    from tood.config import build_config
    from tood.data.loaders import ensure_synthetic
    from tood.model.pretrain import ensure_pretrained_backbone

    for spec in {json.dumps(s.config["data"], sort_keys=True): s for s in specs}.values():
        ensure_synthetic(build_config(spec.config, f"trial {spec.name}").data)
    for spec in {json.dumps([s.config["model"]["backbone"], s.config["data"]], sort_keys=True): s for s in specs}.values():
        ensure_pretrained_backbone(build_config(spec.config, f"trial {spec.name}"), progress=True)


def suite_grids(folder: str | Path | None = None) -> list[Path]:
    """The grid files of every paper study in ``folder`` (``--all``): all but base.yaml, the
    smoke grid and the demo (a one-seed excerpt of Table 6), in name order."""
    if folder is None:  # ./experiments where the user stands, else the project's own
        folder = Path("experiments") if Path("experiments").is_dir() else Path(__file__).resolve().parents[1] / "experiments"
    paths = sorted(p for p in Path(folder).glob("*.yaml") if p.stem not in NOT_IN_SUITE)
    if not paths:
        raise ConfigError(f"{folder}: --all: no grid files found (expected experiments/*.yaml besides base.yaml)")
    return paths


def _expand_grids(grid_paths: list[str | Path], opts: LaunchOptions) -> tuple[list, list[list]]:
    """The grids and, per grid, its trial specs under ``opts`` (profile, seeds, overrides, row seeds)."""
    from orchestration.grid import expand, load_grid

    grids = [load_grid(p) for p in grid_paths]
    studies = [g.study for g in grids]
    for g in grids:
        if studies.count(g.study) > 1:
            raise ConfigError(f"{g.path}: study: '{g.study}' is the study of another grid of this launch (expected one grid per study)")
    specs = [_only_row_seeds(expand(g, opts.profile, _seeds_of(g, opts), opts.overrides), opts.row_seeds) for g in grids]
    return grids, specs


def _create_runs(client, grids: list, specs: list[list], opts: LaunchOptions, name: str) -> list[dict]:
    """Per grid: its parent run and one child run per trial spec (orchestration.tracking)."""
    from orchestration.grid import resolved_grid
    from orchestration.tracking import create_launch_runs

    launched = []
    for g, ss in zip(grids, specs):
        seeds = _seeds_of(g, opts) or g.seeds
        parent_id, run_ids = create_launch_runs(client, g.study, g.table, opts.profile, str(g.path),
                                                resolved_grid(g, seeds, opts.overrides), ss, name, opts.parent_tags)
        launched.append({"study": g.study, "table": g.table, "grid": str(Path(g.path).resolve()),
                         "parent_run_id": parent_id, "run_ids": run_ids})
    return launched


def _reusable(client, unique: list, opts: LaunchOptions) -> tuple[dict, set[str]]:
    """Finished runs of the store by key that this launch reuses, and the keys whose finished run
    other code trained (orchestration.provenance; left out of the reusable ones with ``--rerun-stale``)."""
    from orchestration.provenance import stale_keys
    from orchestration.reuse import finished_by_key

    reusable = {} if opts.rerun else finished_by_key(client, {t.key for t in unique})
    stale = stale_keys(reusable)
    if opts.rerun_stale:
        reusable = {k: run for k, run in reusable.items() if k not in stale}
    return reusable, stale


def _payloads(client, unique: list, specs: list[list], launched: list[dict], reusable: dict, groups: dict,
              opts: LaunchOptions, tracking_uri: str, path: Path) -> tuple[list[TrialPayload], int]:
    """The payload of each trial to train; the runs of reused keys get their result copied.
    Returns the payloads and the number of runs filled by reuse."""
    from orchestration.prefix import trial_prefix
    from orchestration.reuse import copy_result
    from orchestration.trainable import fault_plan

    suite, workers = len(specs) > 1, max(1, opts.workers_per_trial)
    trials, reused = [], 0
    for t in unique:
        runs = [launched[si]["run_ids"][ti] for si, ti in t.users]
        if t.key in reusable:
            reused += sum(copy_result(client, reusable[t.key].info.run_id, rid) for rid in runs)
            continue
        spec = specs[t.primary[0]][t.primary[1]]
        trials.append(TrialPayload(**{**asdict(spec), "name": f"{spec.study}/{spec.name}" if suite else spec.name},
                                   key=t.key, cost=t.cost, run_id=runs[0], alias_run_ids=runs[1:], tracking_uri=tracking_uri,
                                   storage=str(path), workers=workers, cpus_per_worker=opts.cpus_per_trial,
                                   gpus_per_worker=opts.gpus_per_trial, max_failures=opts.max_failures,
                                   log_checkpoints=opts.log_checkpoints, fail_once_at_epoch=fault_plan(spec.name),
                                   reuse=reuse_policy(opts), prefix=trial_prefix(t, groups, path)))
    return trials, reused


def _announce(info: dict, groups: dict, stale: set[str], opts: LaunchOptions) -> None:
    """The launch's first lines: where it stores, what it trains, reuses and shares."""
    t = info["trainings"]
    studies = ", ".join(s["study"] for s in info["studies"])
    print(f"tood-ablate: {studies} as '{info['name']}' (storage {info['path']}); MLflow {info['tracking_uri']}\n"
          f"tood-ablate: {t['without_dedup']} child runs, {t['unique']} distinct trials, {t['unique'] - t['to_train']} reused from "
          f"earlier runs of the store (--rerun trains them again), {t['to_train']} to train", file=sys.stderr)
    if groups:
        print(f"tood-ablate: {sum(g.branches for g in groups.values())} of them branch from {len(groups)} shared "
              f"prefixes: {sum(g.saved_epochs for g in groups.values())} trial-epochs not trained "
              "(--no-share-prefix trains every trial in full)", file=sys.stderr)
    if stale:
        print(f"tood-ablate: {len(stale)} distinct trial(s) {'retrained' if opts.rerun_stale else 'reused'}: their "
              "finished run was trained by other code than this checkout's"
              + ("" if opts.rerun_stale else " (marked in `status` and the report; --rerun-stale retrains them)"),
              file=sys.stderr)


def run_suite(grid_paths: list[str | Path], opts: LaunchOptions | None = None) -> LaunchResult:
    """Run several studies in one Ray launch (see ``orchestration.suite``): every study keeps
    its MLflow experiment and parent run; a trial key that several studies need trains once
    and fills each study's child run; a key finished in an earlier launch of the store is
    reused (not with ``opts.rerun``)."""
    from mlflow.tracking import MlflowClient

    from orchestration import preflight
    from orchestration.mlflow_store import prepare_store
    from orchestration.prefix import plan_sharing, prefix_counts
    from orchestration.suite import schedule, unique_trials

    opts = opts or LaunchOptions()
    check_options(opts)
    set_log_level(opts.quiet)
    grids, specs = _expand_grids(grid_paths, opts)
    checked = preflight.check_before_start(opts, [s for ss in specs for s in ss])
    if opts.tracking_uri:  # the launch record keeps the URI that works from any folder
        opts = replace(opts, tracking_uri=checked.tracking_uri)
    unique = schedule(unique_trials(specs), specs)
    name = opts.name or f"{'suite' if len(grids) > 1 else grids[0].study}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = storage_root(opts.storage_path) / name
    if (path / LAUNCH_FILE).exists():
        raise ConfigError(f"{path}: a launch named '{name}' exists (expected a new --name, or `tood-ablate resume {name}`)")
    _prepare_data([specs[si][ti] for si, ti in (t.primary for t in unique)])
    tracking_uri = checked.tracking_uri
    prepare_store(tracking_uri)  # a fresh sqlite store: created by one launch at a time
    client = MlflowClient(tracking_uri)
    launched = _create_runs(client, grids, specs, opts, name)
    reusable, stale = _reusable(client, unique, opts)
    # shared prefixes: among the trials to train, one-worker trials only (orchestration.prefix)
    to_train = [t for t in unique if t.key not in reusable]
    groups = plan_sharing(client, to_train, specs, opts.share_prefix and max(1, opts.workers_per_trial) == 1, opts.rerun,
                          opts.rerun_stale)
    unique = [t for t in unique if t.key in reusable] + schedule(to_train, specs)
    trials, reused = _payloads(client, unique, specs, launched, reusable, groups, opts, tracking_uri, path)
    info = {"name": name, "path": str(path), "study": launched[0]["study"], "grid": launched[0]["grid"],
            "parent_run_id": launched[0]["parent_run_id"], "studies": launched, "tracking_uri": tracking_uri,
            "trials": len(trials), "trainings": {"without_dedup": sum(len(ss) for ss in specs), "unique": len(unique),
                                                   "reused_runs": reused, "to_train": len(trials), **prefix_counts(groups)},
            "options": asdict(opts)}
    path.mkdir(parents=True, exist_ok=True)
    (path / TRIALS_FILE).write_text(json.dumps([t.as_dict() for t in trials]))
    (path / LAUNCH_FILE).write_text(json.dumps(info, indent=2))
    if not opts.quiet:
        _announce(info, groups, stale, opts)
    if not trials:
        return finish_launch(client, info, {})
    with ray_runtime(opts.address, opts.quiet, checked.ray_env):
        return fit_launch(lambda: make_tuner(trials, path, opts, name), client, info)


def reuse_policy(opts: LaunchOptions) -> str:
    """What a trial may reuse when it finds its key finished as it starts (orchestration.lease.claim)."""
    return "none" if opts.rerun else "fresh" if opts.rerun_stale else "any"
