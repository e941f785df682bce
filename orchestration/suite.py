"""Several studies in one launch: trial keys (dedup), cost estimates and the schedule.

A trial's **key** is a hash of everything that changes its result: the resolved model,
criterion, train, data and test config (the seed is ``train.seed``), the content
fingerprints of the files the config names by path (:func:`tood.data.fingerprint.fingerprint_inputs`)
and :data:`KEY_VERSION`; :func:`trial_key` lists what goes in and what stays out. Study, row
label, run names and output folders never enter it. Two studies that need the same key train
it once; a later launch finds a finished run with the key in the tracking store and reuses it
(``--rerun`` trains again). Bump :data:`KEY_VERSION` when a code change alters what a config
trains or measures, so results of the old code are never reused.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from tood.build import SCHEME_FIELDS, unused_criterion_fields
from tood.data.fingerprint import fingerprint_inputs

# 2: per-instance PCC, boxes clipped before NMS, no ReLU before P7; 3: criterion fields the
# trial's assignment scheme does not read are left out (tood.build.unused_criterion_fields)
KEY_VERSION = "3"


def trial_key(config: dict[str, Any], memo: dict[tuple[str, str], str] | None = None) -> str:
    """Stable 16-hex-digit key of a resolved trial config (a plain dict of ``tood.config.Config``).

    In: the config (paths absolute, as :func:`orchestration.grid.expand` resolves them), the
    seed ``train.seed``, :data:`KEY_VERSION`, and -- only where the config names an input by a
    path it does not describe -- the content fingerprints of
    :func:`tood.data.fingerprint.fingerprint_inputs`: with ``data.synthetic`` null the train and
    val annotation files (full content hash) and image folders (file list with sizes and
    modification times: an image's bytes are not read), and ``model.backbone.pretrained`` when
    ``model.backbone.pretrain`` is null (the weights' content hash). With no such input the
    hashed text is exactly what it was before fingerprints existed, so synthetic-data keys of
    earlier stores stay valid. The fingerprints are taken when the key is computed, i.e. when the
    launch starts; a file changed while the launch runs is not seen.

    Out: the config's ``name`` and the data-loader ``train.workers`` (neither changes a number),
    the criterion fields the trial's assignment scheme does not read (FCOS's size ranges in an
    ATSS trial; :func:`tood.build.unused_criterion_fields`), and the *paths* of inputs that the
    config itself describes -- ``data.root`` when ``data.synthetic`` gives the generator recipe,
    ``model.backbone.pretrained`` when ``model.backbone.pretrain`` gives the pre-training recipe
    (the recipe is in the key, and a file made by another recipe is an error, never used).

    ``memo``: see :func:`tood.data.fingerprint.fingerprint_inputs` (one per batch of keys).
    """
    cfg = copy.deepcopy(config)
    cfg.pop("name", None)
    cfg.get("train", {}).pop("workers", None)
    data, backbone = cfg.get("data", {}), cfg.get("model", {}).get("backbone", {})
    if data.get("synthetic") is not None:
        data.pop("root", None)
    if backbone.get("pretrain") is not None:
        backbone.pop("pretrained", None)
    criterion = cfg.get("criterion", {})
    if criterion.get("assigner") in SCHEME_FIELDS:
        for name in unused_criterion_fields(criterion["assigner"]):
            criterion.pop(name, None)
    payload: dict[str, Any] = {"version": KEY_VERSION, "config": cfg}
    inputs = fingerprint_inputs(config, memo)
    if inputs:  # absent, not empty: keys without path inputs keep their earlier value
        payload["inputs"] = inputs
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Seconds per (image x epoch) at 160 x 160 px relative to the parallel head; the T-head's
# tower is 6 convs over the parallel head's 2 x 4 but adds the TAP branches (measured on the
# proxy, 1 thread: 9.3 vs 7.7 s an epoch).
HEAD_COST = {"t_head": 1.2, "parallel": 1.0}


def estimated_cost(config: dict[str, Any]) -> float:
    """Relative training cost of a trial (arbitrary units; only ratios and the measured rate
    per unit matter): images x epochs x pixels x head factor, plus one evaluation pass per
    ``eval_every`` epochs over the validation images."""
    train, data = config["train"], config["data"]
    synth = data.get("synthetic") or {}
    n_train, n_val = synth.get("n_train", 1000), synth.get("n_val", 200)
    iters = train.get("max_iters_per_epoch")
    images = min(n_train, iters * train["batch_size"]) if iters else n_train
    pixels = data["img_scale"][0] * data["img_scale"][1] / 160**2
    head = HEAD_COST.get(config["model"]["head"]["type"], 1.0)
    evals = max(1, train["epochs"] // max(1, train.get("eval_every", 1)))
    return pixels * head * (images * train["epochs"] + 0.5 * n_val * evals)


@dataclass
class UniqueTrial:
    """One key to train: its primary spec (the first study that needs it) and every
    (study index, spec index) that reads its result."""

    key: str
    primary: tuple[int, int]
    users: list[tuple[int, int]] = field(default_factory=list)
    cost: float = 0.0


def unique_trials(specs_per_study: list[list[Any]]) -> list[UniqueTrial]:
    """Group the trial specs of several studies by key, in study then spec order."""
    by_key: dict[str, UniqueTrial] = {}
    memo: dict[tuple[str, str], str] = {}  # each dataset fingerprinted once, not once per trial
    for si, specs in enumerate(specs_per_study):
        for ti, spec in enumerate(specs):
            key = trial_key(spec.config, memo)
            if key not in by_key:
                by_key[key] = UniqueTrial(key, (si, ti), cost=estimated_cost(spec.config))
            by_key[key].users.append((si, ti))
    return list(by_key.values())


def schedule(trials: list[UniqueTrial], specs_per_study: list[list[Any]]) -> list[UniqueTrial]:
    """Order for the scheduler: seed rounds first (every row's first seed before any row's
    second, so a partial suite already has one seed of everything), slowest first within a
    round (long trials do not end up alone at the tail)."""

    def rank(t: UniqueTrial) -> tuple[int, float, str]:
        si, ti = t.primary
        spec = specs_per_study[si][ti]
        seeds = sorted({s.seed for s in specs_per_study[si] if s.row_index == spec.row_index})
        return seeds.index(spec.seed), -t.cost, t.key

    return sorted(trials, key=rank)
