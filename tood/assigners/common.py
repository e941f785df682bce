"""Pieces shared by the batched assigners: sparse (image, GT, prior) pairs and result building.

The assigners never materialise float ``(B, G, A)`` tensors of every GT against every prior.
A cheap boolean ``(B, G, A)`` test (or a per-level grid search, for ATSS) finds the pairs
that can matter, the rule is evaluated on those ``N`` pairs only, and conflicts (a prior
claimed by several GTs) are resolved with scatter reductions. Ties are always broken
towards the lowest GT index, as ``argmax`` does in the per-image reference code.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tood.assigners.base import AssignResult
from tood.boxes import aligned_iou, bbox2distance, box_area
from tood.priors import Priors

INSIDE_EPS = 0.01  # a prior centre must be more than this many pixels inside every side of its GT


@dataclass(frozen=True)
class Pairs:
    """``N`` (image, GT, prior) triples, sorted by (image, GT, prior).

    seg: (N,) flat GT id ``b * G + g``;  a: (N,) prior index;  num_gt: G, the padded GTs per image.
    """

    seg: Tensor
    a: Tensor
    num_gt: int

    @property
    def b(self) -> Tensor:
        return torch.div(self.seg, self.num_gt, rounding_mode="floor")  # (N,)

    @property
    def g(self) -> Tensor:
        return self.seg % self.num_gt  # (N,)

    def take(self, idx: Tensor) -> "Pairs":
        """The pairs at ``idx`` ``(M,)`` long (see :func:`where_true`)."""
        return Pairs(self.seg.index_select(0, idx), self.a.index_select(0, idx), self.num_gt)


def where_true(mask: Tensor) -> Tensor:
    """Indices ``(M,)`` of the True entries of a 1-D bool mask (index once, then ``index_select``)."""
    return mask.nonzero().squeeze(1)


def clean_gts(gt_boxes: Tensor, gt_mask: Tensor) -> Tensor:
    """``(B, G, 4)`` float GT boxes with padded rows zeroed, so that garbage never reaches the maths."""
    return torch.where(gt_mask[..., None], gt_boxes.float(), torch.zeros((), device=gt_boxes.device))


def overlap_mask(boxes: Tensor, gt_boxes: Tensor, gt_mask: Tensor) -> Tensor:
    """Whether box ``a`` overlaps GT ``g`` with positive width and height.

    Args: boxes ``(B or 1, A, 4)`` xyxy, gt_boxes ``(B, G, 4)`` xyxy, gt_mask ``(B, G)``.
    Returns ``(B, G, A)`` bool, False on padded GTs. Pairs outside it have IoU exactly 0.
    A degenerate box ``(x, y, x, y)`` overlaps exactly the GTs that contain ``(x, y)`` strictly.
    """
    px1, py1, px2, py2 = (boxes[..., i][:, None, :] for i in range(4))  # (B, 1, A)
    gx1, gy1, gx2, gy2 = (gt_boxes[..., i][..., None] for i in range(4))  # (B, G, 1)
    mask = px1 < gx2  # (B, G, A)
    mask &= px2 > gx1
    mask &= py1 < gy2
    mask &= py2 > gy1
    mask &= gt_mask[..., None]
    return mask


def pairs_from_mask(mask: Tensor) -> Pairs:
    """The True entries of a ``(B, G, A)`` mask as :class:`Pairs` (sorted by image, GT, prior)."""
    _, g, a = mask.shape
    flat = where_true(mask.reshape(-1))  # (N,)
    seg = torch.div(flat, a, rounding_mode="floor")  # (N,)
    return Pairs(seg=seg, a=flat - seg * a, num_gt=g)


def overlap_pairs(priors: Priors, boxes: Tensor, gt_boxes: Tensor, gt_mask: Tensor) -> Pairs:
    """Exactly the True entries of :func:`overlap_mask`, usually without any ``(B, G, A)`` tensor.

    Each box belongs to a prior on a level grid. How far the boxes of a level reach past their
    prior points (per image and side, the maximum) bounds, per GT and level, a window of grid
    cells outside which no box can overlap the GT; the windows are enumerated row by row and
    their pairs tested exactly. When the windows hold more than a quarter of all pairs (boxes
    reaching far), the dense mask is cheaper and is used instead.
    Args: boxes ``(B or 1, A, 4)`` xyxy of the priors, gt_boxes ``(B, G, 4)``, gt_mask ``(B, G)``.
    """
    nb, ng = gt_boxes.shape[:2]
    na, per_image = boxes.shape[1], boxes.shape[0] > 1
    layout, cols, rows = level_grids(priors)
    nl, dev, i32 = len(layout), gt_boxes.device, torch.int32
    start, height, width = torch.tensor(layout, device=dev).unbind(1)  # (L,) each, one copy to the device
    stride = priors.strides[start]  # (L,)
    level = torch.repeat_interleave(torch.arange(nl, device=dev), height * width, output_size=sum(priors.num_per_level))  # (A,)
    pts = priors.points  # (A, 2)
    reach = torch.cat([pts - boxes[..., :2], boxes[..., 2:] - pts], -1)  # (B', A, 4) left, up, right, down
    far = reach.new_full((reach.shape[0], nl, 4), float("-inf"))
    far = far.scatter_reduce(1, level[None, :, None].expand_as(reach), reach, "amax")  # (B', L, 4)
    far = torch.nan_to_num(far, nan=float("inf"))[:, None]  # (B', 1, L, 4)
    gx1, gy1, gx2, gy2 = (gt_boxes[..., i, None] for i in range(4))  # (B, G, 1)
    # a prior at x can overlap only if x - left < gx2 and x + right > gx1; one spare cell each side
    c0 = (((gx1 - far[..., 2] - cols[:, 0]) / stride).floor() - 1).clamp(min=0).minimum(width.float())  # (B, G, L)
    c1 = (((gx2 + far[..., 0] - cols[:, 0]) / stride).ceil() + 1).clamp(min=-1).minimum(width - 1.0)
    r0 = (((gy1 - far[..., 3] - rows[:, 0]) / stride).floor() - 1).clamp(min=0).minimum(height.float())
    r1 = (((gy2 + far[..., 1] - rows[:, 0]) / stride).ceil() + 1).clamp(min=-1).minimum(height - 1.0)
    nx = (c1 - c0 + 1).clamp(min=0).int().reshape(-1)  # (B*G*L,) window size of each (image, GT, level)
    ny = ((r1 - r0 + 1).clamp(min=0) * gt_mask[..., None]).int().reshape(-1)
    total, num_runs = torch.stack([(nx * ny).sum(), ny.sum()]).tolist()  # pairs and window rows, one read
    if total * 4 > nb * ng * na:
        return pairs_from_mask(overlap_mask(boxes, gt_boxes, gt_mask))

    # a run = one row of one window = consecutive priors; int32 index maths (much cheaper here)
    cell = torch.repeat_interleave(torch.arange(ny.numel(), device=dev, dtype=i32), ny, output_size=num_runs)  # (R,) its window
    row = r0.int().reshape(-1)[cell] + torch.arange(cell.numel(), device=dev, dtype=i32) - (ny.cumsum(0, dtype=i32) - ny)[cell]
    seg_cell = torch.arange(nb * ng, device=dev, dtype=i32).repeat_interleave(nl)  # (B*G*L,) flat GT id
    first = start.int().repeat(nb * ng) + c0.int().reshape(-1)  # (B*G*L,) first prior of the window's row 0
    if per_image:
        first = first + torch.div(seg_cell, ng, rounding_mode="floor") * na  # index boxes of the right image
    run_len = nx[cell]  # (R,)
    run_box = first[cell] + row * width.int().repeat(nb * ng)[cell] - (run_len.cumsum(0, dtype=i32) - run_len)  # (R,)
    run = torch.repeat_interleave(torch.arange(cell.numel(), device=dev, dtype=i32), run_len, output_size=total)  # (N,)
    box = run_box.index_select(0, run) + torch.arange(total, device=dev, dtype=i32)  # (N,) row in boxes.reshape(-1, 4)
    seg_run = seg_cell[cell]  # (R,)
    pb = boxes.reshape(-1, 4).index_select(0, box)  # (N, 4)
    gb = gt_boxes.reshape(-1, 4).index_select(0, seg_run).index_select(0, run)  # (N, 4)
    keep = where_true((pb[:, 0] < gb[:, 2]) & (pb[:, 2] > gb[:, 0]) & (pb[:, 1] < gb[:, 3]) & (pb[:, 3] > gb[:, 1]))
    seg = seg_run.index_select(0, run.index_select(0, keep)).long()  # (M,)
    box = box.index_select(0, keep).long()  # (M,)
    return Pairs(seg=seg, a=box - torch.div(seg, ng, rounding_mode="floor") * na if per_image else box, num_gt=ng)


def side_margin(points: Tensor, boxes: Tensor) -> Tensor:
    """Smallest distance from ``(..., 2)`` points to the sides of ``(..., 4)`` xyxy boxes -> ``(...)``
    (negative outside)."""
    return bbox2distance(points, boxes).amin(-1)


def pick_per_prior(prior_id: Tensor, key: Tensor, g: Tensor, num_priors: int) -> Tensor:
    """Resolve priors claimed by several GTs: per ``prior_id`` keep the claim with the largest
    ``key``, ties to the lowest GT index ``g``. All ``(M,)``; returns an ``(M,)`` bool mask with
    exactly one True per distinct ``prior_id``."""
    best = key.new_full((num_priors,), float("-inf")).scatter_reduce(0, prior_id, key, "amax")  # (B*A,)
    is_best = key == best.index_select(0, prior_id)  # (M,)
    big = torch.iinfo(g.dtype).max
    first = torch.full((num_priors,), big, dtype=g.dtype, device=g.device)
    first = first.scatter_reduce(0, prior_id, torch.where(is_best, g, big), "amin")  # (B*A,)
    return is_best & (g == first.index_select(0, prior_id))


def build_result(
    b: Tensor, a: Tensor, g: Tensor, scores: Tensor, gt_boxes: Tensor, gt_labels: Tensor, num_priors: int, num_classes: int
) -> AssignResult:
    """Scatter the final assignment of ``M`` priors (``(M,)`` image ``b``, prior ``a``, GT ``g``,
    soft target ``scores``) into an :class:`AssignResult` of shape ``(B, A)``."""
    nb, ng = gt_boxes.shape[:2]
    device = gt_boxes.device
    gt_index = torch.full((nb * num_priors,), -1, dtype=torch.long, device=device)  # (B*A,)
    flat = b * num_priors + a  # (M,)
    gt_index[flat] = g
    out_scores = torch.zeros(nb * num_priors, dtype=gt_boxes.dtype, device=device)
    out_scores[flat] = scores.to(gt_boxes.dtype)
    gt_index = gt_index.view(nb, num_priors)  # (B, A)
    fg = gt_index >= 0
    safe = gt_index.clamp(min=0)
    labels = torch.where(fg, torch.gather(gt_labels.long(), 1, safe), num_classes)  # (B, A)
    boxes = torch.gather(gt_boxes, 1, safe[..., None].expand(-1, -1, 4))  # (B, A, 4)
    boxes = torch.where(fg[..., None], boxes, torch.zeros((), dtype=boxes.dtype, device=device))
    return AssignResult(labels=labels, boxes=boxes, scores=out_scores.view(nb, num_priors), fg_mask=fg, gt_index=gt_index)


def empty_result(pred_boxes: Tensor, num_classes: int) -> AssignResult:
    """Everything background: ``pred_boxes (B, A, 4)`` only gives shape, dtype and device."""
    b, a = pred_boxes.shape[:2]
    return AssignResult(
        labels=torch.full((b, a), num_classes, dtype=torch.long, device=pred_boxes.device),
        boxes=pred_boxes.new_zeros((b, a, 4)),
        scores=pred_boxes.new_zeros((b, a)),
        fg_mask=torch.zeros((b, a), dtype=torch.bool, device=pred_boxes.device),
        gt_index=torch.full((b, a), -1, dtype=torch.long, device=pred_boxes.device),
    )


def has_no_gt(gt_mask: Tensor) -> bool:
    """Whether the batch has no GT slots at all. A batch whose slots are all padding takes the
    assigners' general path, which gives the same all-background result without the host reading
    ``gt_mask`` (tests/test_assigners.py::test_no_ground_truth_in_the_batch)."""
    return gt_mask.shape[1] == 0


def level_grids(priors: Priors) -> tuple[list[tuple[int, int, int]], Tensor, Tensor]:
    """Grid layout of each level: ``[(start, H, W), ...]`` plus the x of every column
    ``(L, Wmax)`` and y of every row ``(L, Hmax)`` (padded with +inf), read from ``priors.points``.

    Raises if a level is not the row-major grid of spacing ``stride`` that
    :func:`tood.priors.make_priors` builds (the window search relies on it).
    """
    pts = priors.points
    starts = [sum(priors.num_per_level[:lvl]) for lvl in range(len(priors.num_per_level))]
    widths, on_grid = [], []
    for s, n in zip(starts, priors.num_per_level):  # metadata of <= 5 levels, no per-prior work
        w = (pts[s : s + n, 1] == pts[s, 1]).sum()  # () points on the first row
        i = torch.arange(n, device=pts.device)
        col, row = i % w.clamp(min=1), torch.div(i, w.clamp(min=1), rounding_mode="floor")  # (n,) each
        stride = priors.strides[s]
        grid = torch.stack([pts[s, 0] + col * stride, pts[s, 1] + row * stride], 1)  # (n, 2) as make_priors lays it out
        widths.append(w)
        on_grid.append((grid == pts[s : s + n]).all().long())
    # the widths give shapes, so the host needs them: one read for every level's width and check
    host = torch.stack(widths + on_grid).tolist()
    layout = []
    for lvl, (s, n, w, ok) in enumerate(zip(starts, priors.num_per_level, host[: len(starts)], host[len(starts) :])):
        if w == 0 or n % w or not ok:
            raise ValueError(
                f"tood/assigners/common.py: priors level {lvl}: points are not a row-major grid of spacing "
                f"{float(priors.strides[s])} (expected the layout of tood.priors.make_priors)"
            )
        layout.append((s, n // w, w))
    wmax, hmax = max(w for _, _, w in layout), max(h for _, h, _ in layout)
    cols = pts.new_full((len(layout), wmax), float("inf"))  # (L, Wmax)
    rows = pts.new_full((len(layout), hmax), float("inf"))  # (L, Hmax)
    for lvl, (s, h, w) in enumerate(layout):
        stride = priors.strides[s]
        cols[lvl, :w] = pts[s, 0] + torch.arange(w, device=pts.device) * stride
        rows[lvl, :h] = pts[s, 1] + torch.arange(h, device=pts.device) * stride
    return layout, cols, rows


def level_bounds(priors: Priors, scale_ranges: tuple, scale_factor: float, a: Tensor, where: str) -> tuple[Tensor, Tensor]:
    """Per-level size ranges (FCOS, FoveaBox): ``scale_ranges[level] * scale_factor`` of each
    prior ``a`` ``(N,)`` -> lower and upper bounds ``(N,)`` each. ``where`` names the caller's
    file when the ranges do not match the levels."""
    if len(scale_ranges) != len(priors.num_per_level):
        raise ValueError(f"{where}: scale_ranges has {len(scale_ranges)} entries, expected one per level ({len(priors.num_per_level)})")
    dev = priors.points.device
    ranges = torch.tensor(scale_ranges, dtype=priors.points.dtype, device=dev) * scale_factor  # (L, 2)
    per_prior = torch.repeat_interleave(ranges, torch.tensor(priors.num_per_level, device=dev), dim=0)  # (A, 2)
    lo, hi = per_prior.index_select(0, a).unbind(-1)
    return lo, hi


def smallest_gt_result(p: Pairs, gts: Tensor, gt_labels: Tensor, pred_boxes: Tensor, num_classes: int) -> AssignResult:
    """The candidate pairs ``p`` with each prior given to its smallest-area GT (lower GT index on
    ties); ``scores`` = IoU(predicted box ``(B, A, 4)``, assigned GT)."""
    nb, na = pred_boxes.shape[:2]
    win = pick_per_prior(p.b * na + p.a, -box_area(gts).reshape(-1)[p.seg], p.g, nb * na)
    p = p.take(where_true(win))
    scores = aligned_iou(pred_boxes.float().reshape(-1, 4)[p.b * na + p.a], gts.reshape(-1, 4)[p.seg])  # (M,)
    return build_result(p.b, p.a, p.g, scores, gts, gt_labels, na, num_classes)
