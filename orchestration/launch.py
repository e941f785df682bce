"""``tood-ablate``: run, resume and inspect ablation grids on Ray Tune; render reports.

Python API: :func:`run_suite`, :func:`resume_launch`, :func:`launch_status`; the CLI
(:mod:`tood_ablate.cli`) is a thin layer over them. A launch lives in ``<storage>/<name>/``: Ray
Tune's experiment state and checkpoints, plus ``tood_launch.json`` (what ``resume`` and
``status`` need: MLflow URI, parent run id, options) and ``tood_trials.json``.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from orchestration.payload import TrialPayload
from orchestration.preflight import storage_root
from orchestration.tuner import make_tuner, ray_runtime, restore_tuner, set_log_level
from tood.config import ConfigError

LAUNCH_FILE, TRIALS_FILE = "tood_launch.json", "tood_trials.json"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colour codes in Ray's error texts
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


@dataclass
class LaunchResult:
    name: str
    path: Path  # <storage>/<name>
    study: str
    parent_run_id: str
    tracking_uri: str
    counts: dict[str, int]  # child runs by MLflow status

    @property
    def ok(self) -> bool:
        return set(self.counts) == {"FINISHED"}


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


def _fit(build: Callable[[], Any], client, info: dict) -> LaunchResult:
    """Run the Tuner, then reconcile the MLflow runs (also when Tune itself fails)."""
    from orchestration.progress import MODE_ENV
    from orchestration.tracking import reconcile

    before = os.environ.get(MODE_ENV)
    os.environ[MODE_ENV] = "off" if info["options"]["quiet"] else before or "auto"
    try:
        results = build().fit()
    except Exception:
        for parent in _parents(info):
            reconcile(client, parent, {})
        raise
    finally:
        os.environ.pop(MODE_ENV) if before is None else os.environ.__setitem__(MODE_ENV, before)
    errors = {}
    for r in results:
        if r.error is not None:
            for rid in TrialPayload.of(r.config["trial"]).run_ids:
                errors[rid] = ANSI.sub("", f"{type(r.error).__name__}: {r.error}")
    return _finish(client, info, errors)


def _studies(info: dict) -> list[dict]:
    """The studies of a launch record (``study``, ``parent_run_id``, ...); a record written
    before suite launches has one, at its top level."""
    return info.get("studies") or [{"study": info["study"], "parent_run_id": info["parent_run_id"]}]


def _parents(info: dict) -> list[str]:
    return [s["parent_run_id"] for s in _studies(info)]


def _finish(client, info: dict, errors: dict[str, str]) -> LaunchResult:
    """Reconcile every study's runs; the counts are summed over the studies. First, the child
    runs that read another study's trial get its result if it finished (a trial process
    normally copies it; this covers a driver killed in between)."""
    from orchestration.tracking import copy_result, reconcile, retry

    trials_file = Path(info["path"]) / TRIALS_FILE
    for trial in map(TrialPayload.of, json.loads(trials_file.read_text()) if trials_file.exists() else []):
        if trial.alias_run_ids and retry(client.get_run, trial.run_id).info.status == "FINISHED":
            for alias in trial.alias_run_ids:
                copy_result(client, trial.run_id, alias)
    counts: dict[str, int] = {}
    for parent in _parents(info):
        for status, n in reconcile(client, parent, errors).items():
            counts[status] = counts.get(status, 0) + n
    result = LaunchResult(info["name"], Path(info["path"]), info["study"], info["parent_run_id"], info["tracking_uri"], counts)
    if not info["options"]["quiet"]:
        print(f"tood-ablate: {info['name']}: trials by status {counts}", file=sys.stderr)
        if counts.get("KILLED"):
            print(f"tood-ablate: interrupted; continue with: tood-ablate resume {info['name']}"
                  f" --storage-path {Path(info['path']).parent}", file=sys.stderr)
    return result


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


def run_suite(grid_paths: list[str | Path], opts: LaunchOptions | None = None) -> LaunchResult:
    """Run several studies in one Ray launch (see ``orchestration.suite``): every study keeps
    its MLflow experiment and parent run; a trial key that several studies need trains once
    and fills each study's child run; a key finished in an earlier launch of the store is
    reused (not with ``opts.rerun``)."""
    from mlflow.tracking import MlflowClient

    from orchestration import preflight
    from orchestration.grid import expand, load_grid, resolved_grid
    from orchestration.prefix import plan_sharing, prefix_counts, trial_prefix
    from orchestration.provenance import stale_keys
    from orchestration.suite import schedule, unique_trials
    from orchestration.tracking import copy_result, create_launch_runs, finished_by_key, prepare_store
    from orchestration.trainable import fault_plan

    opts = opts or LaunchOptions()
    check_options(opts)
    set_log_level(opts.quiet)
    grids = [load_grid(p) for p in grid_paths]
    studies = [g.study for g in grids]
    for g in grids:
        if studies.count(g.study) > 1:
            raise ConfigError(f"{g.path}: study: '{g.study}' is the study of another grid of this launch (expected one grid per study)")
    specs = [_only_row_seeds(expand(g, opts.profile, _seeds_of(g, opts), opts.overrides), opts.row_seeds) for g in grids]
    checked = preflight.check_before_start(opts, [s for ss in specs for s in ss])
    if opts.tracking_uri:  # the launch record keeps the URI that works from any folder
        opts = replace(opts, tracking_uri=checked.tracking_uri)
    unique = schedule(unique_trials(specs), specs)
    suite = len(grids) > 1
    name = opts.name or f"{'suite' if suite else grids[0].study}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = storage_root(opts.storage_path) / name
    if (path / LAUNCH_FILE).exists():
        raise ConfigError(f"{path}: a launch named '{name}' exists (expected a new --name, or `tood-ablate resume {name}`)")
    _prepare_data([specs[si][ti] for si, ti in (t.primary for t in unique)])
    tracking_uri = checked.tracking_uri
    prepare_store(tracking_uri)  # a fresh sqlite store: created by one launch at a time
    client = MlflowClient(tracking_uri)
    launched = []
    for g, ss in zip(grids, specs):
        seeds = _seeds_of(g, opts) or g.seeds
        parent_id, run_ids = create_launch_runs(client, g.study, g.table, opts.profile, str(g.path),
                                                resolved_grid(g, seeds, opts.overrides), ss, name)
        launched.append({"study": g.study, "table": g.table, "grid": str(Path(g.path).resolve()),
                         "parent_run_id": parent_id, "run_ids": run_ids})
    reusable = {} if opts.rerun else finished_by_key(client, {t.key for t in unique})
    stale = stale_keys(reusable)
    if opts.rerun_stale:
        reusable = {k: run for k, run in reusable.items() if k not in stale}
    workers = max(1, opts.workers_per_trial)
    # shared prefixes: among the trials to train, one-worker trials only (orchestration.prefix)
    to_train = [t for t in unique if t.key not in reusable]
    groups = plan_sharing(client, to_train, specs, opts.share_prefix and workers == 1, opts.rerun)
    unique = [t for t in unique if t.key in reusable] + schedule(to_train, specs)
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
    needed = sum(len(ss) for ss in specs)
    info = {"name": name, "path": str(path), "study": launched[0]["study"], "grid": launched[0]["grid"],
            "parent_run_id": launched[0]["parent_run_id"], "studies": launched, "tracking_uri": tracking_uri,
            "trials": len(trials), "trainings": {"without_dedup": needed, "unique": len(unique), "reused_runs": reused,
                                                   "to_train": len(trials), **prefix_counts(groups)}, "options": asdict(opts)}
    path.mkdir(parents=True, exist_ok=True)
    (path / TRIALS_FILE).write_text(json.dumps([t.as_dict() for t in trials]))
    (path / LAUNCH_FILE).write_text(json.dumps(info, indent=2))
    if not opts.quiet:
        print(f"tood-ablate: {', '.join(studies)} as '{name}' (storage {path}); MLflow {tracking_uri}\n"
              f"tood-ablate: {needed} child runs, {len(unique)} distinct trials, {len(unique) - len(trials)} reused from "
              f"earlier runs of the store (--rerun trains them again), {len(trials)} to train", file=sys.stderr)
        if groups:
            print(f"tood-ablate: {sum(g.branches for g in groups.values())} of them branch from {len(groups)} shared "
                  f"prefixes: {sum(g.saved_epochs for g in groups.values())} trial-epochs not trained "
                  "(--no-share-prefix trains every trial in full)", file=sys.stderr)
        if stale:
            print(f"tood-ablate: {len(stale)} distinct trial(s) {'retrained' if opts.rerun_stale else 'reused'}: their "
                  "finished run was trained by other code than this checkout's"
                  + ("" if opts.rerun_stale else " (marked in `status` and the report; --rerun-stale retrains them)"),
                  file=sys.stderr)
    if not trials:
        return _finish(client, info, {})
    with ray_runtime(opts.address, opts.quiet, checked.ray_env):
        return _fit(lambda: make_tuner(trials, path, opts, name), client, info)


def load_launch(name: str, storage_path: str | None = None) -> dict:
    path = storage_root(storage_path) / name
    if not (path / LAUNCH_FILE).is_file():
        raise ConfigError(f"{path / LAUNCH_FILE}: no launch named '{name}' (expected one of the folders of {path.parent})")
    return json.loads((path / LAUNCH_FILE).read_text())


def resume_launch(name: str, storage_path: str | None = None, address: str | None = None, quiet: bool | None = None) -> LaunchResult:
    """Finish an interrupted launch: unfinished and errored trials continue from their last
    checkpoint in their own MLflow runs; finished trials are not re-run."""
    from mlflow.tracking import MlflowClient

    from orchestration import preflight
    from orchestration.tracking import reopen_parent

    info = load_launch(name, storage_path)
    info["tracking_uri"] = preflight.check_tracking_uri(info["tracking_uri"], f"launch '{name}': tracking URI")
    opts = LaunchOptions(**info["options"])
    ray_env = preflight.check_ray_address(address or opts.address)
    if quiet is not None:
        opts.quiet = info["options"]["quiet"] = quiet
    path = Path(info["path"])
    set_log_level(opts.quiet)
    client = MlflowClient(info["tracking_uri"])
    for parent in _parents(info):
        reopen_parent(client, parent)
    trials = [TrialPayload.of(t) for t in json.loads((path / TRIALS_FILE).read_text())]
    if not opts.rerun:
        reused = reuse_finished_elsewhere(client, trials, fresh_only=opts.rerun_stale)
        if reused and not opts.quiet:
            print(f"tood-ablate: {name}: {reused} trial(s) not started yet were finished meanwhile by another launch "
                  "of the store; their results are reused (--rerun at launch trains them again)", file=sys.stderr)
    if not trials:
        return _finish(client, info, {})
    with ray_runtime(address or opts.address, opts.quiet, ray_env):
        return _fit(lambda: restore_tuner(path, trials, opts, name), client, info)


def reuse_policy(opts: LaunchOptions) -> str:
    """What a trial may reuse when it finds its key finished as it starts (orchestration.lease.claim)."""
    return "none" if opts.rerun else "fresh" if opts.rerun_stale else "any"


def reuse_finished_elsewhere(client, trials: list[TrialPayload], fresh_only: bool = False) -> int:
    """Fill the runs of each trial of an interrupted launch that has not started (no attempt)
    from a run of the same key that another launch of the store finished since, as a new
    launch would (``fresh_only``: not one trained by other code, as with ``--rerun-stale``); the
    trial then reports that result and trains nothing. A trial that started keeps its own run
    and continues from its checkpoint: its history is its own. Returns the number of trials filled."""
    from orchestration.tracking import ATTEMPTS_TAG, copy_result, finished_by_key, retry

    unstarted = {}
    for t in trials:
        run = retry(client.get_run, t.run_id)
        if run.info.status != "FINISHED" and run.data.tags.get(ATTEMPTS_TAG, "0") == "0":
            unstarted[t.key] = t
    from orchestration.provenance import stale_keys

    filled = 0
    finished = finished_by_key(client, set(unstarted))
    for key in stale_keys(finished) if fresh_only else ():
        finished.pop(key)
    for key, source in finished.items():
        for rid in unstarted[key].run_ids:
            copy_result(client, source.info.run_id, rid)
        filled += 1
    return filled


def launch_status(name: str, storage_path: str | None = None) -> tuple[dict, list[dict]]:
    """The launch record and one dict per trial run: status, name, attempts, epoch, AP, error,
    reused_from, stale (why the result may not be what the launch's code gives: a result reused
    across a code change, :func:`orchestration.provenance.staleness`; '' when none)."""
    from mlflow.tracking import MlflowClient

    from orchestration import preflight
    from orchestration.provenance import CodeFingerprint, staleness
    from orchestration.tracking import ATTEMPTS_TAG, ERROR_TAG, REUSED_TAG, child_runs, logged_steps

    info = load_launch(name, storage_path)
    info["tracking_uri"] = preflight.check_tracking_uri(info["tracking_uri"], f"launch '{name}': tracking URI")
    client = MlflowClient(info["tracking_uri"])
    parents = {p: client.get_run(p) for p in _parents(info)}
    statuses = [run.info.status for run in parents.values()]
    info["parent_status"] = statuses[0] if len(set(statuses)) == 1 else ", ".join(statuses)
    rows = []
    for study in _studies(info):
        launch_code = CodeFingerprint.from_tags(parents[study["parent_run_id"]].data.tags)
        for run in sorted(child_runs(client, study["parent_run_id"]), key=lambda r: r.info.run_name):
            metrics, tags = run.data.metrics, run.data.tags
            rows.append({"status": run.info.status, "study": study["study"], "name": run.info.run_name,
                         "attempts": tags.get(ATTEMPTS_TAG, "0"), "epoch": max(logged_steps(client, run.info.run_id), default=None),
                         "AP": metrics.get("AP", metrics.get("epoch_AP")), "error": tags.get(ERROR_TAG, ""),
                         "reused_from": tags.get(REUSED_TAG, ""), "stale": staleness(tags, launch_code) or ""})
    return info, rows
