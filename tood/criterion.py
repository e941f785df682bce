"""TOOD training criterion: assignment + classification, box and centerness losses.

The epoch is an explicit argument: before ``warmup_epochs`` a TAL criterion uses its
warm-up phase (ATSS, focal loss, centerness-weighted GIoU) because TAL on a random
head is noisy; afterwards TAL with soft targets ``t_hat``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from tood.assigners.base import AssignResult
from tood.assigners.common import where_true
from tood.losses import centerness_target, focal_loss, giou_loss, quality_focal_loss

Assigner = Callable[..., AssignResult]


@dataclass(frozen=True)
class Phase:
    """How one stage of training turns an assignment into losses.

    cls_target: 'hard' -> focal loss on 0/1 targets; 'soft' -> quality focal loss on
        ``AssignResult.scores`` (t_hat for TAL, IoU otherwise).
    cls_norm: 'num_pos' or 'target_sum' (sum of soft targets, TOOD's normaliser).
    box_weight: per-positive GIoU weight: 'none' (1), 'centerness' (FCOS centerness of
        the anchor point), 'target' (the soft target), 'max_score' (the positive's highest
        predicted class probability, detached: GFL's weighting); normalised by the weight sum.
    """

    assigner: Assigner
    cls_target: Literal["hard", "soft"]
    cls_norm: Literal["num_pos", "target_sum"]
    box_weight: Literal["none", "centerness", "target", "max_score"]


@dataclass
class LossOutput:
    total: Tensor
    terms: dict[str, Tensor]  # detached scalars, for logging
    num_pos: int


class TOODCriterion:
    """Losses of one batch. ``warmup`` (optional) is used while ``epoch < warmup_epochs``."""

    def __init__(self, num_classes: int, main: Phase, warmup: Phase | None = None, warmup_epochs: int = 0, reg_weight: float = 2.0):
        self.num_classes = num_classes
        self.main = main
        self.warmup = warmup
        self.warmup_epochs = warmup_epochs
        self.reg_weight = reg_weight

    def phase(self, epoch: int) -> Phase:
        return self.warmup if self.warmup is not None and epoch < self.warmup_epochs else self.main

    def __call__(self, outputs: dict, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor, epoch: int) -> LossOutput:
        """Args: model outputs (see ``tood.model.detector``), padded GTs ``(B, G, 4)``,
        ``(B, G)``, ``(B, G)`` in input pixels, and the 0-based epoch."""
        phase = self.phase(epoch)
        logits = outputs["cls_logits"].float()  # (B, A, C)
        boxes = outputs["boxes"].float()  # (B, A, 4)
        priors = outputs["priors"]
        with torch.no_grad():
            res = phase.assigner(priors, logits.sigmoid(), boxes.detach(), gt_boxes, gt_labels, gt_mask)
        fg = res.fg_mask  # (B, A)
        # the positives as flat indices b * A + a: one nonzero serves every gather below, and num_pos
        # is its length (no read of the device of its own)
        pos = where_true(fg.reshape(-1))  # (P,)
        num_pos = pos.numel()
        valid = (res.labels >= 0).float()  # (B, A); -1 marks anchors an assigner ignores

        onehot = F.one_hot(res.labels.clamp(min=0), self.num_classes + 1)[..., : self.num_classes].float()  # (B, A, C)
        if phase.cls_target == "soft":
            cls = quality_focal_loss(logits, onehot * res.scores[..., None])  # (B, A, C)
        else:
            cls = focal_loss(logits, onehot)  # (B, A, C)
        scores = res.scores.reshape(-1)[pos]  # (P,)
        cls_norm = scores.sum().clamp(min=1.0) if phase.cls_norm == "target_sum" else max(num_pos, 1)
        loss_cls = (cls.sum(-1) * valid).sum() / cls_norm

        points = priors.points[pos % fg.shape[1]]  # (P, 2)
        target_boxes = res.boxes.reshape(-1, 4)[pos]  # (P, 4)
        if phase.box_weight == "target":
            weight, min_norm = scores, 1.0  # (P,)
        elif phase.box_weight == "max_score":
            weight, min_norm = logits.detach().flatten(0, 1)[pos].sigmoid().amax(-1), 1e-6  # (P,)
        elif phase.box_weight == "centerness":
            weight, min_norm = centerness_target(points, target_boxes), 1e-6
        else:
            weight, min_norm = torch.ones_like(scores), 1.0
        loss_box = self.reg_weight * (giou_loss(boxes.reshape(-1, 4)[pos], target_boxes) * weight).sum() / weight.sum().clamp(min=min_norm)

        terms = {"loss_cls": loss_cls, "loss_box": loss_box}
        if outputs.get("centerness") is not None:
            ctr_logits = outputs["centerness"].float().reshape(-1)[pos]  # (P,)
            ctr_target = centerness_target(points, target_boxes)
            terms["loss_centerness"] = F.binary_cross_entropy_with_logits(ctr_logits, ctr_target, reduction="sum") / max(num_pos, 1)
        total = sum(terms.values())
        return LossOutput(total=total, terms={k: v.detach() for k, v in terms.items()}, num_pos=num_pos)
