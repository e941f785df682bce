"""Task Alignment Learning assigner (TOOD section 3.2), batched over images."""
from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from tood.assigners.base import AssignResult
from tood.assigners.common import INSIDE_EPS, empty_result, gather_result, inside_margin
from tood.boxes import box_area, box_iou
from tood.priors import Priors

NORM_EPS = 1e-7  # the reference adds 10e-8 to the per-GT maximum of t


class TaskAlignedAssigner:
    """Per GT: the top-m priors by ``t = s^alpha * u^beta`` over all levels whose centre
    lies inside the GT and whose ``t > 0``.

    ``s`` is the predicted score of the GT's class, ``u`` the IoU of the predicted box
    with the GT (both detached). A prior claimed by several GTs goes to the max-IoU GT
    (``conflict='max_iou'``, the reference code) or the smallest GT (``'min_area'``, the
    supplementary text). Soft targets ``t_hat = t / max t * max u``, maxima over the
    priors finally assigned to the same GT.
    """

    def __init__(self, num_classes: int, topk: int = 13, alpha: float = 1.0, beta: float = 6.0, conflict: Literal["max_iou", "min_area"] = "max_iou"):
        if conflict not in ("max_iou", "min_area"):
            raise ValueError(f"TaskAlignedAssigner: conflict={conflict!r} (expected 'max_iou' or 'min_area')")
        self.num_classes, self.topk, self.alpha, self.beta, self.conflict = num_classes, topk, alpha, beta, conflict

    @torch.no_grad()
    def __call__(self, priors: Priors, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor) -> AssignResult:
        b, a, c = pred_scores.shape
        if gt_boxes.shape[1] == 0 or not gt_mask.any():
            return empty_result(pred_boxes, self.num_classes)
        pred_scores, pred_boxes, gt_boxes = pred_scores.float(), pred_boxes.float(), gt_boxes.float()
        valid = gt_mask[..., None]  # (B, G, 1)
        ious = box_iou(gt_boxes, pred_boxes)  # (B, G, A)
        labels = gt_labels.clamp(0, c - 1)  # padded rows may hold anything
        scores = torch.gather(pred_scores, 2, labels[:, None, :].expand(b, a, -1)).transpose(1, 2)  # (B, G, A)
        metric = scores.pow(self.alpha) * ious.pow(self.beta) * valid  # (B, G, A)

        top_idx = metric.topk(min(self.topk, a), dim=2).indices  # (B, G, k)
        candidate = torch.zeros_like(metric, dtype=torch.bool).scatter_(2, top_idx, True)  # (B, G, A)
        inside = inside_margin(priors.points, gt_boxes) > INSIDE_EPS  # (B, G, A)
        pos = candidate & inside & (metric > 0) & valid  # (B, G, A)

        if self.conflict == "max_iou":
            key, largest = ious, True
        else:
            key, largest = box_area(gt_boxes)[..., None].expand_as(ious), False
        res = gather_result(pos, key, largest, gt_boxes, gt_labels, pred_boxes, self.num_classes)

        g = gt_boxes.shape[1]
        gi = res.gt_index.clamp(min=0)  # (B, A)
        final = (torch.arange(g, device=gi.device)[None, :, None] == gi[:, None, :]) & res.fg_mask[:, None, :]  # (B, G, A)
        zero = torch.zeros_like(metric)
        max_t = torch.where(final, metric, zero).amax(2)  # (B, G)
        max_u = torch.where(final, ious, zero).amax(2)  # (B, G)
        t = torch.gather(metric, 1, gi[:, None, :]).squeeze(1)  # (B, A)
        t_hat = t / (torch.gather(max_t, 1, gi) + NORM_EPS) * torch.gather(max_u, 1, gi)  # (B, A)
        return res._replace(scores=torch.where(res.fg_mask, t_hat, torch.zeros_like(t_hat)))
