"""Classification and box losses. All take logits and compute in float32.

Every function returns the *unreduced* per-element loss; callers weight and
normalise, so the normalisers of the paper stay visible in ``criterion.py``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tood.boxes import aligned_giou


def focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Sigmoid focal loss (RetinaNet) with hard 0/1 targets.

    Args:
        logits: ``(..., C)`` raw logits.
        targets: ``(..., C)`` 0/1 float targets.
    Returns:
        ``(..., C)`` loss, ``alpha_t * (1 - p_t)^gamma * BCE``.
    """
    logits, targets = logits.float(), targets.float()
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return alpha_t * (1 - p_t).pow(gamma) * ce


def quality_focal_loss(logits: Tensor, targets: Tensor, gamma: float = 2.0) -> Tensor:
    """Quality focal loss with soft targets: ``|t - p|^gamma * BCE(p, t)``.

    Negatives are simply ``t = 0`` (giving ``p^gamma * BCE(p, 0)``), so one formula
    covers both terms of TOOD's classification loss.

    Args:
        logits: ``(..., C)`` logits (for the T-head, the logit of the aligned score).
        targets: ``(..., C)`` soft targets in [0, 1].
    """
    logits, targets = logits.float(), targets.float()
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    return (targets - p).abs().pow(gamma) * ce


def giou_loss(pred: Tensor, target: Tensor) -> Tensor:
    """``1 - GIoU`` of ``(..., 4)`` xyxy boxes -> ``(...)``, in [0, 2]."""
    return 1.0 - aligned_giou(pred.float(), target.float())


def centerness_target(points: Tensor, boxes: Tensor) -> Tensor:
    """FCOS centerness of ``(..., 2)`` points w.r.t. ``(..., 4)`` xyxy boxes -> ``(...)`` in [0, 1].

    ``sqrt(min(l, r) / max(l, r) * min(t, b) / max(t, b))``; points outside the box get 0.
    """
    l = points[..., 0] - boxes[..., 0]
    t = points[..., 1] - boxes[..., 1]
    r = boxes[..., 2] - points[..., 0]
    b = boxes[..., 3] - points[..., 1]
    lr = torch.stack([l, r], -1).clamp(min=0)
    tb = torch.stack([t, b], -1).clamp(min=0)
    ratio = (lr.min(-1).values / lr.max(-1).values.clamp(min=1e-6)) * (tb.min(-1).values / tb.max(-1).values.clamp(min=1e-6))
    return ratio.clamp(min=0).sqrt()
