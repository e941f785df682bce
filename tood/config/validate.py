"""Ranges and cross-field rules of a :class:`tood.config.Config`, checked when it is built.

``tood.config.build_config`` ends with :func:`validate_config`, so the CLI, a grid's
expansion (before Ray starts) and every trial (which rebuilds its config) apply the same
rules: a value that would make a trial fail is rejected before anything runs. The rules
mirror what the constructors check (``TaskAlignedAssigner``, ``TOODHead``, ``Knobs``, ...)
and add the ranges training needs (a positive lr, batch sizes >= 1, thresholds in [0, 1]).
"""
from __future__ import annotations

import math
import re
from typing import Any, Callable

from tood.config.schema import Config, ConfigError

Rule = tuple[str, Callable[[Any], bool], str]  # (dotted key, value -> ok, what is expected)

_DEPTHS = (18, 34, 50, 101, 152)
_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ge(lo: float) -> Callable[[Any], bool]:
    return lambda v: _num(v) and v >= lo


def _gt(lo: float) -> Callable[[Any], bool]:
    return lambda v: _num(v) and v > lo


def _within(lo: float, hi: float) -> Callable[[Any], bool]:
    return lambda v: _num(v) and lo <= v <= hi


def _open01(v: Any) -> bool:
    return _num(v) and 0 < v < 1


def _optional(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or ok(v)


def _all(ok: Callable[[Any], bool], n: int | None = None) -> Callable[[Any], bool]:
    """Every item ok, and (with ``n``) exactly ``n`` items; at least one item."""
    return lambda v: len(v) > 0 and (n is None or len(v) == n) and all(ok(x) for x in v)


def _range2(lo: float) -> Callable[[Any], bool]:
    """A [min, max] pair with lo <= min <= max."""
    return lambda v: len(v) == 2 and _num(v[0]) and _num(v[1]) and lo <= v[0] <= v[1]


RULES: tuple[Rule, ...] = (
    ("model.num_classes", _ge(1), "an integer >= 1"),
    ("model.backbone.depth", lambda v: v in _DEPTHS, f"one of: {', '.join(map(str, _DEPTHS))}"),
    ("model.backbone.base_width", _ge(1), "an integer >= 1"),
    ("model.backbone.frozen_stages", _within(-1, 4), "an integer in -1..4"),
    ("model.neck_channels", _ge(1), "an integer >= 1"),
    ("model.head.feat_channels", _ge(1), "an integer >= 1"),
    ("model.head.stacked_convs", _ge(1), "an integer >= 1"),
    ("model.head.alignment_map_prior", _open01, "a number in (0, 1)"),
    ("model.head.gn_groups", _ge(1), "an integer >= 1"),
    ("model.strides", _all(_ge(1)), "a non-empty list of integers >= 1"),
    ("criterion.warmup_epochs", _ge(0), "an integer >= 0"),
    ("criterion.topk", _ge(1), "an integer >= 1"),
    ("criterion.alpha", _ge(0), "a number >= 0"),
    ("criterion.beta", _gt(0), "a number > 0"),
    ("criterion.atss_topk", _ge(1), "an integer >= 1"),
    ("criterion.reg_weight", _ge(0), "a number >= 0"),
    ("criterion.center_radius", _gt(0), "a number > 0"),
    ("criterion.center_scale_factor", _gt(0), "a number > 0"),
    ("criterion.fovea_sigma", lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    ("train.epochs", _ge(1), "an integer >= 1"),
    ("train.batch_size", _ge(1), "an integer >= 1"),
    ("train.lr", _gt(0), "a number > 0"),
    ("train.base_batch_size", _ge(1), "an integer >= 1"),
    ("train.momentum", lambda v: _num(v) and 0 <= v < 1, "a number in [0, 1)"),
    ("train.weight_decay", _ge(0), "a number >= 0"),
    ("train.warmup_iters", _ge(0), "an integer >= 0"),
    ("train.warmup_ratio", _within(0, 1), "a number in [0, 1]"),
    ("train.lr_steps", lambda v: all(_ge(0)(x) for x in v), "a list of epochs >= 0"),
    ("train.lr_gamma", _gt(0), "a number > 0"),
    ("train.grad_clip", _optional(_gt(0)), "null or a number > 0"),
    ("train.seed", _ge(0), "an integer >= 0"),
    ("train.workers", _ge(0), "an integer >= 0"),
    ("train.device", lambda v: _DEVICE.fullmatch(v) is not None, "auto, cpu, mps, cuda or cuda:<index>"),
    ("train.eval_every", _ge(1), "an integer >= 1"),
    ("train.max_iters_per_epoch", _optional(_ge(1)), "null or an integer >= 1"),
    ("data.img_scale", _all(_ge(1), 2), "[long side, short side] of integers >= 1"),
    ("data.multiscale", _optional(_all(_ge(1))), "null or a non-empty list of short sides >= 1"),
    ("data.flip_prob", _within(0, 1), "a number in [0, 1]"),
    ("test.nms_pre", _ge(1), "an integer >= 1"),
    ("test.score_thr", _within(0, 1), "a number in [0, 1]"),
    ("test.nms_iou", _within(0, 1), "a number in [0, 1]"),
    ("test.max_per_img", _ge(1), "an integer >= 1"),
    ("test.batch_size", _ge(1), "an integer >= 1"),
)

SYNTH_RULES: tuple[Rule, ...] = (
    ("data.synthetic.n_train", _ge(1), "an integer >= 1"),
    ("data.synthetic.n_val", _ge(1), "an integer >= 1"),
    ("data.synthetic.seed", _ge(0), "an integer >= 0"),
    ("data.synthetic.image_size", _ge(8), "an integer >= 8 (px)"),
    ("data.synthetic.objects", _optional(_range2(0)), "null or [min, max] with 0 <= min <= max"),
    ("data.synthetic.size", _optional(_range2(0)), "null or [min, max] px with 0 <= min <= max"),
    ("data.synthetic.aspect_max", _optional(_ge(1)), "null or a number >= 1"),
    ("data.synthetic.noise", _optional(_ge(0)), "null or a number >= 0"),
    ("data.synthetic.clutter", _optional(_ge(0)), "null or an integer >= 0"),
    ("data.synthetic.distractors", _optional(_ge(0)), "null or an integer >= 0"),
    ("data.synthetic.cue_size", _optional(_open01), "null or a number in (0, 1)"),
    ("data.synthetic.crowd_prob", _optional(_within(0, 1)), "null or a number in [0, 1]"),
)

PRETRAIN_RULES: tuple[Rule, ...] = (
    ("model.backbone.pretrain.n_images", _ge(1), "an integer >= 1"),
    ("model.backbone.pretrain.epochs", _ge(1), "an integer >= 1"),
    ("model.backbone.pretrain.crop_size", _ge(8), "an integer >= 8 (px)"),
    ("model.backbone.pretrain.batch_size", _ge(1), "an integer >= 1"),
    ("model.backbone.pretrain.lr", _gt(0), "a number > 0"),
)


def _get(cfg: Config, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _fail(where: str, key: str, value: Any, expected: str) -> ConfigError:
    sep = " " if where.endswith(":") else ": "
    return ConfigError(f"{where}{sep}{key}: got {value!r} (expected {expected})")


def validate_config(cfg: Config, where: str) -> Config:
    """Raise :class:`ConfigError` naming ``where``, the key, the value and what was expected
    for the first value out of range; return ``cfg`` unchanged otherwise."""
    rules = RULES + (SYNTH_RULES if cfg.data.synthetic is not None else ()) \
        + (PRETRAIN_RULES if cfg.model.backbone.pretrain is not None else ())
    for key, ok, expected in rules:
        value = _get(cfg, key)
        if not ok(value):
            raise _fail(where, key, list(value) if isinstance(value, tuple) else value, expected)
    # criterion.warmup_epochs > train.epochs is allowed: the run is then ATSS throughout (the
    # short proxy runs of the tests do this on purpose).
    head = cfg.model.head
    cross = (
        (head.feat_channels % head.gn_groups != 0, "model.head.gn_groups", head.gn_groups,
         f"a divisor of model.head.feat_channels ({head.feat_channels}) for GroupNorm"),
    )
    for bad, key, value, expected in cross:
        if bad:
            raise _fail(where, key, value, expected)
    return cfg
