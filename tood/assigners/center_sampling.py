"""FCOS-style centre sampling with per-level size ranges, batched over images."""
from __future__ import annotations

import torch
from torch import Tensor

from tood.assigners.base import AssignResult
from tood.assigners.common import clean_gts, empty_result, has_no_gt, level_bounds, overlap_pairs, smallest_gt_result, where_true
from tood.boxes import bbox2distance, box_centers
from tood.priors import Priors

FCOS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, 1e8))


class CenterSamplingAssigner:
    """A prior point is positive for a GT if it lies strictly inside the GT and inside the centre
    region of half-size ``radius * stride`` around the GT centre (clipped to the GT), and the
    largest of its distances (l, t, r, b) to the GT sides lies in its level's range
    ``scale_ranges[level] * scale_factor`` (pixels, like the strides: change the factor only
    together with the strides and anchor scales).
    A point claimed by several GTs goes to the smallest-area GT (lower GT index on ties).
    ``scores`` = IoU(predicted box, assigned GT)."""

    def __init__(self, num_classes: int, radius: float = 1.5, scale_ranges=FCOS_RANGES, scale_factor: float = 1.0):
        self.num_classes, self.radius, self.scale_factor = num_classes, radius, scale_factor
        self.scale_ranges = tuple(tuple(float(v) for v in r) for r in scale_ranges)

    @torch.no_grad()
    def __call__(
        self, priors: Priors, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor
    ) -> AssignResult:
        """pred_boxes ``(B, A, 4)`` xyxy px (pred_scores unused); gt_boxes ``(B, G, 4)``,
        gt_labels ``(B, G)``, gt_mask ``(B, G)``."""
        if has_no_gt(gt_mask):
            return empty_result(pred_boxes, self.num_classes)
        gts = clean_gts(gt_boxes, gt_mask)  # (B, G, 4)
        p = overlap_pairs(priors, priors.points.repeat(1, 2)[None], gts, gt_mask)  # points strictly inside
        box = gts.reshape(-1, 4).index_select(0, p.seg)  # (N, 4)
        pts = priors.points.index_select(0, p.a)  # (N, 2)
        ctr = box_centers(box)  # (N, 2)
        r = priors.strides.index_select(0, p.a) * self.radius  # (N,)
        in_centre = ((pts > ctr - r[:, None]) & (pts < ctr + r[:, None])).all(-1)  # (N,)
        reach = bbox2distance(pts, box).amax(-1)  # (N,)
        lo, hi = level_bounds(priors, self.scale_ranges, self.scale_factor, p.a, "tood/assigners/center_sampling.py")  # (N,)
        p = p.take(where_true(in_centre & (reach >= lo) & (reach <= hi)))
        return smallest_gt_result(p, gts, gt_labels, pred_boxes, self.num_classes)
