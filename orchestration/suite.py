"""Several studies in one launch: trial keys (dedup), shared prefixes, cost estimates and the schedule.

A trial's **key** is a hash of everything that changes its result: the resolved model,
criterion, train, data and test config (the seed is ``train.seed``), the content
fingerprints of the files the config names by path (:func:`tood.data.fingerprint.fingerprint_inputs`)
and :data:`KEY_VERSION`; :func:`trial_key` lists what goes in and what stays out. Study, row
label, run names and output folders never enter it. Two studies that need the same key train
it once; a later launch finds a finished run with the key in the tracking store and reuses it
(``--rerun`` trains again). Bump :data:`KEY_VERSION` when a code change alters what a config
trains or measures, so results of the old code are never reused.

A trial's **prefix key** (:func:`prefix_key`) hashes what decides its first epochs only, up to
the branch epoch :func:`prefix_epochs` (the end of TAL's ATSS warm-up). Trials with one prefix
key train those epochs once and branch from its checkpoint (:func:`share_prefixes`; the
runtime side is ``orchestration.prefix``). Bump :data:`PREFIX_VERSION` when a code change alters
what decides the first epochs beyond what :data:`KEY_VERSION` already covers.
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
# 1: model, data, optimizer, lr over the prefix, seed, the criterion phase of the prefix, eval epochs
PREFIX_VERSION = "1"


def _keyed_config(config: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` without what never changes a result (see :func:`trial_key`)."""
    cfg = copy.deepcopy(config)
    cfg.pop("name", None)
    train = cfg.get("train", {})
    train.pop("workers", None)
    if train.get("lr_schedule", "step") == "step":
        train.pop("lr_schedule", None)  # the default: keys of stores from before the field stay valid
    else:  # linear / cosine read neither
        train.pop("lr_steps", None)
        train.pop("lr_gamma", None)
    data, backbone = cfg.get("data", {}), cfg.get("model", {}).get("backbone", {})
    if data.get("synthetic") is not None:
        data.pop("root", None)
    if backbone.get("pretrain") is not None:
        backbone.pop("pretrained", None)
    criterion = cfg.get("criterion", {})
    if criterion.get("assigner") in SCHEME_FIELDS:
        for name in unused_criterion_fields(criterion["assigner"]):
            criterion.pop(name, None)
    return cfg


def _digest(payload: dict[str, Any], config: dict[str, Any], memo: dict[tuple[str, str], str] | None) -> str:
    inputs = fingerprint_inputs(config, memo)
    if inputs:  # absent, not empty: keys without path inputs keep their earlier value
        payload["inputs"] = inputs
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


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
    ``train.lr_schedule`` when it is the default ``step`` (keys from before the field stay valid),
    ``train.lr_steps`` and ``train.lr_gamma`` under a ``linear`` or ``cosine`` schedule (unread),
    the criterion fields the trial's assignment scheme does not read (FCOS's size ranges in an
    ATSS trial; :func:`tood.build.unused_criterion_fields`), and the *paths* of inputs that the
    config itself describes -- ``data.root`` when ``data.synthetic`` gives the generator recipe,
    ``model.backbone.pretrained`` when ``model.backbone.pretrain`` gives the pre-training recipe
    (the recipe is in the key, and a file made by another recipe is an error, never used).

    ``memo``: see :func:`tood.data.fingerprint.fingerprint_inputs` (one per batch of keys).
    """
    return _digest({"version": KEY_VERSION, "config": _keyed_config(config)}, config, memo)


def prefix_epochs(config: dict[str, Any]) -> int:
    """The branch epoch of a trial: ``criterion.warmup_epochs`` (the end of TAL's ATSS warm-up, one
    boundary for every trial of a launch: an ATSS row trains what a TAL row's warm-up trains), or 0
    (nothing to share) when that is not inside the schedule."""
    epochs = int(config["criterion"].get("warmup_epochs") or 0)
    return epochs if 0 < epochs < int(config["train"]["epochs"]) else 0


# The criterion of TAL's warm-up as tood.build.build_criterion makes it (ATSS, focal loss on hard
# targets normalised by the positives, centerness-weighted GIoU); tests/test_prefix.py compares
# the built phases of every pair of configs with one prefix key.
_WARMUP_PHASE = {"assigner": "atss", "cls_target": "hard", "box_weight": "centerness"}


def _prefix_criterion(criterion: dict[str, Any], epochs: int) -> dict[str, Any]:
    """What decides the losses over epochs [0, epochs): for TAL inside its warm-up the warm-up
    phase only (alpha, beta, topk, conflict do not act yet); an ATSS criterion with the warm-up's
    settings is that same phase; anything else as in the trial key."""
    c = criterion
    if c["assigner"] == "tal" and epochs <= c["warmup_epochs"]:
        return {**_WARMUP_PHASE, "atss_topk": c["atss_topk"], "reg_weight": c["reg_weight"]}
    if c["assigner"] == "atss":
        resolved = {"cls_target": "hard" if c["cls_target"] == "auto" else c["cls_target"],
                    "box_weight": "centerness" if c["box_weight"] == "auto" else c["box_weight"]}
        return {"assigner": "atss", **resolved, "atss_topk": c["atss_topk"], "reg_weight": c["reg_weight"]}
    return c


def prefix_key(config: dict[str, Any], epochs: int, memo: dict[tuple[str, str], str] | None = None) -> str | None:
    """Stable 16-hex-digit key of the first ``epochs`` epochs of a resolved trial config: two
    configs with one prefix key have bit-identical weights, optimizer, RNG state and epoch
    metrics after ``epochs`` epochs (tests/test_prefix.py). None when ``epochs`` is not inside
    the schedule (0 < epochs < train.epochs).

    In: :data:`PREFIX_VERSION`, :data:`KEY_VERSION`, ``epochs``; the model, the data and their
    content fingerprints as in :func:`trial_key`; the train section (optimizer, lr, batch,
    warm-up iterations, seed, device, amp, ...) with the lr steps that fall inside the prefix
    (``lr_steps`` < ``epochs``, and ``lr_gamma`` only if there is one); the epochs inside the
    prefix that evaluate (multiples of ``eval_every``: their AP is in the copied history), and
    then the test section; the criterion phase acting over the prefix (:func:`_prefix_criterion`:
    inside TAL's warm-up its ATSS phase with ``atss_topk`` and ``reg_weight``).

    Out: what :func:`trial_key` leaves out; ``train.epochs`` (kept with a ``linear`` or
    ``cosine`` ``lr_schedule``, whose lr at every iteration depends on it), lr steps at or after ``epochs``,
    ``eval_every`` itself (only the evaluating epochs count); the TAL-only fields ``alpha``,
    ``beta``, ``topk``, ``conflict`` and ``warmup_epochs`` inside the warm-up; the test section
    when no epoch inside the prefix evaluates (evaluation does not change the weights).
    """
    if not 0 < epochs < int(config["train"]["epochs"]):
        return None
    cfg = _keyed_config(config)
    train = cfg["train"]
    every = max(1, int(train.pop("eval_every", 1) or 1))
    if "lr_schedule" not in train:  # step: the lr over the prefix does not depend on the length
        train.pop("epochs")
    steps, gamma = [s for s in train.pop("lr_steps", []) if s < epochs], train.pop("lr_gamma", None)
    if steps:
        train.update(lr_steps=steps, lr_gamma=gamma)
    train["eval_epochs"] = [e for e in range(1, epochs + 1) if e % every == 0]
    if not train["eval_epochs"]:
        cfg.pop("test", None)
    cfg["criterion"] = _prefix_criterion(cfg["criterion"], epochs)
    return _digest({"version": PREFIX_VERSION, "key_version": KEY_VERSION, "epochs": epochs, "config": cfg}, config, memo)


# Seconds per (image x epoch) at 160 x 160 px relative to the parallel head; the T-head's
# tower is 6 convs over the parallel head's 2 x 4 but adds the TAP branches (measured on the
# proxy, 1 thread: 9.3 vs 7.7 s an epoch).
HEAD_COST = {"t_head": 1.2, "parallel": 1.0}


def estimated_cost(config: dict[str, Any], start: int = 0) -> float:
    """Relative training cost of a trial from epoch ``start`` on (arbitrary units; only ratios and
    the measured rate per unit matter): images x epochs x pixels x head factor, plus one
    evaluation pass per ``eval_every`` epochs over the validation images."""
    train, data = config["train"], config["data"]
    synth = data.get("synthetic") or {}
    n_train, n_val = synth.get("n_train", 1000), synth.get("n_val", 200)
    iters = train.get("max_iters_per_epoch")
    images = min(n_train, iters * train["batch_size"]) if iters else n_train
    pixels = data["img_scale"][0] * data["img_scale"][1] / 160**2
    head = HEAD_COST.get(config["model"]["head"]["type"], 1.0)
    every = max(1, train.get("eval_every", 1))
    evals = max(1, train["epochs"] // every) - start // every
    return pixels * head * (images * (train["epochs"] - start) + 0.5 * n_val * evals)


@dataclass
class UniqueTrial:
    """One key to train: its primary spec (the first study that needs it), every (study index,
    spec index) that reads its result, and its prefix key (None: nothing to share). ``role``
    (set by :func:`share_prefixes`): 'producer' trains the shared prefix, 'branch' starts from it,
    '' shares nothing; ``cost`` is what is left to train (a branch's excludes the prefix)."""

    key: str
    primary: tuple[int, int]
    users: list[tuple[int, int]] = field(default_factory=list)
    cost: float = 0.0
    prefix: str | None = None
    prefix_epochs: int = 0
    role: str = ""


def unique_trials(specs_per_study: list[list[Any]]) -> list[UniqueTrial]:
    """Group the trial specs of several studies by key, in study then spec order."""
    by_key: dict[str, UniqueTrial] = {}
    memo: dict[tuple[str, str], str] = {}  # each dataset fingerprinted once, not once per trial
    for si, specs in enumerate(specs_per_study):
        for ti, spec in enumerate(specs):
            key = trial_key(spec.config, memo)
            if key not in by_key:
                epochs = prefix_epochs(spec.config)
                by_key[key] = UniqueTrial(key, (si, ti), cost=estimated_cost(spec.config),
                                          prefix=prefix_key(spec.config, epochs, memo), prefix_epochs=epochs)
            by_key[key].users.append((si, ti))
    return list(by_key.values())


@dataclass
class PrefixGroup:
    """Trials (by trial key, in the order given) that share one prefix; ``found``: a checkpoint of
    the prefix that an earlier launch published (then every member branches)."""

    key: str
    epochs: int
    trials: list[str]
    found: str | None = None

    @property
    def branches(self) -> int:
        return len(self.trials) - (0 if self.found else 1)

    @property
    def saved_epochs(self) -> int:
        """Trial-epochs not trained thanks to the group."""
        return self.epochs * self.branches


def share_prefixes(trials: list[UniqueTrial], specs_per_study: list[list[Any]],
                   found: dict[str, str] | None = None, share: bool = True) -> dict[str, PrefixGroup]:
    """The shared prefixes among ``trials`` (those to train, in schedule order): a prefix key with
    two trials or more, or with a checkpoint in ``found`` (prefix key -> path); none without
    ``share``. Sets each trial's ``role`` (the first of a group without a found checkpoint
    produces it, the others branch) and ``cost`` (a branch's: its epochs after the prefix)."""
    found = found or {}
    members: dict[str, list[UniqueTrial]] = {}
    for t in trials:
        t.role, t.cost = "", estimated_cost(specs_per_study[t.primary[0]][t.primary[1]].config)
        if share and t.prefix is not None:
            members.setdefault(t.prefix, []).append(t)
    groups = {}
    for key, group in members.items():
        if len(group) < 2 and key not in found:
            continue
        groups[key] = PrefixGroup(key, group[0].prefix_epochs, [t.key for t in group], found.get(key))
        for i, t in enumerate(group):
            t.role = "producer" if i == 0 and key not in found else "branch"
            if t.role == "branch":
                si, ti = t.primary
                t.cost = estimated_cost(specs_per_study[si][ti].config, start=t.prefix_epochs)
    return groups


ROLE_ORDER = {"producer": 0, "": 1, "branch": 2}


def schedule(trials: list[UniqueTrial], specs_per_study: list[list[Any]]) -> list[UniqueTrial]:
    """Order for the scheduler: seed rounds first (every row's first seed before any row's
    second, so a partial suite already has one seed of everything); within a round the trials
    that produce a shared prefix first, the branches of prefixes last (they wait for them), and
    slowest first otherwise (long trials do not end up alone at the tail)."""

    def rank(t: UniqueTrial) -> tuple[int, int, float, str]:
        si, ti = t.primary
        spec = specs_per_study[si][ti]
        seeds = sorted({s.seed for s in specs_per_study[si] if s.row_index == spec.row_index})
        return seeds.index(spec.seed), ROLE_ORDER[t.role], -t.cost, t.key

    return sorted(trials, key=rank)
