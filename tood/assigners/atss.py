"""ATSS assigner (Zhang et al. 2020), batched over images.

The candidates of a GT on a level are the ``topk`` prior centres nearest to the GT centre.
Priors of a level form a grid, and a squared distance is ``dx^2 + dy^2``: every one of the k
nearest points lies in one of the k nearest columns and one of the k nearest rows (otherwise
k points of the same row / column would beat it). So the search runs on a ``k x k`` block per
(GT, level) instead of every prior, with no ``(B, G, A)`` tensor at all. Squared distances are
float64 sums of exact squares of float32 differences, so the argument holds in floating point
too (short of GT centres a million pixels away from the grid).
"""
from __future__ import annotations

import torch
from torch import Tensor

from tood.assigners.base import AssignResult
from tood.assigners.common import (
    INSIDE_EPS,
    build_result,
    clean_gts,
    empty_result,
    has_no_gt,
    level_grids,
    pairs_from_mask,
    pick_per_prior,
    side_margin,
    where_true,
)
from tood.boxes import aligned_iou, box_centers
from tood.priors import Priors


def nearest_lines(d2: Tensor, k: int) -> Tensor:
    """``(..., n)`` squared distances to the columns (or rows) of a level -> indices ``(..., min(k, n))``
    of the k nearest (equal distances: lower index first), returned in ascending index order."""
    near = torch.sort(d2, dim=-1, stable=True).indices[..., :k]
    return torch.sort(near, dim=-1).values


def atss_candidates(priors: Priors, gts: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Per GT and level the ``k`` priors whose centres are nearest the GT centre.

    Distances are squared, in float64 from float32 coordinate differences; ties go to the lower
    prior index. Args: gts ``(B, G, 4)``. Returns candidate prior indices ``(B, G, K)`` and their
    validity ``(K,)`` (False for the slots of levels with fewer than ``k`` priors), K = L * k.
    """
    layout, cols, rows = level_grids(priors)  # (L, Wmax), (L, Hmax)
    ctr = box_centers(gts)  # (B, G, 2)
    dx2 = (cols - ctr[..., 0, None, None]).double().pow(2)  # (B, G, L, Wmax); +inf on padding
    dy2 = (rows - ctr[..., 1, None, None]).double().pow(2)  # (B, G, L, Hmax)
    col = nearest_lines(dx2, k)  # (B, G, L, kc), ascending
    row = nearest_lines(dy2, k)  # (B, G, L, kr), ascending
    kc = col.shape[-1]
    # rows and columns ascending -> the flattened block is in prior-index order, so a stable sort
    # on distance breaks ties by prior index
    block = dy2.gather(-1, row)[..., :, None] + dx2.gather(-1, col)[..., None, :]  # (B, G, L, kr, kc)
    take = torch.sort(block.flatten(-2), dim=-1, stable=True).indices[..., :k]  # (B, G, L, k')
    # (L,) each, one copy to the device
    start, width, per_level = torch.tensor([(s, w, min(k, h * w)) for s, h, w in layout], device=gts.device).unbind(1)
    valid = torch.arange(take.shape[-1], device=gts.device) < per_level[:, None]  # (L, k')
    r = row.gather(-1, torch.div(take, kc, rounding_mode="floor"))  # (B, G, L, k')
    c = col.gather(-1, take % kc)  # (B, G, L, k')
    idx = start[:, None] + r * width[:, None] + c  # (B, G, L, k')
    idx = torch.where(valid, idx, 0)
    return idx.flatten(-2), valid.flatten()


class ATSSAssigner:
    """Per GT and level, the ``topk`` priors nearest (centre to centre) to the GT centre are
    candidates; positives have IoU(anchor box, GT) >= mean + std (unbiased) of the candidates'
    IoUs and their centre more than 0.01 px inside the GT; a prior claimed by several GTs goes to
    the max-IoU GT (lower GT index on ties). ``scores`` = IoU(predicted box, assigned GT)."""

    def __init__(self, num_classes: int, topk: int = 9):
        if topk < 1:
            raise ValueError(f"tood/assigners/atss.py: topk must be >= 1, got {topk}")
        self.num_classes, self.topk = num_classes, topk

    @torch.no_grad()
    def __call__(
        self, priors: Priors, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor
    ) -> AssignResult:
        """pred_boxes ``(B, A, 4)`` xyxy px (pred_scores unused); gt_boxes ``(B, G, 4)``,
        gt_labels ``(B, G)``, gt_mask ``(B, G)``."""
        nb, na = pred_boxes.shape[:2]
        if has_no_gt(gt_mask):
            return empty_result(pred_boxes, self.num_classes)
        gts = clean_gts(gt_boxes, gt_mask)  # (B, G, 4)
        cand, valid = atss_candidates(priors, gts, self.topk)  # (B, G, K), (K,)
        ious = aligned_iou(priors.anchors[cand], gts[..., None, :])  # (B, G, K)
        n = valid.sum()
        iou64 = torch.where(valid, ious.double(), 0.0)  # (B, G, K)
        mean = iou64.sum(-1, keepdim=True) / n  # (B, G, 1)
        std = (torch.where(valid, iou64 - mean, 0.0).pow(2).sum(-1, keepdim=True) / (n - 1)).sqrt()  # (B, G, 1)
        pos = (ious.double() >= mean + std) & valid & gt_mask[..., None]  # (B, G, K)
        pos &= side_margin(priors.points[cand], gts[..., None, :]) > INSIDE_EPS

        p = pairs_from_mask(pos)  # p.a indexes K here
        a = cand.reshape(-1, cand.shape[-1])[p.seg, p.a]  # (M,) prior index
        key = ious.reshape(-1, cand.shape[-1])[p.seg, p.a]  # (M,)
        win = where_true(pick_per_prior(p.b * na + a, key, p.g, nb * na))  # (M',) one nonzero for the four
        b, a, g, seg = (x.index_select(0, win) for x in (p.b, a, p.g, p.seg))
        scores = aligned_iou(pred_boxes.float().reshape(-1, 4)[b * na + a], gts.reshape(-1, 4)[seg])  # (M',)
        return build_result(b, a, g, scores, gts, gt_labels, na, self.num_classes)
