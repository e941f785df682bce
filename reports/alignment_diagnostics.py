"""Why a study's PCC ranks its rows as it does: the measures of ``tood.eval.diagnostics`` on
the final checkpoints of a launch, per row and seed, with paired differences to the first row.

``tood-ablate diagnose experiments/table6_alignment.yaml [--storage runs/ray] [--set KEY=VALUE ...] --out
reports_out/alignment_diagnostics`` (or ``python -m reports.alignment_diagnostics``) finds each (row, seed) of the grid,
resolved with the profile and ``--set`` overrides it was trained with, by its trial key
among the Tune trials under ``--storage`` (every launch folder in it, so trials reused from an
earlier launch are found too), evaluates its last checkpoint on the validation split and writes
``<out>.json`` (every trial) and ``<out>.md`` (mean and 95% interval per row; paired
difference to the grid's first row). Trials without a checkpoint are listed as missing.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

import torch

from orchestration.folders import check_writable
from orchestration.grid import TrialSpec, expand_grid, parse_seeds
from orchestration.host import machine
from orchestration.suite import trial_key
from orchestration.tracking import git_commit
from reports.stats import LEVEL, difference, mean_interval
from tood.build import model_from_checkpoint
from tood.config import ConfigError, build_config, parse_override
from tood.data.loaders import build_loader
from tood.eval.alignment import InstancePredictions, instance_scores
from tood.eval.diagnostics import DiagnosticsAccumulator
from tood.evaluate import evaluate

# Columns of the Markdown table, in order (the JSON has every measure).
SHOWN = ("AP", "PCC@5", "PCC@10", "PCC@20", "PCC@50", "spearman@50", "concordance@50", "top1_iou", "regret",
         "n_good", "n_confident", "good_suppressed", "PCC@50_cls_only")


def checkpoints_by_key(storage: Path) -> dict[str, Path]:
    """Trial key -> the latest ``last.pt`` of a Tune trial under ``storage`` (any launch folder).

    A trial is found under the key it recorded and under the key its config has today
    (``trial_key`` of the recorded config): a trial launched before a key version change, and
    reused by the tracking store under its new key, is still found.
    """
    found: dict[str, Path] = {}
    for params in sorted(storage.glob("**/trial_*/params.json")):
        try:
            trial = json.loads(params.read_text())["trial"]
            keys = {trial["key"]}
            if isinstance(trial.get("config"), dict):
                keys.add(trial_key(trial["config"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue  # not a tood-ablate trial
        ckpts = sorted(params.parent.glob("checkpoint_*/last.pt"))
        if ckpts:
            found.update(dict.fromkeys(keys, ckpts[-1]))
    return found


def diagnose(spec: TrialSpec, checkpoint: Path, threads: int, eval_overrides: dict[str, Any] | None = None) -> dict[str, float]:
    """The diagnostics and the evaluation metrics (AP, PCC, ...) of one trial's checkpoint on
    the validation split of its config, with ``eval_overrides`` (e.g. another data.root)
    applied; ``PCC@k_cls_only``: PCC with the classification score alone where the score
    has a centerness factor."""
    torch.set_num_threads(threads)
    cfg = build_config(spec.config, f"{spec.grid_file}: {spec.name}", overrides=eval_overrides)
    try:
        model, device, _ = model_from_checkpoint(cfg, checkpoint)
    except (ValueError, OSError) as e:  # unreadable or missing file: skip the trial, say which file
        raise ConfigError(str(e)) from None
    acc, acc_cls = DiagnosticsAccumulator(), DiagnosticsAccumulator()

    def measure(batch, outputs: dict, inst: InstancePredictions) -> None:
        acc.update(inst)
        if outputs.get("centerness") is not None:  # same boxes and attribution, classification score alone
            cls_only = instance_scores(outputs["cls_logits"].float().sigmoid(), batch.gt_labels, batch.gt_mask)
            acc_cls.update(inst._replace(scores=cls_only))

    metrics = evaluate(model, build_loader(cfg, train=False), cfg, device, progress=False, on_batch=measure)
    result = acc.result()
    cls_only = acc_cls.result() if acc_cls.sums else result  # no centerness: the same score
    result.update({f"{k}_cls_only": v for k, v in cls_only.items() if k.startswith("PCC@")})
    return {**{k: float(v) for k, v in metrics.items()}, **result}


def markdown(trials: list[dict], measures: tuple[str, ...] = SHOWN) -> str:
    """Per row: mean [95% interval] over seeds; then each row minus the first row, paired per seed."""
    rows: dict[str, dict[int, dict[str, float]]] = {}
    for t in trials:
        if t.get("measures"):
            rows.setdefault(t["row"], {})[t["seed"]] = t["measures"]
    fmt = lambda v: "" if math.isnan(v) else f"{v:.3f}"  # noqa: E731
    head = "| row | seeds | " + " | ".join(measures) + " |\n|---|---|" + "---|" * len(measures) + "\n"
    lines = ["## Per row: mean [95% t-interval over seeds]\n", head]
    for label, by_seed in rows.items():
        cells = []
        for m in measures:
            mean, lo, hi = mean_interval([v[m] for v in by_seed.values() if not math.isnan(v.get(m, math.nan))] or [math.nan])
            cells.append(fmt(mean) + ("" if math.isnan(lo) else f" [{fmt(lo)}, {fmt(hi)}]"))
        lines.append(f"| {label} | {len(by_seed)} | " + " | ".join(cells) + " |\n")
    if len(rows) > 1:
        ref_label, ref = next(iter(rows.items()))
        lines += [f"\n## Minus {ref_label}, paired per seed: mean [{LEVEL:.0%} interval]\n", head]
        for label, by_seed in list(rows.items())[1:]:
            cells = []
            for m in measures:
                d = difference({s: v.get(m, math.nan) for s, v in by_seed.items()}, {s: v.get(m, math.nan) for s, v in ref.items()})
                cells.append(f"{d.mean:+.3f}" + ("" if math.isnan(d.lo) else f" [{d.lo:+.3f}, {d.hi:+.3f}]"))
            lines.append(f"| {label} | {len(by_seed)} | " + " | ".join(cells) + " |\n")
    return "".join(lines)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tood-ablate diagnose", description=__doc__.splitlines()[0])
    p.add_argument("grid", help="grid file whose rows to diagnose, e.g. experiments/table6_alignment.yaml")
    p.add_argument("--storage", default="runs/ray", help="Tune storage folder of the launches (as `tood-ablate run --storage-path`; default runs/ray)")
    p.add_argument("--profile", default="proxy", help="the profile the trials were trained with (default proxy)")
    p.add_argument("--seeds", help="comma-separated seeds replacing the grid's")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="the overrides the trials were trained with, as given to `tood-ablate run --set` (a trial is "
                        "found by the key of the config it trained), e.g. --set train.epochs=32")
    p.add_argument("--threads", type=int, default=1, help="torch threads for the evaluation")
    p.add_argument("--eval-set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the evaluation only (trials are still found by their trained config), "
                        "e.g. data.root=other/split --eval-set data.synthetic=null")
    p.add_argument("--out", required=True, help="output path without suffix; writes <out>.json and <out>.md")
    return p


class _Usage(Exception):
    """A bad argument, already worded for the user (exit 2)."""


def _inputs(args: argparse.Namespace) -> tuple[Path, list[TrialSpec], dict[str, Any], dict[str, Path], Path]:
    """(storage, the grid's trial specs, the evaluation overrides, checkpoint by trial key, out path),
    every argument checked before any checkpoint is read."""
    storage = Path(args.storage)
    if not storage.is_dir():
        raise _Usage(f"--storage {storage}: not a folder (expected a Tune storage folder with trial_*/params.json)")
    try:
        seeds = parse_seeds(args.seeds)
        specs = expand_grid(args.grid, profile=args.profile, seeds=seeds, overrides=dict(parse_override(o) for o in args.overrides))
        eval_overrides = dict(parse_override(o) for o in args.eval_set)
    except ConfigError as e:
        raise _Usage(str(e)) from None
    found = checkpoints_by_key(storage)
    if not {trial_key(spec.config) for spec in specs} & set(found):
        raise _Usage(f"--storage {storage}: no checkpoint of any of the {len(specs)} trials of {args.grid} "
                     f"(expected the storage folder of a launch that ran them, with its trial_*/checkpoint_*/last.pt; "
                     f"trials trained with `run --set` are found with the same --set)")
    out = Path(args.out)
    try:
        check_writable(out.parent, "--out")
    except ConfigError as e:
        raise _Usage(str(e)) from None
    return storage, specs, eval_overrides, found, out


def _diagnose_all(specs: list[TrialSpec], found: dict[str, Path], storage: Path, threads: int,
                  eval_overrides: dict[str, Any]) -> list[dict]:
    """One entry per trial: its measures, the error that skipped it, or no checkpoint."""
    trials = []
    for spec in specs:
        key = trial_key(spec.config)
        entry = {"row": spec.row_label, "seed": spec.seed, "trial_key": key, "checkpoint": str(found.get(key, ""))}
        if key in found:
            try:
                entry["measures"] = diagnose(spec, found[key], threads, eval_overrides)
                print(f"{spec.row_label}, seed {spec.seed}: AP {entry['measures']['AP']:.1f}, PCC@50 {entry['measures']['PCC@50']:.3f}", flush=True)
            except ConfigError as e:  # e.g. a checkpoint that does not fit the grid's model
                entry["error"] = str(e)
                print(f"{spec.row_label}, seed {spec.seed}: skipped: {e}", file=sys.stderr, flush=True)
        else:
            print(f"{spec.row_label}, seed {spec.seed}: no checkpoint under {storage} (trial key {key})", flush=True)
        trials.append(entry)
    return trials


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        storage, specs, eval_overrides, found, out = _inputs(args)
    except _Usage as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    trials = _diagnose_all(specs, found, storage, args.threads, eval_overrides)
    m = machine()
    header = {"command": "tood-ablate diagnose " + " ".join(argv if argv is not None else sys.argv[1:]),
              "git_commit": git_commit(), "machine": f"{m.cpu}, {m.cores} logical cores, GPU {m.gpu}",
              "grid": str(args.grid), "storage": str(storage), "eval_overrides": eval_overrides}
    out.with_suffix(".json").write_text(json.dumps({**header, "trials": trials}, indent=1, allow_nan=True))
    intro = (f"# Alignment diagnostics: {Path(args.grid).stem}\n\n" + "".join(f"- {k}: `{v}`\n" for k, v in header.items())
             + "\nMeasures: see `tood/eval/diagnostics.py`. Missing trials: "
             + str(sum("measures" not in t for t in trials)) + "\n\n")
    out.with_suffix(".md").write_text(intro + markdown(trials))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
