"""The one place that turns configuration into objects (model, criterion, data)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tood.assigners import ATSSAssigner, CenterSamplingAssigner, FoveaAssigner, MaxIoUAssigner, TaskAlignedAssigner
from tood.config import Config, ConfigError, CriterionConfig, HeadConfig, ModelConfig, to_dict
from tood.criterion import Phase, TOODCriterion
from tood.model.backbone import ResNet, load_torchvision_weights
from tood.model.detector import Detector
from tood.model.heads import ParallelHead, TOODHead
from tood.model.neck import FPN


def build_head(cfg: HeadConfig, num_classes: int, in_channels: int, num_levels: int) -> nn.Module:
    common = dict(
        num_classes=num_classes,
        in_channels=in_channels,
        feat_channels=cfg.feat_channels,
        stacked_convs=cfg.stacked_convs,
        anchor_type=cfg.anchor_type,
        num_levels=num_levels,
        gn_groups=cfg.gn_groups,
    )
    if cfg.type == "t_head":
        return TOODHead(**common, layer_attention=cfg.layer_attention, alignment_map=cfg.alignment_map, offsets=cfg.offsets,
                         alignment_map_prior=cfg.alignment_map_prior)
    return ParallelHead(**common, centerness=cfg.centerness)


def resolve_device(name: str) -> torch.device:
    """``train.device``: ``auto`` is the first CUDA device where there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(cfg: ModelConfig, load_pretrained: bool = True) -> Detector:
    """The detector of ``cfg``; ``load_pretrained=False`` skips the backbone file (a checkpoint follows)."""
    backbone = ResNet(depth=cfg.backbone.depth, base_width=cfg.backbone.base_width, frozen_stages=cfg.backbone.frozen_stages, norm_eval=cfg.backbone.norm_eval)
    if cfg.backbone.pretrained and load_pretrained:
        load_torchvision_weights(backbone, cfg.backbone.pretrained)
    neck = FPN(backbone.out_channels, out_channels=cfg.neck_channels, num_outs=len(cfg.strides))
    head = build_head(cfg.head, cfg.num_classes, cfg.neck_channels, len(cfg.strides))
    return Detector(backbone, neck, head, strides=tuple(cfg.strides))


# The criterion fields only some assignment schemes read (see _assigner and build_criterion);
# every other CriterionConfig field (assigner, cls_target, box_weight, reg_weight) shapes every
# criterion. tests/test_suite.py checks that a field outside a scheme's set leaves its
# criterion unchanged.
SCHEME_FIELDS = {
    "tal": ("warmup_epochs", "topk", "alpha", "beta", "conflict", "atss_topk"),  # atss_topk: the ATSS warm-up
    "atss": ("atss_topk",),
    "max_iou": ("iou_inside_gt",),
    "center_sampling": ("center_radius", "center_scale_factor"),
    "fovea": ("fovea_sigma", "center_scale_factor"),
}


def unused_criterion_fields(assigner: str) -> tuple[str, ...]:
    """CriterionConfig fields that do not affect the criterion of scheme ``assigner`` (a trial
    key leaves them out, so that e.g. FCOS's size ranges do not tell two ATSS trials apart)."""
    scheme_specific = {f for fields in SCHEME_FIELDS.values() for f in fields}
    return tuple(sorted(scheme_specific - set(SCHEME_FIELDS[assigner])))


def _assigner(name: str, num_classes: int, c: CriterionConfig):
    if name == "tal":
        return TaskAlignedAssigner(num_classes, topk=c.topk, alpha=c.alpha, beta=c.beta, conflict=c.conflict)
    if name == "atss":
        return ATSSAssigner(num_classes, topk=c.atss_topk)
    if name == "max_iou":
        return MaxIoUAssigner(num_classes, inside_gt=c.iou_inside_gt)
    if name == "fovea":
        return FoveaAssigner(num_classes, sigma=c.fovea_sigma, scale_factor=c.center_scale_factor)
    return CenterSamplingAssigner(num_classes, radius=c.center_radius, scale_factor=c.center_scale_factor)


def build_criterion(cfg: Config) -> TOODCriterion:
    """Criterion of the configured assignment scheme (the rows of the paper's Table 2).

    ``auto`` settings follow the paper: TAL -> soft targets t_hat normalised by their
    sum and t_hat-weighted GIoU, after an ATSS + focal warm-up; FoveaBox (no centerness in
    its recipe) -> focal loss and unweighted GIoU; other assigners -> focal loss on hard
    targets and centerness-weighted GIoU. ``box_weight: max_score`` with soft targets is
    the GFL recipe (Table 2's ATSS + QFL).
    """
    c = cfg.criterion
    n = cfg.model.num_classes
    tal = c.assigner == "tal"
    cls_target = c.cls_target if c.cls_target != "auto" else ("soft" if tal else "hard")
    box_weight = c.box_weight if c.box_weight != "auto" else ("target" if tal else "none" if c.assigner == "fovea" else "centerness")
    main = Phase(
        assigner=_assigner(c.assigner, n, c),
        cls_target=cls_target,
        cls_norm="target_sum" if tal and cls_target == "soft" else "num_pos",
        box_weight=box_weight,
    )
    warmup = None
    if tal and c.warmup_epochs > 0:
        warmup = Phase(assigner=ATSSAssigner(n, topk=c.atss_topk), cls_target="hard", cls_norm="num_pos", box_weight="centerness")
    return TOODCriterion(n, main, warmup=warmup, warmup_epochs=c.warmup_epochs if tal else 0, reg_weight=c.reg_weight)


def model_from_checkpoint(cfg: Config, checkpoint: str | Path) -> tuple[Detector, torch.device, list[str] | None]:
    """The model of ``cfg`` with the weights of ``checkpoint`` on ``cfg.train.device``, in eval
    mode, and the class names the checkpoint recorded. A checkpoint of other model settings
    is a ConfigError naming the file and the first differing field."""
    from tood.checkpoint import load_checkpoint, model_mismatch

    device = resolve_device(cfg.train.device)
    state = load_checkpoint(checkpoint)
    saved = (state.get("config") or {}).get("model")
    mismatch = model_mismatch(saved, to_dict(cfg)["model"]) if isinstance(saved, dict) else None
    if mismatch:
        raise ConfigError(f"{checkpoint}: {mismatch} (expected the model settings it was trained with)")
    model = build_model(cfg.model, load_pretrained=False)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise ConfigError(f"{checkpoint}: model: weights do not fit the configured model ({str(e).splitlines()[0]})"
                          " (expected a checkpoint of this head, backbone and class count)") from None
    return model.to(device).eval(), device, state.get("class_names")
