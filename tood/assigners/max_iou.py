"""IoU-based assigner (RetinaNet), batched over images."""
from __future__ import annotations

import torch
from torch import Tensor

from tood.assigners.base import AssignResult
from tood.assigners.common import empty_result, gather_result
from tood.boxes import box_iou
from tood.priors import Priors


class MaxIoUAssigner:
    """Anchor boxes with max IoU >= ``pos_iou_thr`` are positives of their max-IoU GT,
    < ``neg_iou_thr`` negatives, in between ignored (``labels == -1``: the criterion
    leaves them out of the classification loss). With ``match_low_quality`` each GT
    also takes the anchors of its highest IoU (>= ``min_pos_iou``); an anchor that is
    the best of several GTs goes to the last of them, as in the reference loop."""

    def __init__(self, num_classes: int, pos_iou_thr: float = 0.5, neg_iou_thr: float = 0.4, min_pos_iou: float = 0.0, match_low_quality: bool = True):
        self.num_classes, self.pos_iou_thr, self.neg_iou_thr = num_classes, pos_iou_thr, neg_iou_thr
        self.min_pos_iou, self.match_low_quality = min_pos_iou, match_low_quality

    @torch.no_grad()
    def __call__(self, priors: Priors, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor) -> AssignResult:
        if gt_boxes.shape[1] == 0 or not gt_mask.any():
            return empty_result(pred_boxes, self.num_classes)
        g = gt_boxes.shape[1]
        ious = box_iou(gt_boxes.float(), priors.anchors[None])  # (B, G, A)
        ious = torch.where(gt_mask[..., None], ious, torch.full_like(ious, -1.0))
        max_iou, best_gt = ious.max(1)  # (B, A)
        pos = (ious == max_iou[:, None, :]) & (torch.arange(g, device=ious.device)[None, :, None] == best_gt[:, None, :])
        pos &= (max_iou >= self.pos_iou_thr)[:, None, :]  # (B, G, A)
        key = ious.clone()
        if self.match_low_quality:
            gt_best = ious.amax(2, keepdim=True)  # (B, G, 1)
            low = (ious == gt_best) & (gt_best >= self.min_pos_iou) & gt_mask[..., None]  # (B, G, A)
            order = torch.arange(g, device=ious.device, dtype=ious.dtype)[None, :, None].expand_as(ious)
            # low-quality matches override the max-IoU rule; among them the last GT wins
            has_low = low.any(1, keepdim=True)  # (B, 1, A)
            pos = torch.where(has_low, low, pos)
            key = torch.where(has_low, order, key)
        res = gather_result(pos, key, True, gt_boxes.float(), gt_labels, pred_boxes.float(), self.num_classes)
        ignore = ~res.fg_mask & (max_iou >= self.neg_iou_thr)  # (B, A)
        return res._replace(labels=torch.where(ignore, torch.full_like(res.labels, -1), res.labels))
