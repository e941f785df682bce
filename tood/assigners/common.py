"""Pieces shared by the batched assigners."""
from __future__ import annotations

import torch
from torch import Tensor

from tood.assigners.base import AssignResult
from tood.boxes import aligned_iou

INSIDE_EPS = 0.01  # a prior centre must be this many pixels inside every side of its GT


def inside_margin(points: Tensor, gt_boxes: Tensor) -> Tensor:
    """Smallest distance from each point to the sides of each GT.

    Args: points ``(A, 2)``, gt_boxes ``(B, G, 4)`` xyxy. Returns ``(B, G, A)``
    (negative when the point lies outside).
    """
    x, y = points[:, 0], points[:, 1]  # (A,)
    l = x - gt_boxes[..., 0, None]  # (B, G, A)
    t = y - gt_boxes[..., 1, None]
    r = gt_boxes[..., 2, None] - x
    b = gt_boxes[..., 3, None] - y
    return torch.minimum(torch.minimum(l, t), torch.minimum(r, b))


def gather_result(
    pos: Tensor,
    key: Tensor,
    largest: bool,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    pred_boxes: Tensor,
    num_classes: int,
    scores: Tensor | None = None,
) -> AssignResult:
    """Resolve multi-GT anchors and build an :class:`AssignResult`.

    Args:
        pos: ``(B, G, A)`` bool, GT g claims anchor a.
        key: ``(B, G, A)`` float, conflicts go to the GT with the largest (or smallest) key.
        scores: ``(B, A)`` soft targets for the assigned anchors; default IoU(pred box, GT).
    """
    fill = float("-inf") if largest else float("inf")
    masked = torch.where(pos, key, torch.full_like(key, fill))  # (B, G, A)
    gt_index = masked.argmax(1) if largest else masked.argmin(1)  # (B, A)
    fg = pos.any(1)  # (B, A)
    boxes = torch.gather(gt_boxes, 1, gt_index[..., None].expand(-1, -1, 4))  # (B, A, 4)
    boxes = torch.where(fg[..., None], boxes, torch.zeros_like(boxes))
    labels = torch.where(fg, torch.gather(gt_labels, 1, gt_index), torch.full_like(gt_index, num_classes))  # (B, A)
    if scores is None:
        scores = aligned_iou(pred_boxes, boxes)  # (B, A)
    scores = torch.where(fg, scores, torch.zeros_like(scores))
    return AssignResult(labels=labels, boxes=boxes, scores=scores, fg_mask=fg, gt_index=torch.where(fg, gt_index, -1))


def empty_result(pred_boxes: Tensor, num_classes: int) -> AssignResult:
    b, a = pred_boxes.shape[:2]
    return AssignResult(
        labels=torch.full((b, a), num_classes, dtype=torch.long, device=pred_boxes.device),
        boxes=torch.zeros_like(pred_boxes),
        scores=pred_boxes.new_zeros((b, a)),
        fg_mask=torch.zeros((b, a), dtype=torch.bool, device=pred_boxes.device),
        gt_index=torch.full((b, a), -1, dtype=torch.long, device=pred_boxes.device),
    )
