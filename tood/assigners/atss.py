"""ATSS assigner (Zhang et al. 2020), batched over images."""
from __future__ import annotations

import torch
from torch import Tensor

from tood.assigners.base import AssignResult
from tood.assigners.common import INSIDE_EPS, empty_result, gather_result, inside_margin
from tood.boxes import box_centers, box_iou
from tood.priors import Priors


class ATSSAssigner:
    """Per GT and level, the ``topk`` priors nearest (L2 between centres) to the GT centre
    are candidates; positives have IoU(anchor box, GT) >= mean + std of the candidates'
    IoUs and their centre inside the GT; conflicts go to the max-IoU GT.
    ``scores`` = IoU(predicted box, assigned GT)."""

    def __init__(self, num_classes: int, topk: int = 9):
        self.num_classes, self.topk = num_classes, topk

    @torch.no_grad()
    def __call__(self, priors: Priors, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor) -> AssignResult:
        if gt_boxes.shape[1] == 0 or not gt_mask.any():
            return empty_result(pred_boxes, self.num_classes)
        gt_boxes = gt_boxes.float()
        valid = gt_mask[..., None]  # (B, G, 1)
        ious = box_iou(gt_boxes, priors.anchors[None])  # (B, G, A)
        dist = torch.cdist(box_centers(gt_boxes), priors.points[None].expand(gt_boxes.shape[0], -1, -1))  # (B, G, A)
        candidates = []
        for sl in priors.level_slices():  # 5 levels: a per-level top-k, not a per-GT loop
            k = min(self.topk, sl.stop - sl.start)
            candidates.append(dist[..., sl].topk(k, dim=2, largest=False).indices + sl.start)  # (B, G, k)
        cand = torch.cat(candidates, 2)  # (B, G, K)
        cand_iou = torch.gather(ious, 2, cand)  # (B, G, K)
        thr = cand_iou.mean(2, keepdim=True) + cand_iou.std(2, keepdim=True)  # (B, G, 1)
        cand_pos = cand_iou >= thr  # (B, G, K)
        pos = torch.zeros_like(ious, dtype=torch.bool).scatter_(2, cand, cand_pos)  # (B, G, A)
        pos &= (inside_margin(priors.points, gt_boxes) > INSIDE_EPS) & valid
        return gather_result(pos, ious, True, gt_boxes, gt_labels, pred_boxes.float(), self.num_classes)
