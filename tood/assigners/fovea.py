"""FoveaBox assignment (Kong et al., 2020): positives in the shrunk centre region of a GT on the
levels whose scale range holds the GT, batched over images."""
from __future__ import annotations

import torch
from torch import Tensor

from tood.assigners.base import AssignResult
from tood.assigners.common import clean_gts, empty_result, has_no_gt, level_bounds, overlap_pairs, smallest_gt_result, where_true
from tood.boxes import box_centers
from tood.priors import Priors

# mmdet FoveaHead defaults for strides 8..128: each level's range of sqrt(w * h), overlapping by 2x
FOVEA_RANGES = ((1.0, 64.0), (32.0, 128.0), (64.0, 256.0), (128.0, 512.0), (256.0, 2048.0))


class FoveaAssigner:
    """A prior point is positive for a GT if it lies inside the GT's fovea -- the box of
    ``sigma`` times the GT's width and height around its centre (edges included, which for
    points at cell centres is mmdet's ``ceil``/``floor`` grid rule) -- and the GT's scale
    ``sqrt(w * h)`` lies in the point's level range ``scale_ranges[level] * scale_factor``.
    A point claimed by several GTs goes to the smallest-area GT (mmdet paints GTs largest
    first). ``scores`` = IoU(predicted box, assigned GT)."""

    def __init__(self, num_classes: int, sigma: float = 0.4, scale_ranges=FOVEA_RANGES, scale_factor: float = 1.0):
        if not 0 < sigma <= 1:
            raise ValueError(f"FoveaAssigner: sigma={sigma} (expected 0 < sigma <= 1)")
        self.num_classes, self.sigma, self.scale_factor = num_classes, sigma, scale_factor
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
        wh = box[:, 2:] - box[:, :2]  # (N, 2)
        in_fovea = ((pts - box_centers(box)).abs() <= 0.5 * self.sigma * wh).all(-1)  # (N,)
        scale = wh.prod(-1).sqrt()  # (N,)
        lo, hi = level_bounds(priors, self.scale_ranges, self.scale_factor, p.a, "tood/assigners/fovea.py")  # (N,)
        p = p.take(where_true(in_fovea & (scale >= lo) & (scale <= hi)))
        return smallest_gt_result(p, gts, gt_labels, pred_boxes, self.num_classes)
