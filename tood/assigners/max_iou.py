"""IoU-based assigner (RetinaNet), batched over images."""
from __future__ import annotations

import torch
from torch import Tensor

from tood.assigners.base import AssignResult
from tood.assigners.common import (
    INSIDE_EPS, build_result, clean_gts, empty_result, has_no_gt, overlap_pairs, pick_per_prior, side_margin, where_true,
)
from tood.boxes import aligned_iou
from tood.priors import Priors

IGNORE_LABEL = -1


class MaxIoUAssigner:
    """Max-IoU assignment of the anchor boxes ``priors.anchors`` (RetinaNet / mmdet ``MaxIoUAssigner``).

    An anchor whose best IoU over the GTs is >= ``pos_iou_thr`` is a positive of that GT (lower
    GT index on ties); one whose best IoU is < ``neg_iou_thr`` is background; anchors in between
    are IGNORED: ``AssignResult`` has no ignore field, so they get ``labels == -1`` (with
    ``fg_mask`` False, ``gt_index`` -1), and the criterion leaves them out of the classification
    loss. With ``match_low_quality`` every GT whose best IoU is >= ``min_pos_iou`` also takes its
    best anchors (all anchors tying that IoU with ``gt_max_assign_all``, else the first one);
    these override the rule above and the later GT wins an anchor that is the best of several.
    Unlike mmdet, a GT whose best IoU is 0 takes no anchor (mmdet would hand it every anchor of
    IoU 0 when ``min_pos_iou`` is 0). With ``inside_gt`` (the default) both rules see only the
    anchors whose centre lies more than 0.01 px inside the GT (the ATSS paper's "in GT box" for
    RetinaNet), so a low-quality match is the GT's best such anchor; the ignore band still reads
    the best IoU over all GTs. An anchor-free head regresses l, t, r, b >= 0 from the anchor
    centre and cannot fit a GT that does not hold it: without the rule a 20 px object on the
    proxy's 64 px P3 anchors ties at its best IoU with every anchor that contains it, and 62% of
    the positives lie outside their GT (``probes/probe_assign.py``).
    ``scores`` = IoU(predicted box, assigned GT).
    """

    def __init__(
        self,
        num_classes: int,
        pos_iou_thr: float = 0.5,
        neg_iou_thr: float = 0.4,
        min_pos_iou: float = 0.0,
        gt_max_assign_all: bool = True,
        match_low_quality: bool = True,
        inside_gt: bool = True,
    ):
        if neg_iou_thr > pos_iou_thr:
            raise ValueError(f"tood/assigners/max_iou.py: neg_iou_thr={neg_iou_thr} > pos_iou_thr={pos_iou_thr}")
        self.num_classes, self.pos_iou_thr, self.neg_iou_thr = num_classes, pos_iou_thr, neg_iou_thr
        self.min_pos_iou, self.gt_max_assign_all, self.match_low_quality = min_pos_iou, gt_max_assign_all, match_low_quality
        self.inside_gt = inside_gt

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
        p = overlap_pairs(priors, priors.anchors[None], gts, gt_mask)  # pairs with IoU possibly > 0
        g, prior_id = p.g, p.b * na + p.a  # (N,)
        ious = aligned_iou(priors.anchors.index_select(0, p.a), gts.reshape(-1, 4).index_select(0, p.seg))  # (N,)
        max_iou = ious.new_zeros(nb * na).scatter_reduce(0, prior_id, ious, "amax")  # (B*A,) 0 where no pair
        if self.inside_gt:  # the candidates of a GT: the anchors whose centre lies inside it
            keep = where_true(side_margin(priors.points.index_select(0, p.a), gts.reshape(-1, 4).index_select(0, p.seg)) > INSIDE_EPS)
            p, ious = p.take(keep), ious.index_select(0, keep)
            g, prior_id = p.g, p.b * na + p.a
        chosen = pick_per_prior(prior_id, ious, g, nb * na) & (ious >= self.pos_iou_thr)  # (N,)

        if self.match_low_quality:
            gt_max = ious.new_zeros(gts.shape[0] * gts.shape[1]).scatter_reduce(0, p.seg, ious, "amax")  # (B*G,)
            best = gt_max.index_select(0, p.seg)  # (N,)
            low = (ious == best) & (best >= self.min_pos_iou) & (best > 0)  # (N,)
            if not self.gt_max_assign_all:  # only the first anchor of each GT's best IoU
                first = torch.full_like(gt_max, na, dtype=torch.long).scatter_reduce(0, p.seg, torch.where(low, p.a, na), "amin")
                low &= p.a == first.index_select(0, p.seg)
            lq = where_true(low)  # (L,) low-quality claims; an anchor that several GTs claim goes to the last GT
            win = lq[pick_per_prior(prior_id[lq], g[lq].to(ious.dtype), g[lq], nb * na)]
            taken = torch.zeros(nb * na, dtype=torch.bool, device=ious.device)
            taken[prior_id[win]] = True
            chosen &= ~taken.index_select(0, prior_id)
            chosen[win] = True

        p = p.take(where_true(chosen))
        scores = aligned_iou(pred_boxes.float().reshape(-1, 4)[p.b * na + p.a], gts.reshape(-1, 4)[p.seg])  # (M,)
        res = build_result(p.b, p.a, p.g, scores, gts, gt_labels, na, self.num_classes)
        ignore = ~res.fg_mask & (max_iou.view(nb, na) >= self.neg_iou_thr)  # (B, A)
        return res._replace(labels=torch.where(ignore, IGNORE_LABEL, res.labels))
