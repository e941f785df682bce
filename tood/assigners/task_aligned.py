"""Task Alignment Learning assigner (TOOD section 3.2), batched over images.

Exact, but never scores every (GT, prior) pair. For each GT a cheap lower bound ``tau`` on its
k-th largest ``t`` comes from the priors around its centre. A prior with ``t >= tau`` needs
``IoU >= u_min = (tau / max(s)^alpha)^(1/beta)``, so its box overlaps the GT shrunk by ``u_min``
of the GT's width and height on every side. Only those pairs are searched (a window per GT and
level), scored and ranked; the pairs left out have ``t < tau`` and cannot be in the top-k.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor

from tood.assigners.base import AssignResult
from tood.assigners.common import (
    INSIDE_EPS,
    Pairs,
    build_result,
    clean_gts,
    empty_result,
    has_no_gt,
    level_grids,
    overlap_pairs,
    pick_per_prior,
    side_margin,
    where_true,
)
from tood.boxes import aligned_iou, box_area, box_centers
from tood.priors import Priors

NORM_EPS = 10e-8  # added to the per-GT maximum of t, the constant of the reference TOOD head
BOUND_SLACK = 1e-3, 0.01  # relative slack on u_min and absolute (px) on the shrink: far above rounding


def alignment_metric(scores: Tensor, ious: Tensor, alpha: float, beta: float) -> Tensor:
    """``t = s^alpha * u^beta`` for ``(...)`` scores and IoUs -> float32 ``(...)``.

    Evaluated in float64 and rounded once, so the value does not depend on which SIMD lane
    computed it and exact ties between identical predictions stay exact ties.
    """
    return (scores.double().pow(alpha) * ious.double().pow(beta)).float()


def centre_block(priors: Priors, gts: Tensor, size: int = 5) -> tuple[Tensor, Tensor]:
    """The (up to) ``size x size`` priors of every level around each GT centre: distinct prior
    indices ``(B, G, L * size^2)`` and their validity ``(L * size^2,)`` (smaller levels have fewer)."""
    layout, cols, rows = level_grids(priors)
    dev = gts.device
    start, height, width = torch.tensor(layout, device=dev).unbind(1)  # (L,) each, one copy to the device
    stride = priors.strides[start]  # (L,)
    ctr = box_centers(gts)  # (B, G, 2)
    nw, nh = width.clamp(max=size), height.clamp(max=size)  # (L,)
    c0 = ((ctr[..., 0, None] - cols[:, 0]) / stride).round().sub(size // 2).clamp(min=0)  # (B, G, L) first column
    r0 = ((ctr[..., 1, None] - rows[:, 0]) / stride).round().sub(size // 2).clamp(min=0)
    c0 = torch.minimum(c0, (width - nw).to(c0)).long()  # keep the block inside the grid: distinct columns
    r0 = torch.minimum(r0, (height - nh).to(r0)).long()
    j = torch.arange(size, device=dev)
    valid = (j[:, None] < nh[:, None, None]) & (j[None, :] < nw[:, None, None])  # (L, size, size)
    rows_i = r0[..., None, None] + j[:, None]  # (B, G, L, size, 1)
    idx = start[:, None, None] + rows_i * width[:, None, None] + c0[..., None, None] + j  # (B, G, L, size, size)
    return torch.where(valid, idx, 0).flatten(2), valid.flatten()


class _Scored(NamedTuple):
    """Candidate (image, GT, prior) pairs with their alignment metric t and IoU, each ``(N,)``."""

    p: Pairs
    t: Tensor
    ious: Tensor

    def take(self, idx: Tensor) -> "_Scored":
        return _Scored(self.p.take(idx), self.t.index_select(0, idx), self.ious.index_select(0, idx))


class TaskAlignedAssigner:
    """Per GT: the top-``topk`` priors by ``t = s^alpha * u^beta`` over all levels, kept when
    ``t > 0`` and the prior centre is more than 0.01 px inside the GT.

    ``s`` is the predicted probability (in [0, 1]) of the GT's class, ``u`` the IoU of the
    predicted box with the GT (both detached). Equal ``t`` at the top-k boundary: the lower prior
    index wins. A prior claimed by several GTs goes to the max-IoU GT (``conflict='max_iou'``, the
    reference code) or the smallest-area GT (``'min_area'``, the supplementary text); remaining
    ties go to the lower GT index. ``scores`` are ``t_hat = t / (max t + eps) * max u``, both
    maxima over the priors finally assigned to the same GT (``eps`` = 10e-8 as in the reference).
    """

    def __init__(
        self,
        num_classes: int,
        topk: int = 13,
        alpha: float = 1.0,
        beta: float = 6.0,
        conflict: Literal["max_iou", "min_area"] = "max_iou",
        eps: float = NORM_EPS,
    ):
        if conflict not in ("max_iou", "min_area"):
            raise ValueError(f"tood/assigners/task_aligned.py: conflict={conflict!r} (expected 'max_iou' or 'min_area')")
        if topk < 1 or alpha < 0 or beta <= 0:
            raise ValueError(f"tood/assigners/task_aligned.py: need topk >= 1, alpha >= 0, beta > 0; got {topk}, {alpha}, {beta}")
        self.num_classes, self.topk, self.alpha, self.beta, self.conflict, self.eps = num_classes, topk, alpha, beta, conflict, eps

    def metric(
        self, pred_scores: Tensor, pred_boxes: Tensor, gts: Tensor, labels: Tensor, seg: Tensor, box: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``t`` and IoU of pairs given as flat GT ids ``seg`` (into ``B*G``) and box ids ``box``
        (into ``B*A``), broadcast to one shape ``(...)``."""
        shape = torch.broadcast_shapes(seg.shape, box.shape)
        seg, box = (x.reshape(-1) for x in torch.broadcast_tensors(seg, box))  # (P,)
        ious = aligned_iou(pred_boxes.reshape(-1, 4).index_select(0, box), gts.reshape(-1, 4).index_select(0, seg))  # (P,)
        cls_id = box * pred_scores.shape[-1] + labels.reshape(-1).index_select(0, seg)  # (P,)
        t = alignment_metric(pred_scores.reshape(-1).index_select(0, cls_id), ious, self.alpha, self.beta)  # (P,)
        return t.view(shape), ious.view(shape)

    @torch.no_grad()
    def __call__(
        self, priors: Priors, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor
    ) -> AssignResult:
        """priors: A priors; pred_scores ``(B, A, C)`` probabilities; pred_boxes ``(B, A, 4)`` xyxy px;
        gt_boxes ``(B, G, 4)`` xyxy px; gt_labels ``(B, G)``; gt_mask ``(B, G)`` bool."""
        nb, na, nc = pred_scores.shape
        if has_no_gt(gt_mask):
            return empty_result(pred_boxes, self.num_classes)
        gts = clean_gts(gt_boxes, gt_mask)  # (B, G, 4)
        labels = torch.where(gt_mask, gt_labels.long(), 0).clamp(0, nc - 1)  # (B, G)
        pred_boxes = pred_boxes.float()
        tau = self._centre_tau(priors, pred_scores, pred_boxes, gts, labels)  # (B, G)
        c = self._candidates(priors, pred_scores, pred_boxes, gts, labels, gt_mask, tau)
        c = self._top_k(priors, c, gts)
        c = self._one_gt_per_prior(c, gts, nb * na)
        # t_hat, normalised over the priors each GT finally keeps
        num_gt = gts.shape[0] * gts.shape[1]
        max_t = c.t.new_zeros(num_gt).scatter_reduce(0, c.p.seg, c.t, "amax")  # (B*G,)
        max_u = c.ious.new_zeros(num_gt).scatter_reduce(0, c.p.seg, c.ious, "amax")  # (B*G,)
        t_hat = c.t / (max_t[c.p.seg] + self.eps) * max_u[c.p.seg]  # (M,)
        return build_result(c.p.b, c.p.a, c.p.g, t_hat, gts, gt_labels, na, self.num_classes)

    def _centre_tau(self, priors: Priors, pred_scores: Tensor, pred_boxes: Tensor, gts: Tensor, labels: Tensor) -> Tensor:
        """tau ``(B, G)``: the k-th largest t among the priors around each GT centre (0 if fewer than k),
        a lower bound of the GT's k-th largest t over all priors."""
        nb, na, _ = pred_scores.shape
        ng, k = gts.shape[1], self.topk
        near, valid = centre_block(priors, gts)  # (B, G, K), (K,)
        seg_near = torch.arange(nb * ng, device=gts.device).view(nb, ng, 1)  # (B, G, 1)
        box_near = near + torch.arange(nb, device=gts.device)[:, None, None] * na  # (B, G, K)
        t_near = torch.where(valid, self.metric(pred_scores, pred_boxes, gts, labels, seg_near, box_near)[0], -1.0)  # (B, G, K)
        if t_near.shape[-1] >= k:
            return t_near.topk(k, dim=-1).values[..., -1].clamp(min=0)  # (B, G)
        return torch.zeros_like(t_near[..., 0])

    def _candidates(self, priors: Priors, pred_scores: Tensor, pred_boxes: Tensor, gts: Tensor, labels: Tensor,
                    gt_mask: Tensor, tau: Tensor) -> _Scored:
        """The pairs that can reach t >= tau: boxes overlapping the GT shrunk by u_min (IoU >= u needs
        an intersection >= u * GT area, so >= u * GT width and >= u * GT height), then a second bound
        from the pairs themselves."""
        na = pred_scores.shape[1]
        num_gt, k = gts.shape[0] * gts.shape[1], self.topk
        s_max = pred_scores.amax().double().pow(self.alpha).clamp(min=1e-30)  # ()
        u_min = ((tau.double() / s_max).pow(1.0 / self.beta) * (1 - BOUND_SLACK[0])).float()  # (B, G)
        shrink = (gts[..., 2:] - gts[..., :2]).clamp(min=0).mul(u_min[..., None]).sub(BOUND_SLACK[1]).clamp(min=0)  # (B, G, 2)
        shrunk = gts + torch.cat([shrink, -shrink], -1)  # (B, G, 4) may be inverted: fine
        p = overlap_pairs(priors, pred_boxes, shrunk, gt_mask)  # N pairs
        t, ious = self.metric(pred_scores, pred_boxes, gts, labels, p.seg, p.b * na + p.a)  # (N,)
        # split a GT's pairs into k groups; the group maxima are k of its pairs, so the smallest of
        # them is <= its k-th largest t (keeps the table of step 3 small)
        group = p.seg * k + torch.arange(t.numel(), device=t.device) % k  # (N,)
        floor = t.new_zeros(num_gt * k).scatter_reduce(0, group, t, "amax").view(num_gt, k).amin(1)  # (B*G,)
        floor = torch.maximum(floor, tau.reshape(-1)).index_select(0, p.seg)  # (N,)
        # every pair ranked above one of those kept is kept too
        return _Scored(p, t, ious).take(where_true((t >= floor) & (t > 0)))

    def _top_k(self, priors: Priors, c: _Scored, gts: Tensor) -> _Scored:
        """top-k per GT, ties to the lower prior: key = (t bits, -prior) ranked in a padded table;
        then only priors whose point lies inside the GT."""
        num_gt, k = gts.shape[0] * gts.shape[1], self.topk
        key = (c.t.view(torch.int32).long() << 32) | (2**31 - 1 - c.p.a)  # (N',) t >= 0: its bits sort like t
        # not bincount: on CUDA it reads the input's min and max on the host
        counts = torch.zeros(num_gt, dtype=torch.long, device=c.t.device).index_add_(0, c.p.seg, torch.ones_like(c.p.seg))  # (B*G,)
        pos = torch.arange(c.t.numel(), device=c.t.device) - (counts.cumsum(0) - counts).index_select(0, c.p.seg)  # (N',)
        width = max(int(counts.max()), 1)
        table = torch.full((num_gt * width,), -1, dtype=torch.long, device=c.t.device)  # (B*G*W,)
        table.index_copy_(0, c.p.seg * width + pos, key)
        kth = table.view(num_gt, width).topk(min(k, width), dim=1).values[:, -1]  # (B*G,)
        c = c.take(where_true(key >= kth.index_select(0, c.p.seg)))  # (M,) about B*G*k
        return c.take(where_true(side_margin(priors.points[c.p.a], gts.reshape(-1, 4)[c.p.seg]) > INSIDE_EPS))

    def _one_gt_per_prior(self, c: _Scored, gts: Tensor, num_priors: int) -> _Scored:
        """A prior claimed by several GTs keeps the one of highest IoU (``max_iou``) or smallest area."""
        na = num_priors // gts.shape[0]
        conflict_key = c.ious if self.conflict == "max_iou" else -box_area(gts).reshape(-1)[c.p.seg]  # (M,)
        return c.take(where_true(pick_per_prior(c.p.b * na + c.p.a, conflict_key, c.p.g, num_priors)))
