"""Per-image, per-GT reference assigners (loops on purpose).

Each one restates its rule as plainly as possible for ONE image with its real GTs only
(``gts (G, 4)`` xyxy px, ``labels (G,)``), looping over the GTs and working on all priors
at once. They are what the batched assigners in ``tood.assigners`` are checked against, and
the naive baseline timed by ``benchmarks/bench_assign.py``. They return the tuple
``(labels, boxes, scores, fg_mask, gt_index)`` of shapes ``(A,), (A, 4), (A,), (A,), (A,)``.

Shared conventions (the batched code must match them exactly):
- top-k with equal values at the boundary takes the lower prior index first (:func:`top_k`);
- a prior claimed by several GTs goes to the best key, ties to the lower GT index (argmax);
- "inside a GT" means all four distances from the prior centre to the sides exceed 0.01 px.
"""
from __future__ import annotations

import torch
from torch import Tensor

from tood.boxes import box_area, box_iou

INSIDE_EPS = 0.01
FCOS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, 1e8))


def top_k(values: Tensor, k: int, largest: bool = True) -> Tensor:
    """Indices of the ``k`` largest (smallest) entries of 1-D ``values``; among equal values
    at the boundary the lower indices are taken."""
    k = min(k, values.numel())
    kth = values.topk(k, largest=largest).values[-1]
    better = values > kth if largest else values < kth
    first = better.nonzero()[:, 0]
    ties = (values == kth).nonzero()[:, 0][: k - first.numel()]
    return torch.cat([first, ties])


def inside(points: Tensor, box: Tensor) -> Tensor:
    """``(n, 2)`` points vs one ``(4,)`` box -> ``(n,)`` bool, every side more than 0.01 px away."""
    x, y = points[:, 0], points[:, 1]
    sides = torch.stack([x - box[0], y - box[1], box[2] - x, box[3] - y], 1)
    return sides.min(1).values > INSIDE_EPS


def resolve(claims: Tensor, key: Tensor) -> tuple[Tensor, Tensor]:
    """claims ``(G, A)`` bool, key ``(G, A)``: each claimed prior goes to the GT of largest key
    (first GT on ties). Returns owner ``(A,)`` and fg ``(A,)``."""
    owner = torch.where(claims, key, torch.full_like(key, float("-inf"))).argmax(0)
    return owner, claims.any(0)


def result(num_classes: int, owner: Tensor, fg: Tensor, gts: Tensor, labels: Tensor, scores: Tensor):
    a = fg.numel()
    out_labels = torch.full((a,), num_classes, dtype=torch.long)
    out_boxes = torch.zeros(a, 4)
    out_labels[fg] = labels[owner[fg]].long()
    out_boxes[fg] = gts[owner[fg]]
    gt_index = torch.where(fg, owner, torch.full_like(owner, -1))
    return out_labels, out_boxes, torch.where(fg, scores, torch.zeros_like(scores)), fg, gt_index


def background(num_classes: int, a: int):
    nothing = torch.zeros(a, dtype=torch.bool)
    return result(num_classes, torch.zeros(a, dtype=torch.long), nothing, torch.zeros(1, 4), torch.zeros(1), torch.zeros(a))


def pred_iou_scores(pred_boxes: Tensor, gts: Tensor, owner: Tensor) -> Tensor:
    """IoU of every prior's predicted box with its assigned GT, ``(A,)``."""
    out = torch.zeros(len(pred_boxes))
    for g in range(len(gts)):
        mine = owner == g
        out[mine] = box_iou(gts[g : g + 1], pred_boxes[mine])[0]
    return out


def tal_reference(priors, pred_scores, pred_boxes, gts, labels, num_classes, topk=13, alpha=1.0, beta=6.0, conflict="max_iou"):
    """TOOD task-aligned assignment; pred_scores ``(A, C)``, pred_boxes ``(A, 4)``."""
    num_gt, a = len(gts), len(pred_boxes)
    if num_gt == 0:
        return background(num_classes, a)
    ious, metric = torch.zeros(num_gt, a), torch.zeros(num_gt, a)
    claims = torch.zeros(num_gt, a, dtype=torch.bool)
    for g in range(num_gt):
        ious[g] = box_iou(gts[g : g + 1], pred_boxes)[0]
        metric[g] = (pred_scores[:, labels[g]].double() ** alpha * ious[g].double() ** beta).float()
        cand = top_k(metric[g], topk)
        ok = (metric[g, cand] > 0) & inside(priors.points[cand], gts[g])
        claims[g, cand[ok]] = True
    key = ious if conflict == "max_iou" else -box_area(gts)[:, None].expand(num_gt, a)
    owner, fg = resolve(claims, key)
    scores = torch.zeros(a)
    for g in range(num_gt):
        mine = fg & (owner == g)
        if mine.any():
            scores[mine] = metric[g, mine] / (metric[g, mine].max() + 10e-8) * ious[g, mine].max()
    return result(num_classes, owner, fg, gts, labels, scores)


def atss_reference(priors, pred_boxes, gts, labels, num_classes, topk=9):
    """ATSS: candidates = per level the ``topk`` nearest prior centres (squared distance in float64)."""
    num_gt, a = len(gts), len(pred_boxes)
    if num_gt == 0:
        return background(num_classes, a)
    ious = torch.zeros(num_gt, a)
    claims = torch.zeros(num_gt, a, dtype=torch.bool)
    for g in range(num_gt):
        ious[g] = box_iou(gts[g : g + 1], priors.anchors)[0]
        cx, cy = (gts[g, 0] + gts[g, 2]) * 0.5, (gts[g, 1] + gts[g, 3]) * 0.5
        cand = []
        for sl in priors.level_slices():
            dx, dy = priors.points[sl, 0] - cx, priors.points[sl, 1] - cy
            cand.append(top_k(dx.double() ** 2 + dy.double() ** 2, topk, largest=False) + sl.start)
        cand = torch.cat(cand)
        cand_iou = ious[g, cand].double()
        thr = cand_iou.mean() + cand_iou.std()
        ok = (cand_iou >= thr) & inside(priors.points[cand], gts[g])
        claims[g, cand[ok]] = True
    owner, fg = resolve(claims, ious)
    return result(num_classes, owner, fg, gts, labels, pred_iou_scores(pred_boxes, gts, owner))


def max_iou_reference(priors, pred_boxes, gts, labels, num_classes, pos=0.5, neg=0.4, min_pos=0.0, assign_all=True, inside_gt=True):
    """RetinaNet max-IoU assignment on anchor boxes; ignored anchors get label -1. With
    ``inside_gt`` both rules see a GT's IoU only where the anchor centre is more than 0.01 px inside
    it (0 elsewhere); the ignore band reads the plain best IoU."""
    num_gt, a = len(gts), len(pred_boxes)
    if num_gt == 0:
        return background(num_classes, a)
    ious = torch.stack([box_iou(gts[g : g + 1], priors.anchors)[0] for g in range(num_gt)])  # (G, A)
    plain_max = ious.max(0).values
    if inside_gt:
        x, y = priors.points[:, 0], priors.points[:, 1]
        for g in range(num_gt):
            x1, y1, x2, y2 = gts[g]
            ious[g] *= torch.stack([x - x1, y - y1, x2 - x, y2 - y], 1).min(1).values > 0.01
    max_iou, owner = ious.max(0)
    fg = max_iou >= pos
    ignore = (plain_max >= neg) & ~fg
    for g in range(num_gt):  # low-quality matches, later GTs overwrite earlier ones
        best = ious[g].max()
        if best >= min_pos and best > 0:
            hit = ious[g] == best if assign_all else torch.arange(a) == ious[g].argmax()
            owner[hit], fg[hit], ignore[hit] = g, True, False
    out = result(num_classes, owner, fg, gts, labels, pred_iou_scores(pred_boxes, gts, owner))
    out[0][ignore] = -1
    return out


def center_sampling_reference(priors, pred_boxes, gts, labels, num_classes, radius=1.5, ranges=FCOS_RANGES, scale_factor=1.0):
    """FCOS: inside the GT, inside radius * stride of its centre, max(l, t, r, b) in the level's range."""
    num_gt, a = len(gts), len(pred_boxes)
    if num_gt == 0:
        return background(num_classes, a)
    rng = torch.tensor(ranges, dtype=torch.float32) * scale_factor  # (L, 2)
    level = torch.cat([torch.full((n,), i) for i, n in enumerate(priors.num_per_level)])
    lo, hi = rng[level, 0], rng[level, 1]
    x, y = priors.points[:, 0], priors.points[:, 1]
    r = priors.strides * radius
    claims = torch.zeros(num_gt, a, dtype=torch.bool)
    for g in range(num_gt):
        x1, y1, x2, y2 = gts[g]
        sides = torch.stack([x - x1, y - y1, x2 - x, y2 - y], 1)  # (A, 4)
        cx, cy = (x1 + x2) * 0.5, (y1 + y2) * 0.5
        in_centre = (x > torch.maximum(cx - r, x1)) & (x < torch.minimum(cx + r, x2))
        in_centre &= (y > torch.maximum(cy - r, y1)) & (y < torch.minimum(cy + r, y2))
        reach = sides.max(1).values
        claims[g] = (sides.min(1).values > 0) & in_centre & (reach >= lo) & (reach <= hi)
    owner, fg = resolve(claims, -box_area(gts)[:, None].expand(num_gt, a))
    return result(num_classes, owner, fg, gts, labels, pred_iou_scores(pred_boxes, gts, owner))
