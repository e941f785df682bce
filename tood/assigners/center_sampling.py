"""FCOS-style centre sampling with per-level size ranges, batched over images."""
from __future__ import annotations

import torch
from torch import Tensor

from tood.assigners.base import AssignResult
from tood.assigners.common import empty_result, gather_result
from tood.boxes import box_area, box_centers
from tood.priors import Priors

FCOS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, 1e8))


class CenterSamplingAssigner:
    """A point is positive for a GT if it lies inside the GT and within ``radius * stride``
    of the GT centre (the centre region clipped to the GT), and the largest of its
    distances (l, t, r, b) to the GT sides lies in its level's size range (scaled by
    ``scale_factor`` for small proxy images). Conflicts go to the smallest GT."""

    def __init__(self, num_classes: int, radius: float = 1.5, scale_ranges=FCOS_RANGES, scale_factor: float = 1.0):
        self.num_classes, self.radius, self.scale_ranges, self.scale_factor = num_classes, radius, scale_ranges, scale_factor

    @torch.no_grad()
    def __call__(self, priors: Priors, pred_scores: Tensor, pred_boxes: Tensor, gt_boxes: Tensor, gt_labels: Tensor, gt_mask: Tensor) -> AssignResult:
        if gt_boxes.shape[1] == 0 or not gt_mask.any():
            return empty_result(pred_boxes, self.num_classes)
        gt_boxes = gt_boxes.float()
        x, y = priors.points[:, 0], priors.points[:, 1]  # (A,)
        ltrb = torch.stack(
            [x - gt_boxes[..., 0, None], y - gt_boxes[..., 1, None], gt_boxes[..., 2, None] - x, gt_boxes[..., 3, None] - y], -1
        )  # (B, G, A, 4)
        inside = ltrb.amin(-1) > 0  # (B, G, A)
        centre = box_centers(gt_boxes)  # (B, G, 2)
        r = priors.strides * self.radius  # (A,)
        cx1 = torch.maximum(centre[..., 0, None] - r, gt_boxes[..., 0, None])  # (B, G, A)
        cy1 = torch.maximum(centre[..., 1, None] - r, gt_boxes[..., 1, None])
        cx2 = torch.minimum(centre[..., 0, None] + r, gt_boxes[..., 2, None])
        cy2 = torch.minimum(centre[..., 1, None] + r, gt_boxes[..., 3, None])
        in_centre = (x > cx1) & (x < cx2) & (y > cy1) & (y < cy2)  # (B, G, A)
        lo = torch.cat([torch.full((n,), self.scale_ranges[i][0]) for i, n in enumerate(priors.num_per_level)]).to(x) * self.scale_factor
        hi = torch.cat([torch.full((n,), self.scale_ranges[i][1]) for i, n in enumerate(priors.num_per_level)]).to(x) * self.scale_factor
        reach = ltrb.amax(-1)  # (B, G, A)
        in_range = (reach >= lo) & (reach <= hi)
        pos = inside & in_centre & in_range & gt_mask[..., None]
        area = box_area(gt_boxes)[..., None].expand_as(reach)  # (B, G, A)
        return gather_result(pos, area, False, gt_boxes, gt_labels, pred_boxes.float(), self.num_classes)
